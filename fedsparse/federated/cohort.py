"""Vectorised local training of a cohort of devices (DESIGN section 4.1), in plain PyTorch.

A cohort SuperNode trains its sampled devices together: one batched computation per local step
instead of one small model per device. Each device keeps exactly what
:func:`~fedsparse.train.device.train_device` (the scalar reference) gives it: its own random
stream (negatives drawn once per round, one shuffle per local epoch, in the same order), its
own slice of its tier's item table (the rows it touches, zero at inactive entries, gradients
masked there), its own Adam state for that slice (fresh each round; none when the slice steps by
plain SGD, ``fl.item_optimizer``) and for its user row (kept across rounds), and its own growth
buffer. Devices never share a row, so a device's results do not depend on which other devices
are in its cohort.

Layout: devices are ordered by their number of local steps, most first, and their touched rows
laid out one block after another, so the devices still training at local step ``t`` are a
prefix of the cohort and their rows a prefix of the row slab: step ``t`` works on that prefix
only. Every device's batch is padded to ``batch_size`` positives (padding masked out of the
loss), so each device's arithmetic has the same shapes whatever the cohort. Large cohorts are
trained in chunks of at most ``max_rows`` touched rows (a chunk is a smaller cohort).

Bit-for-bit independence of the cohort: CPU kernels compute an elementwise op on the bulk of a
tensor with SIMD instructions and on a short tail with scalar code, and the two round
transcendental functions (the softplus of the loss) and fused multiply-adds (Adam) differently.
So every elementwise op here runs on a length that is a multiple of :data:`SIMD_ELEMENTS`: the
embedding dimension is padded with inactive zero columns to such a multiple, and the softplus
runs on a flat, padded copy of the score differences. Then a device's numbers are the same in
a cohort of one as in a cohort of thousands (a test checks it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedsparse.sparse import SparseEmbeddingTable
from fedsparse.train.device import (DeviceUpdate, LocalTraining, UserRow, slice_train_bytes,
                                    top_growth, user_row_bytes)
from fedsparse.train.sampling import NegativeSampler

logger = logging.getLogger(__name__)

#: torch.optim.Adam's defaults, which the scalar trainer uses.
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
#: Touched rows trained at once (a chunk of the cohort): bounds the slab's memory.
MAX_ROWS = 1 << 19
#: Elementwise ops run on lengths that are a multiple of this (see the module docstring).
SIMD_ELEMENTS = 64


def _pad_to_simd(length: int) -> int:
    return -(-length // SIMD_ELEMENTS) * SIMD_ELEMENTS


def _padded(function: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``function(x)`` (elementwise) computed on a flat copy padded to a multiple of
    :data:`SIMD_ELEMENTS`."""
    flat = F.pad(x.reshape(-1), (0, _pad_to_simd(x.numel()) - x.numel()))
    return function(flat)[:x.numel()].reshape(x.shape)


@dataclass(frozen=True)
class DeviceTask:
    """One device's round of local training.

    Attributes
    ----------
    device : int
        Device id.
    item_table : SparseEmbeddingTable
        Its tier's slice, as received (shared by the tier's devices; not modified).
    user : UserRow
        Its user row and Adam state.
    positives : np.ndarray
        (P,) its training items, P >= 1.
    hp : LocalTraining
        Its local hyperparameters (``growth_topk`` is its tier's).
    generator : torch.Generator
        Its seeded stream for the round.
    budget_bytes : int or None
        When given, the measured training bytes must not exceed it.
    """

    device: int
    item_table: SparseEmbeddingTable
    user: UserRow
    positives: np.ndarray
    hp: LocalTraining
    generator: torch.Generator
    budget_bytes: int | None = None


@dataclass
class _Prepared:
    """A device's draws and index arrays, before training."""

    task: DeviceTask
    touched: Tensor            # (T,) int64 sorted distinct item rows
    batches: Tensor            # (S, B) int64 positions into its positives, -1 = padding
    negatives: Tensor          # (P, N) int64 item ids
    train_bytes: int

    @property
    def steps(self) -> int:
        return self.batches.shape[0]


def _prepare(task: DeviceTask, slice_bytes: int, user_bytes: int) -> _Prepared:
    """Draw the device's negatives and shuffles exactly as :func:`train_device` does."""
    hp, n_items = task.hp, task.item_table.n_rows
    if len(task.positives) == 0:
        raise ValueError(f"device {task.device}: needs at least one training interaction")
    pos = torch.from_numpy(np.asarray(task.positives, dtype=np.int64))           # (P,)
    sampler = NegativeSampler.for_items(task.positives, n_items)
    neg = sampler.sample(torch.zeros(len(pos), dtype=torch.long), hp.negatives,
                         task.generator)                                         # (P, N)
    touched = torch.unique(torch.cat([pos, neg.reshape(-1)]))                    # (T,) sorted
    per_epoch = -(-len(pos) // hp.batch_size)
    padding = torch.full((per_epoch * hp.batch_size - len(pos),), -1, dtype=torch.long)
    batches = torch.cat([torch.cat([torch.randperm(len(pos), generator=task.generator), padding])
                         .reshape(per_epoch, hp.batch_size)
                         for _ in range(hp.local_epochs)])                       # (S, B)
    train_bytes = slice_bytes + user_bytes + len(touched) * task.item_table.dim * 4
    return _Prepared(task=task, touched=touched, batches=batches, negatives=neg,
                     train_bytes=train_bytes)


def train_cohort(tasks: list[DeviceTask], *,
                 max_rows: int = MAX_ROWS) -> list[tuple[DeviceUpdate, UserRow] | str]:
    """Local training of every task's device for one round, vectorised over the devices.

    Returns
    -------
    list
        Per task, in order: the device's :class:`DeviceUpdate` and new :class:`UserRow` (as
        :func:`~fedsparse.train.device.train_device` returns them, to float rounding), or a
        one-line reason when the device would hold more than its ``budget_bytes``.

    Raises
    ------
    ValueError
        A device without positives, or tasks with different hyperparameters (besides
        ``growth_topk``) or item-table shapes.
    """
    if not tasks:
        return []
    first = tasks[0]
    for task in tasks:
        if replace(task.hp, growth_topk=0) != replace(first.hp, growth_topk=0):
            raise ValueError("a cohort trains with one set of local hyperparameters")
        if (task.item_table.n_rows, task.item_table.dim) != (first.item_table.n_rows,
                                                             first.item_table.dim):
            raise ValueError("a cohort trains one item-table shape")
    dim = first.item_table.dim
    tables = {id(task.item_table): task.item_table for task in tasks}             # one per tier
    slice_bytes = {key: slice_train_bytes(table, first.hp.item_optimizer)
                   for key, table in tables.items()}
    user_bytes = user_row_bytes(dim)
    prepared = [_prepare(task, slice_bytes[id(task.item_table)], user_bytes) for task in tasks]
    results: list[tuple[DeviceUpdate, UserRow] | str] = [""] * len(tasks)
    trainable = []
    for index, device in enumerate(prepared):
        budget = device.task.budget_bytes
        if budget is not None and device.train_bytes > budget:
            results[index] = (f"device held {device.train_bytes} bytes, over its budget of "
                              f"{budget}")
        else:
            trainable.append(index)
    order = sorted(trainable, key=lambda index: -prepared[index].steps)      # stable: ties by task
    dense = {key: (table.to_dense().detach(), table.mask()) for key, table in tables.items()}
    chunk: list[int] = []
    rows = 0
    for index in order:
        size = len(prepared[index].touched)
        if chunk and rows + size > max_rows:
            _train_chunk([prepared[i] for i in chunk], dense, results, chunk)
            chunk, rows = [], 0
        chunk.append(index)
        rows += size
    if chunk:
        _train_chunk([prepared[i] for i in chunk], dense, results, chunk)
    return results


def _adam(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, lr: float,
          step: int | np.ndarray, scratch: Tensor | None = None) -> None:
    """torch.optim.Adam's update (defaults, no weight decay) in place, with one step count
    (``step`` an int >= 1, as torch computes it) or one per row of ``param`` (n, d) (``step``
    (n,) >= 1; the bias corrections are then float32 tensors). ``scratch``, shaped like
    ``param``, holds the denominator instead of a new tensor (the same arithmetic)."""
    exp_avg.lerp_(grad, 1 - BETA1)
    exp_avg_sq.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
    if isinstance(step, int):
        denom = torch.sqrt(exp_avg_sq, out=scratch).div_((1 - BETA2 ** step) ** 0.5).add_(EPS)
        param.addcdiv_(exp_avg, denom, value=-lr / (1 - BETA1 ** step))
        return
    step = step.astype(np.float64)
    bias_correction1 = 1 - BETA1 ** step
    bias_correction2_sqrt = (1 - BETA2 ** step) ** 0.5
    step_size = torch.from_numpy((-lr / bias_correction1).astype(np.float32)).unsqueeze(1)
    correction = torch.from_numpy(bias_correction2_sqrt.astype(np.float32)).unsqueeze(1)
    denom = (exp_avg_sq.sqrt() / correction).add_(EPS)                         # (n, d)
    param.add_(step_size * exp_avg / denom)


def _train_chunk(devices: list[_Prepared], dense: dict[int, tuple[Tensor, Tensor]],
                 results: list, slots: list[int]) -> None:
    """Train ``devices`` (sorted by local steps, most first) together; write each result to
    ``results[slots[i]]``."""
    hp = devices[0].task.hp
    dim, negatives = devices[0].task.item_table.dim, hp.negatives
    counts = torch.tensor([len(d.touched) for d in devices])
    row_end = torch.cumsum(counts, 0)                                             # (C,)
    row_start = row_end - counts
    pad = (0, _pad_to_simd(dim) - dim)                 # inactive zero columns (docstring)
    values = F.pad(torch.cat([dense[id(d.task.item_table)][0][d.touched]
                              for d in devices]), pad)                            # (R, D)
    mask = F.pad(torch.cat([dense[id(d.task.item_table)][1][d.touched] for d in devices]), pad)
    growth, grad_buffer = torch.zeros_like(values), torch.zeros_like(values)
    if hp.item_optimizer == "adam":                     # SGD keeps no state for the slice
        exp_avg, exp_avg_sq, scratch = (torch.zeros_like(values) for _ in range(3))

    def user_stack(field: str) -> Tensor:                                         # (C, D)
        return F.pad(torch.from_numpy(np.stack([getattr(d.task.user, field) for d in devices])),
                     pad)

    users, user_avg, user_avg_sq = (user_stack(f) for f in ("values", "exp_avg", "exp_avg_sq"))
    user_step = np.array([d.task.user.step for d in devices], dtype=np.int64)

    # Step-major records: local step t of the first n_t devices is one contiguous block.
    steps = np.array([d.steps for d in devices])
    pos_rows, neg_rows, valid = [], [], []
    for device, start in zip(devices, row_start.tolist()):
        positions = device.batches.clamp(min=0)                                   # (S, B)
        pos_global = torch.searchsorted(device.touched, torch.from_numpy(
            np.asarray(device.task.positives, dtype=np.int64))) + start           # (P,)
        neg_global = torch.searchsorted(device.touched, device.negatives) + start  # (P, N)
        pos_rows.append(pos_global[positions])                                    # (S, B)
        neg_rows.append(neg_global[positions])                                    # (S, B, N)
        valid.append(device.batches >= 0)                                         # (S, B)
    record_step = np.concatenate([np.arange(s) for s in steps])
    record_device = np.repeat(np.arange(len(devices)), steps)
    step_major = torch.from_numpy(np.lexsort((record_device, record_step)))
    pos_rows = torch.cat(pos_rows)[step_major]                                    # (S_all, B)
    neg_rows = torch.cat(neg_rows)[step_major]                                    # (S_all, B, N)
    valid = torch.cat(valid)[step_major]                                          # (S_all, B)
    active = [(steps > t).sum() for t in range(int(steps.max()))]
    per_epoch = steps // hp.local_epochs
    loss_sum = np.zeros(len(devices))

    first = 0
    for t, n in enumerate(active):
        block = slice(first, first + n)
        first += n
        n_rows = int(row_end[n - 1])
        step_pos, step_neg = pos_rows[block], neg_rows[block]             # (n, B), (n, B, N)
        batch_rows, local = torch.unique(torch.cat([step_pos.reshape(-1), step_neg.reshape(-1)]),
                                         return_inverse=True)            # (U,), (n B (1 + N),)
        item_leaf = values[batch_rows].requires_grad_()                           # (U, D)
        user_leaf = users[:n].detach().requires_grad_()                           # (n, D)
        ok = valid[block]                                                         # (n, B)
        size = ok.sum(1).to(torch.float32)                                        # (n,)
        pos_vecs = item_leaf[local[:step_pos.numel()].reshape(step_pos.shape)]    # (n, B, D)
        neg_vecs = item_leaf[local[step_pos.numel():].reshape(step_neg.shape)]    # (n, B, N, D)
        pos_scores = (user_leaf.unsqueeze(1) * pos_vecs).sum(-1)                  # (n, B)
        neg_scores = (user_leaf[:, None, None, :] * neg_vecs).sum(-1)             # (n, B, N)
        margins = neg_scores - pos_scores.unsqueeze(2)                            # (n, B, N)
        bpr = (_padded(F.softplus, margins) * ok.unsqueeze(2)).sum((1, 2))
        squared = (size * user_leaf.pow(2).sum(-1)
                   + (pos_vecs.pow(2).sum(-1) * ok).sum(1)
                   + (neg_vecs.pow(2).sum(-1) * ok.unsqueeze(2)).sum((1, 2)) / negatives)
        loss = bpr / (size * negatives) + hp.l2 * 0.5 * squared / size             # (n,)
        loss.sum().backward()
        with torch.no_grad():               # only the batch's rows have a gradient
            batch_grad, batch_mask = item_leaf.grad, mask[batch_rows]             # (U, D) each
            growth[batch_rows] += batch_grad.abs().masked_fill_(batch_mask, 0.0)
            grad = grad_buffer[:n_rows].zero_()                                   # (R_t, D)
            grad[batch_rows] = batch_grad.masked_fill_(~batch_mask, 0.0)
            if hp.item_optimizer == "sgd":
                values[:n_rows].add_(grad, alpha=-hp.item_lr)       # torch.optim.SGD's step
            else:
                _adam(values[:n_rows], grad, exp_avg[:n_rows], exp_avg_sq[:n_rows], hp.lr,
                      t + 1, scratch=scratch[:n_rows])
            user_step[:n] += 1
            _adam(users[:n], user_leaf.grad, user_avg[:n], user_avg_sq[:n], hp.lr, user_step[:n])
            last_epoch = t >= per_epoch[:n] * (hp.local_epochs - 1)
            loss_sum[:n] += np.where(last_epoch, loss.detach().double().numpy()
                                     * size.double().numpy(), 0.0)

    for index, device in enumerate(devices):
        rows = slice(int(row_start[index]), int(row_end[index]))
        task, touched = device.task, device.touched
        row_mask = mask[rows, :dim]                                               # (T, d)
        entries = (touched.unsqueeze(1) * dim + torch.arange(dim))[row_mask]      # (E,)
        grow_entries, grow_scores = top_growth(touched, growth[rows, :dim], task.hp.growth_topk,
                                               dim)
        update = DeviceUpdate(entries=entries.numpy(),
                              values=values[rows, :dim][row_mask].numpy(),
                              grow_entries=grow_entries, grow_scores=grow_scores,
                              examples=len(task.positives) * hp.local_epochs,
                              loss=float(loss_sum[index]) / len(task.positives),
                              train_bytes=device.train_bytes, steps=device.steps)
        user = UserRow(values=users[index, :dim].numpy().copy(),
                       exp_avg=user_avg[index, :dim].numpy().copy(),
                       exp_avg_sq=user_avg_sq[index, :dim].numpy().copy(),
                       step=int(user_step[index]))
        results[slots[index]] = (update, user)


@dataclass(frozen=True)
class UserRefit:
    """How a device refits its user row to its tier's slice before it ranks (``fl.refit_steps``,
    ``fl.refit_lr``, and the fleet's ``fl.l2`` and ``fl.negatives``)."""

    steps: int
    lr: float
    l2: float
    negatives: int


def refit_user_rows(items: Tensor, rows: np.ndarray, positives: list[np.ndarray],
                    refit: UserRefit, generators: list[torch.Generator]) -> np.ndarray:
    """Each device's user row refit to its own training interactions, the item slice frozen.

    Device ``i`` takes ``refit.steps`` Adam steps (fresh moments) from ``rows[i]`` on the local
    loss over all its positives at once, with ``refit.negatives`` fresh negatives per positive
    a step from ``generators[i]``: ``sum softplus(u.v_n - u.v_p) / (P N) + l2 |u|^2 / 2`` (the
    local training's loss, its whole data one batch; the item terms are constant). It holds
    its slice without Adam state, its row with it, and the rows it gathers: no more than in a
    training round. As in :func:`train_cohort`, every elementwise op runs on a length that is a
    multiple of :data:`SIMD_ELEMENTS` and every sum over a device's positives is its own, so a
    device's row is the same whichever devices are refit with it.

    Parameters
    ----------
    items:
        (n_items, d) float32 dense view of the devices' slice (zeros at inactive entries).
    rows:
        (m, d) float32 the devices' user rows.
    positives:
        Per device, its (P_i,) int64 training items, P_i >= 1.
    refit:
        Steps, learning rate, L2 weight and negatives.
    generators:
        Per device, its seeded stream for the negatives.

    Returns
    -------
    np.ndarray
        (m, d) float32 refit rows.
    """
    n_items, dim = items.shape
    steps, negatives = refit.steps, refit.negatives
    pad = (0, _pad_to_simd(dim) - dim)
    table = F.pad(items.detach(), pad)                                            # (n_items, D)
    counts = np.array([len(p) for p in positives])
    slot = torch.from_numpy(np.repeat(np.arange(len(rows)), counts))              # (Q,)
    pos = torch.from_numpy(np.concatenate(positives).astype(np.int64))            # (Q,)
    neg = torch.cat([NegativeSampler.for_items(p, n_items).sample(
        torch.zeros(len(p) * steps, dtype=torch.long), negatives, generator)
        .reshape(len(p), steps, negatives)
        for p, generator in zip(positives, generators)])                          # (Q, S, N)
    pair_scale = torch.from_numpy(1.0 / (counts * negatives)).float()[slot].unsqueeze(1)  # (Q, 1)
    pos_vecs = table[pos]                                                         # (Q, D)
    users = F.pad(torch.from_numpy(np.asarray(rows, dtype=np.float32)), pad)      # (m, D)
    exp_avg, exp_avg_sq, scratch = (torch.zeros_like(users) for _ in range(3))
    for t in range(steps):
        neg_vecs = table[neg[:, t]]                                               # (Q, N, D)
        pair_users = users[slot]                                                  # (Q, D)
        margin = ((pair_users.unsqueeze(1) * neg_vecs).sum(-1)
                  - (pair_users * pos_vecs).sum(-1, keepdim=True))                # (Q, N)
        weight = _padded(torch.sigmoid, margin)                                   # (Q, N)
        pair_grad = (weight.unsqueeze(2) * (neg_vecs - pos_vecs.unsqueeze(1))).sum(1)  # (Q, D)
        grad = torch.zeros_like(users).index_add_(0, slot, pair_grad * pair_scale)
        grad.add_(users, alpha=refit.l2)
        _adam(users, grad, exp_avg, exp_avg_sq, refit.lr, t + 1, scratch=scratch)
    return users[:, :dim].numpy().copy()
