"""The device half of federated SparseRec, in plain PyTorch (no Flower).

A device is one user. It holds its private user row (with its Adam state, kept across rounds)
and, for one round, its tier's sparse slice of the item table. :func:`train_device` runs the
local BPR steps and returns what the device uploads: its values at the active entries of the
rows it touched, and the |grad| it accumulated at the inactive entries of those rows (top-k per
row, DESIGN section 4). :func:`evaluate_device` ranks the whole catalogue with the device's own
sparse model.

Memory: a device holds the item slice (values, index, and Adam state unless it steps the slice
by plain SGD, ``fl.item_optimizer``), the user row (values, Adam state) and one training buffer,
the growth scores of its touched rows ((T, d) float32). All of it is measured (``nbytes``) and
checked against the device's budget after training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from fedsparse.data.dataset import binary_matrix
from fedsparse.metrics import evaluate_embeddings
from fedsparse.models import MF
from fedsparse.sparse import DenseEmbeddingTable, SparseEmbeddingTable
from fedsparse.sparse.budget import OptimizerFactory
from fedsparse.train.dst import RowGradientRecorder
from fedsparse.train.sampling import NegativeSampler

logger = logging.getLogger(__name__)


#: The devices' optimizers of their item slice (``fl.item_optimizer``): Adam holds two moments
#: per active entry (fresh each round), SGD no state.
ITEM_OPTIMIZERS: dict[str, OptimizerFactory] = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass(frozen=True)
class LocalTraining:
    """Hyperparameters of one device's local work in a round (from ``[fl]``).

    The user row steps by Adam at ``lr``; the item slice by ``item_optimizer``: Adam at ``lr``
    or plain SGD at ``item_lr``.
    """

    local_epochs: int
    batch_size: int
    lr: float
    l2: float
    negatives: int
    growth_topk: int
    item_optimizer: str = "adam"
    item_lr: float = 0.0

    def item_optimizer_for(self, values: Tensor) -> torch.optim.Optimizer:
        """The optimizer of the item slice's ``values``."""
        lr = self.item_lr if self.item_optimizer == "sgd" else self.lr
        return ITEM_OPTIMIZERS[self.item_optimizer]([values], lr=lr)


@dataclass
class UserRow:
    """A device's private user embedding and its Adam state, kept between rounds.

    Attributes
    ----------
    values : np.ndarray
        (d,) float32.
    exp_avg, exp_avg_sq : np.ndarray
        (d,) float32 Adam moments (zeros before the first round).
    step : int
        Adam steps taken so far.
    """

    values: np.ndarray
    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    step: int = 0

    @classmethod
    def initial(cls, dim: int, init_std: float, generator: torch.Generator) -> UserRow:
        """A fresh row drawn from normal(0, init_std), zero Adam state."""
        values = (torch.randn(dim, generator=generator) * init_std).numpy()
        return cls(values=values, exp_avg=np.zeros(dim, np.float32),
                   exp_avg_sq=np.zeros(dim, np.float32))


@dataclass(frozen=True)
class DeviceUpdate:
    """What a device uploads after a round, and what it measured.

    Attributes
    ----------
    entries : np.ndarray
        (E,) int64 ascending flat ids (``row * d + col``) of the active entries of its touched
        item rows.
    values : np.ndarray
        (E,) float32 its values there after training.
    grow_entries : np.ndarray
        (G,) int64 ascending flat ids of inactive entries of touched rows (top-k per row).
    grow_scores : np.ndarray
        (G,) float32 their |grad| summed over the local steps (> 0).
    examples : int
        Positives trained on, times local epochs (the aggregation weight).
    loss : float
        Mean BPR loss of the last local epoch.
    train_bytes : int
        Bytes held while training: item slice with Adam state, user row with Adam state,
        growth buffer.
    steps : int
        Local optimizer steps taken (the device's compute, for the simulated clock).
    """

    entries: np.ndarray
    values: np.ndarray
    grow_entries: np.ndarray
    grow_scores: np.ndarray
    examples: int
    loss: float
    train_bytes: int
    steps: int


def user_row_bytes(dim: int) -> int:
    """Measured bytes of a user row with its Adam state (values, two moments, step)."""
    table = DenseEmbeddingTable(torch.zeros(1, dim))
    optimizer = torch.optim.Adam(table.parameters())
    table.values.grad = torch.zeros_like(table.values)
    optimizer.step()
    return table.memory_bytes(optimizer)


def slice_train_bytes(item_table: SparseEmbeddingTable, item_optimizer: str = "adam") -> int:
    """Measured bytes of a tier slice while a device trains it: values, index and the state of
    ``item_optimizer`` (after a step, on a copy of the slice)."""
    arrays = item_table.storage_arrays()
    table = SparseEmbeddingTable.from_storage(item_table.n_rows, item_table.dim, arrays["values"],
                                              arrays["row_counts"], arrays["index"])
    optimizer = ITEM_OPTIMIZERS[item_optimizer]([table.values])
    table.values.grad = torch.zeros_like(table.values)
    optimizer.step()
    return table.memory_bytes(optimizer)


def touched_rows_bound(n_positives: int, negatives: int, n_items: int) -> int:
    """Most item rows a device with ``n_positives`` can touch in a round (positives plus the
    negatives drawn for them once per round)."""
    return min(n_positives * (1 + negatives), n_items)


def device_reserve_bytes(dim: int, max_touched_rows: int) -> int:
    """Bytes of a device's budget that are not item slice: the user row with Adam state and
    the (T, d) float32 growth buffer of its touched rows, measured on real tensors."""
    return user_row_bytes(dim) + torch.zeros(max_touched_rows, dim).nbytes


def _positives_matrix(items: np.ndarray, n_items: int) -> sp.csr_matrix:
    """A (1, n_items) binary row with ones at ``items``."""
    return binary_matrix(np.zeros(len(items), dtype=np.int64), items, (1, n_items))


def top_growth(rows: Tensor, scores: Tensor, topk: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids and scores of the ``topk`` best positive scores of each row (T, d)."""
    k = min(topk, dim)
    if k == 0 or rows.numel() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    best, cols = torch.topk(scores, k, dim=1)                                   # (T, k) each
    keep = best > 0
    flat = (rows.unsqueeze(1) * dim + cols)[keep]                               # (G,)
    order = torch.argsort(flat)
    return flat[order].numpy(), best[keep][order].numpy().astype(np.float32)


def train_device(item_table: SparseEmbeddingTable, user: UserRow, positives: np.ndarray,
                 hp: LocalTraining, *, generator: torch.Generator,
                 budget_bytes: int | None = None) -> tuple[DeviceUpdate, UserRow]:
    """Local SparseRec training of one device for one round.

    Negatives (``hp.negatives`` per positive, uniform over the items the user has not
    interacted with) are drawn once per round; each local epoch shuffles the positives into
    batches of ``hp.batch_size``. The item slice steps by ``hp.item_optimizer`` (Adam state
    fresh each round); the user row by Adam, its state continuing. Between the steps the device
    sums |grad| at the inactive entries of its touched rows (accumulated-gradient regrowth,
    DESIGN section 3, idea 2).

    Parameters
    ----------
    item_table:
        The tier's slice, as received; trained in place.
    user:
        The device's user row and Adam state.
    positives:
        (P,) the user's training items, P >= 1.
    hp:
        Local hyperparameters.
    generator:
        The round's seeded generator for this device.
    budget_bytes:
        When given, the measured ``train_bytes`` must not exceed it.

    Returns
    -------
    tuple
        The :class:`DeviceUpdate` and the new :class:`UserRow`.

    Raises
    ------
    ValueError
        When the device has no positives, or held more than ``budget_bytes``.
    """
    if len(positives) == 0:
        raise ValueError("a device needs at least one training interaction to train")
    n_items, dim = item_table.n_rows, item_table.dim
    pos = torch.from_numpy(np.asarray(positives, dtype=np.int64))                 # (P,)
    sampler = NegativeSampler.for_items(positives, n_items)
    neg = sampler.sample(torch.zeros(len(pos), dtype=torch.long), hp.negatives, generator)  # (P, N)
    touched = torch.unique(torch.cat([pos, neg.reshape(-1)]))                     # (T,) sorted
    growth = torch.zeros(len(touched), dim)                                       # (T, d)
    touched_active = item_table.row_mask(touched)                                 # (T, d)

    user_table = DenseEmbeddingTable(torch.from_numpy(user.values).unsqueeze(0))  # (1, d)
    model = MF.from_tables(user_table, item_table, l2=hp.l2)
    user_optimizer = torch.optim.Adam([user_table.values], lr=hp.lr)
    item_optimizer = hp.item_optimizer_for(item_table.values)
    if user.step > 0:
        user_optimizer.state[user_table.values] = {
            "step": torch.tensor(float(user.step)),
            "exp_avg": torch.from_numpy(user.exp_avg.copy()).unsqueeze(0),
            "exp_avg_sq": torch.from_numpy(user.exp_avg_sq.copy()).unsqueeze(0)}
    recorder = RowGradientRecorder(item_table)
    loss_sum, steps = 0.0, 0
    try:
        for _ in range(hp.local_epochs):
            order = torch.randperm(len(pos), generator=generator)
            loss_sum = 0.0
            for first in range(0, len(order), hp.batch_size):
                batch = order[first:first + hp.batch_size]                        # (B,)
                loss = model.loss(torch.zeros(len(batch), dtype=torch.long), pos[batch], neg[batch])
                user_optimizer.zero_grad(set_to_none=True)
                item_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                user_optimizer.step()
                item_optimizer.step()
                rows, grad = recorder.pop()                                       # (R,), (R, d)
                slot = torch.searchsorted(touched, rows)                          # (R,)
                growth[slot] += grad.abs().masked_fill(touched_active[slot], 0.0)
                loss_sum += loss.item() * len(batch)
                steps += 1
    finally:
        recorder.remove()
    train_bytes = (item_table.memory_bytes(item_optimizer)
                   + user_table.memory_bytes(user_optimizer)
                   + growth.nbytes)
    if budget_bytes is not None and train_bytes > budget_bytes:
        raise ValueError(f"device held {train_bytes} bytes, over its budget of {budget_bytes}")
    entries, values = item_table.row_entries(touched)                             # (E,), (E,)
    grow_entries, grow_scores = top_growth(touched, growth, hp.growth_topk, dim)
    state = user_optimizer.state[user_table.values]
    new_user = UserRow(values=user_table.values.detach().squeeze(0).numpy().copy(),
                       exp_avg=state["exp_avg"].squeeze(0).numpy().copy(),
                       exp_avg_sq=state["exp_avg_sq"].squeeze(0).numpy().copy(),
                       step=int(state["step"]))
    update = DeviceUpdate(entries=entries.numpy(), values=values.numpy().copy(),
                          grow_entries=grow_entries, grow_scores=grow_scores,
                          examples=len(pos) * hp.local_epochs, loss=loss_sum / len(pos),
                          train_bytes=train_bytes, steps=steps)
    return update, new_user


def model_bytes(item_table: SparseEmbeddingTable, user: UserRow) -> int:
    """Bytes of the model a device holds to rank items: item slice (values, index) and user row."""
    return item_table.memory_bytes() + user.values.nbytes


def evaluate_device(item_table: SparseEmbeddingTable, user: UserRow, positives: np.ndarray,
                    test_items: np.ndarray, *, k: int) -> dict[str, float]:
    """Recall@K and NDCG@K of the device ranking every item with its own sparse model.

    Its training positives are masked out of the ranking (DESIGN section 5).
    """
    with torch.no_grad():
        return rank_with_items(item_table.to_dense(), user, positives, test_items, k=k)


def rank_with_items(items: Tensor, user: UserRow, positives: np.ndarray, test_items: np.ndarray,
                    *, k: int) -> dict[str, float]:
    """:func:`evaluate_device` with the slice's dense view ``items`` (n_items, d) given (one
    view serves every device of a tier)."""
    n_items = len(items)
    return evaluate_embeddings(user.values[None, :], items, _positives_matrix(positives, n_items),
                               _positives_matrix(test_items, n_items), ks=(k,))
