"""Dynamic sparse training of the embedding tables, on the training side of the models.

:class:`DynamicSparsity` runs one ``sparse.method`` (DESIGN section 3) around an ordinary
training loop: it builds the initial masks, observes every step's row gradients, moves the masks
every ``update_interval`` steps, and chooses the rows of the sampled backward. The models only
read their two tables; they do not know whether, or how, the tables are sparse.

What each method does, at every mask update (step t a positive multiple of dT, t <= T_end =
``end_fraction`` x total steps), per table: drop the ``round(zeta_t * nnz)`` active entries with
the smallest |w| (never a row's last one) and grow as many inactive entries, which start at 0
with zero Adam state; zeta_t = zeta_0 / 2 (1 + cos(pi t / T_end)). Density never changes.

=============================  ===========  ==========================================  =======
method                         initial mask grow score of inactive entries                 sampled
=============================  ===========  ==========================================  =======
``dense``                      (dense)      (no updates)                                no
``static``                     random       (no updates)                                no
``set``                        random       uniform random                              no
``rigl``                       random       |grad| of the last batch                    no
``magnitude``                  (dense)      (once, at ``dense_fraction``: keep top |w|) no
``sparserec``                  NMF          |grad| summed over the steps since the      yes
                                            last update
``sparserec_no_nmf``           random       as sparserec                                yes
``sparserec_no_accumulation``  NMF          |grad| of the last batch                    yes
``sparserec_no_sampling``      NMF          as sparserec                                no
=============================  ===========  ==========================================  =======

"Sampled" means the sampled sparse backward of :mod:`fedsparse.sparse.sampled` (LightGCN only:
MF's gradient already touches only the batch's rows). Gradients of inactive entries come from
the dense (R, d) gradient of the rows each table returned in the step's forward pass, captured
by a forward hook on the table; with the sampled backward these are the rows of S only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fedsparse.config import SparseConfig
from fedsparse.data.dataset import InteractionData
from fedsparse.errors import ConfigError
from fedsparse.models import Recommender
from fedsparse.seeding import generator_for
from fedsparse.sparse import (EmbeddingTable, GradientAccumulator, SparseEmbeddingTable,
                              apply_update, constant_update_fraction, cosine_update_fraction,
                              dense_bytes, dense_dim_for_budget, density_for_budget,
                              gradient_scores, is_update_step, magnitude_scores, nmf_masks,
                              random_mask, random_scores, table_bytes, top_fraction_mask,
                              update_count, update_mask)
from fedsparse.sparse.budget import mixed_bytes, mixed_dims_for_budget
from fedsparse.sparse.mixed import MixedDimEmbeddingTable
from fedsparse.sparse.sampled import importance_weights, sample_backward_rows

logger = logging.getLogger(__name__)

TABLES = ("user", "item")


@dataclass(frozen=True)
class Method:
    """What one ``sparse.method`` does.

    Attributes
    ----------
    init : str
        ``"dense"`` (dense tables), ``"random"`` or ``"nmf"`` initial masks, ``"mixed"``
        (mixed-dimension tables, :mod:`fedsparse.sparse.mixed`) or ``"pep"`` (dense tables
        with learnable thresholds, :mod:`fedsparse.sparse.pep`).
    grow : str or None
        Grow score: ``"random"``, ``"last"`` (last batch's |grad|), ``"accumulated"`` (|grad|
        summed since the last update), or None when the mask never moves.
    sampled : bool
        Sampled sparse backward (for models that support it).
    prune : bool
        Train dense, then prune once by magnitude (``"pep"``: by the thresholded magnitude,
        then retrain the kept entries from their initial values).
    """

    init: str
    grow: str | None = None
    sampled: bool = False
    prune: bool = False


METHODS: dict[str, Method] = {
    "dense": Method("dense"),
    "static": Method("random"),
    "set": Method("random", "random"),
    "rigl": Method("random", "last"),
    "magnitude": Method("dense", prune=True),
    "sparserec": Method("nmf", "accumulated", sampled=True),
    "sparserec_no_nmf": Method("random", "accumulated", sampled=True),
    "sparserec_no_accumulation": Method("nmf", "last", sampled=True),
    "sparserec_no_sampling": Method("nmf", "accumulated"),
    "mixed_dim": Method("mixed"),
    "pep": Method("pep", prune=True),
}


def table_densities(cfg: SparseConfig, n_users: int, n_items: int, dim: int) -> tuple[float, float]:
    """Target densities of the user and item tables.

    ``sparse.density`` for both, or, when ``sparse.budget_bytes`` > 0, the densities whose
    measured memory (values, index and Adam state) fits the budget split between the tables in
    proportion to their sizes. ``dense``: 1.0 for both (a budget sets its dimension instead:
    :func:`model_dim`).

    Raises
    ------
    ConfigError
        When the budget cannot hold one active entry per row; the message names the method and
        the smallest budget that can.
    """
    if cfg.method in ("dense", "mixed_dim"):
        return 1.0, 1.0
    if cfg.budget_bytes == 0:
        return cfg.density, cfg.density
    user_budget, item_budget = _split_budget(cfg.budget_bytes, n_users, n_items)
    try:
        densities = (density_for_budget(n_users, dim, user_budget),
                     density_for_budget(n_items, dim, item_budget))
    except ConfigError:
        needs = (table_bytes(n_users, dim, n_users), table_bytes(n_items, dim, n_items))
        raise _too_small(cfg, needs, n_users, n_items, "one active entry per row") from None
    logger.info("budget %d bytes -> density %.4f (users), %.4f (items)", cfg.budget_bytes,
                *densities)
    return densities


def _split_budget(budget: int, n_users: int, n_items: int) -> tuple[int, int]:
    """A budget's user and item parts, in proportion to the tables' rows."""
    user_budget = budget * n_users // (n_users + n_items)
    return user_budget, budget - user_budget


def _too_small(cfg: SparseConfig, needs: tuple[int, int], n_users: int, n_items: int,
               smallest_model: str) -> ConfigError:
    """The one-line error of a budget below the user and item tables' ``needs`` (bytes of
    the method's smallest tables): it names the method and the smallest budget whose split
    (:func:`_split_budget`) covers both."""
    smallest = max(-(-need * (n_users + n_items) // rows)
                   for need, rows in zip(needs, (n_users, n_items)))
    while any(part < need for part, need in zip(_split_budget(smallest, n_users, n_items), needs)):
        smallest += 1
    return ConfigError(f"sparse.budget_bytes: {cfg.budget_bytes} bytes is too small for "
                       f"{cfg.method}, which needs {smallest_model} of both tables: the smallest "
                       f"budget that works is {smallest} bytes")


def mixed_tables(cfg: SparseConfig, data: InteractionData, dim: int, *, init_std: float,
                 generator: torch.Generator) -> tuple[MixedDimEmbeddingTable,
                                                      MixedDimEmbeddingTable]:
    """``mixed_dim``'s user and item tables: rows blocked by training frequency, block
    dimensions solved so that each table's measured memory with Adam state fits its part of
    ``sparse.budget_bytes`` (split as for the sparse methods) or, without one, ``density``
    times its dense table's.

    Raises
    ------
    ConfigError
        When a budget cannot hold dimension 1 in every block; the message names the method
        and the smallest budget that works.
    """
    binary = data.train > 0
    frequencies = (np.asarray(binary.sum(axis=1)).ravel(), np.asarray(binary.sum(axis=0)).ravel())
    rows = (data.n_users, data.n_items)
    budgets = (_split_budget(cfg.budget_bytes, *rows) if cfg.budget_bytes else
               tuple(int(cfg.density * dense_bytes(n, dim)) for n in rows))
    ones = np.ones(cfg.mixed_blocks, dtype=np.int64)
    try:
        dims = [mixed_dims_for_budget(frequency, dim, cfg.mixed_blocks, cfg.mixed_temperature,
                                      budget) for frequency, budget in zip(frequencies, budgets)]
    except ConfigError:
        needs = tuple(mixed_bytes(frequency, dim, ones) for frequency in frequencies)
        raise _too_small(cfg, needs, *rows, "dimension 1 in every block") from None
    logger.info("mixed dimensions: users %s, items %s", dims[0].tolist(), dims[1].tolist())
    return tuple(MixedDimEmbeddingTable(frequency, dim, block, init_std=init_std,
                                        generator=generator)
                 for frequency, block in zip(frequencies, dims))


def model_dim(cfg: SparseConfig, n_users: int, n_items: int, dim: int) -> int:
    """The tables' embedding dimension: ``dim`` (``model.dim``), or for ``dense`` with
    ``sparse.budget_bytes`` the largest dimension up to it whose two dense tables with Adam
    state fit the budget (the smaller dense model a practitioner would try).

    Raises
    ------
    ConfigError
        A budget below dimension 1; the message names the smallest budget that works.
    """
    if cfg.method != "dense" or cfg.budget_bytes == 0:
        return dim
    try:
        solved = dense_dim_for_budget((n_users, n_items), dim, cfg.budget_bytes)
    except ConfigError as exc:
        raise ConfigError(f"sparse.budget_bytes: too small for dense: {exc}") from None
    logger.info("budget %d bytes -> dense dimension %d", cfg.budget_bytes, solved)
    return solved


def model_tables(model: Recommender) -> dict[str, EmbeddingTable]:
    """``{"user": model.user_table, "item": model.item_table}``."""
    return {"user": model.user_table, "item": model.item_table}


def memory_metrics(model: Recommender, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Density and measured bytes of the model's two tables.

    Returns
    -------
    dict
        ``density`` (active entries / all entries), ``model_bytes`` (values and index),
        ``train_bytes`` (plus ``optimizer``'s state for them), ``dense_bytes`` (float32 n x d
        of both tables), ``floor_bytes`` (4 bytes per active value plus the smallest bare index).
    """
    tables = list(model_tables(model).values())
    size = sum(table.n_rows * table.dim for table in tables)
    return {"density": sum(table.nnz for table in tables) / size,
            "model_bytes": sum(table.memory_bytes() for table in tables),
            "train_bytes": sum(table.memory_bytes(optimizer) for table in tables),
            "dense_bytes": 4 * size,
            "floor_bytes": sum(table.floor_bytes() for table in tables)}


class RowGradientRecorder:
    """Captures the dense gradient of every row a table's forward pass returns.

    A forward hook on the table registers a gradient hook on each output that requires grad
    (calls under ``torch.no_grad()``, such as evaluation, are ignored). The gradient of a
    gathered (R, d) output is dense: it covers the rows' inactive entries too.
    """

    def __init__(self, table: nn.Module) -> None:
        self.n_rows, self.dim = table.n_rows, table.dim
        self._parts: list[tuple[Tensor, Tensor]] = []
        self._handle = table.register_forward_hook(self._on_forward, with_kwargs=True)

    def _on_forward(self, table: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
        if not output.requires_grad:
            return
        rows = args[0] if args else kwargs.get("rows")
        rows = torch.arange(self.n_rows) if rows is None else rows
        output.register_hook(lambda grad: self._parts.append((rows, grad)))

    def remove(self) -> None:
        """Stop observing the table."""
        self._handle.remove()
        self._parts.clear()

    def pop(self) -> tuple[Tensor, Tensor]:
        """The gradient since the last call, per distinct row, and forget it.

        Returns
        -------
        tuple of Tensor
            rows (R,) int64 sorted distinct, and their summed gradient (R, dim): the table's
            dense (n_rows, dim) gradient restricted to the rows it is non-zero on.
        """
        if not self._parts:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, self.dim)
        rows = torch.cat([part_rows.reshape(-1) for part_rows, _ in self._parts])      # (T,)
        grads = torch.cat([grad.reshape(-1, self.dim) for _, grad in self._parts])     # (T, dim)
        self._parts.clear()
        distinct, inverse = torch.unique(rows, return_inverse=True)                    # (R,), (T,)
        summed = torch.zeros(len(distinct), self.dim, dtype=grads.dtype).index_add_(0, inverse,
                                                                                    grads)
        return distinct, summed                                                        # (R, dim)


def _swap_parameter(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter,
                    mask: Tensor | None) -> None:
    """Make ``optimizer`` train ``new`` instead of ``old``, keeping the state at ``mask``
    (None: ``new`` starts with fresh state).

    Per-value state tensors shaped like ``old`` become their (nnz,) entries at the bool
    ``mask`` in row-major order (the order of a sparse table's values); scalars are kept.
    """
    for group in optimizer.param_groups:
        group["params"] = [new if param is old else param for param in group["params"]]
    state = optimizer.state.pop(old, {})
    if mask is None:
        return
    optimizer.state[new] = {
        key: value[mask] if isinstance(value, Tensor) and value.shape == mask.shape else value
        for key, value in state.items()}


def _drop_parameter(optimizer: torch.optim.Optimizer, dropped: nn.Parameter) -> None:
    """Stop ``optimizer`` training ``dropped``; its state goes."""
    for group in optimizer.param_groups:
        group["params"] = [param for param in group["params"] if param is not dropped]
    optimizer.state.pop(dropped, None)


class DynamicSparsity:
    """The mask side of one training run: initial masks, gradient evidence, mask updates.

    Use: :meth:`initial_masks` to build the model, :meth:`attach` once the optimizer exists,
    then per optimizer step ``t = 1, 2, ...``: :meth:`backward_rows` before the forward pass
    (pass the result as the model's ``grad_rows``) and :meth:`after_step` after
    ``optimizer.step()``; :meth:`detach` at the end.

    Parameters
    ----------
    cfg:
        The ``[sparse]`` section.
    data:
        Training data (for NMF masks and the degree prior of the row sampling).
    dim:
        Embedding dimension.
    seed:
        Run seed; every draw comes from ``generator_for(seed, step, 0, purpose)``.
    total_steps:
        Optimizer steps of the whole run.
    sampled_backward:
        Whether the model supports ``grad_rows`` (LightGCN); the method decides whether to
        use it.

    Attributes
    ----------
    method : Method
    densities : tuple of float
        Target densities of the user and item tables.
    end_step : int
        Last step at which the mask may move.
    updates : int
        Mask updates (or the one magnitude pruning) so far.
    """

    def __init__(self, cfg: SparseConfig, data: InteractionData, *, dim: int, seed: int,
                 total_steps: int, sampled_backward: bool) -> None:
        if cfg.method not in METHODS:
            raise ConfigError(f"sparse.method: {cfg.method} runs in fleets only (fedsparse "
                              f"simulate); centralized training runs one of {', '.join(METHODS)}")
        self.cfg, self.method = cfg, METHODS[cfg.method]
        self.data, self.dim, self.seed = data, dim, seed
        self.densities = table_densities(cfg, data.n_users, data.n_items, dim)
        self.end_step = max(1, round(cfg.end_fraction * total_steps))
        self.prune_step = min(max(1, round(cfg.dense_fraction * total_steps)), total_steps)
        self.sampled = self.method.sampled and sampled_backward
        self.updates = 0
        self.dense_phase_bytes = 0          # what the tables held just before pruning (0: not yet)
        binary = data.train > 0
        self._degree = torch.from_numpy(np.concatenate([
            np.asarray(binary.sum(axis=1)).ravel(), np.asarray(binary.sum(axis=0)).ravel()]))
        self._importance = torch.zeros(data.n_users + data.n_items, dtype=torch.float64)
        self._offsets = {"user": 0, "item": data.n_users}
        self._model: Recommender | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._recorders: dict[str, RowGradientRecorder] = {}
        self._accumulators: dict[str, GradientAccumulator] = {}
        self._masks: dict[str, Tensor] = {}
        self._last: dict[str, tuple[Tensor, Tensor]] = {}
        self._initial: dict[str, Tensor] = {}

    def initial_masks(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(user, item) bool masks to build the model with, or None for dense tables (and
        mixed-dimension ones, which replace them: :func:`mixed_tables`)."""
        n_users, n_items = self.data.n_users, self.data.n_items
        user_density, item_density = self.densities
        if self.method.init in ("dense", "mixed", "pep"):
            return None
        if self.method.init == "random":
            generator = generator_for(self.seed, 0, 0, "mask-init")
            return (random_mask(n_users, self.dim, user_density, generator),
                    random_mask(n_items, self.dim, item_density, generator))
        return nmf_masks(self.data.train, self.dim, user_density, item_density,
                         iterations=self.cfg.nmf_iterations, seed=self.seed)

    def attach(self, model: Recommender, optimizer: torch.optim.Optimizer) -> None:
        """Start observing ``model``'s tables, trained by ``optimizer`` (over their values)."""
        self._model, self._optimizer = model, optimizer
        needs_gradients = self.method.grow in ("last", "accumulated") or self.sampled
        for name, table in model_tables(model).items():
            self._masks[name] = table.mask()
            if self.method.init == "pep":
                self._initial[name] = table.values.detach().clone()   # to retrain from
            if needs_gradients:
                self._recorders[name] = RowGradientRecorder(table)
            if self.method.grow == "accumulated":
                self._accumulators[name] = GradientAccumulator(table.n_rows, table.dim)
        logger.info("sparse method %s: density %.4f (users), %.4f (items)%s", self.cfg.method,
                    *(table.density for table in model_tables(model).values()),
                    ", sampled backward" if self.sampled else "")

    def detach(self) -> None:
        """Stop observing the model's tables (remove the gradient hooks)."""
        for recorder in self._recorders.values():
            recorder.remove()
        self._recorders.clear()

    def backward_rows(self, step: int, users: Tensor, pos_items: Tensor,
                      neg_items: Tensor) -> Tensor | None:
        """Node ids (users, then items offset by n_users) that get gradient at ``step``.

        The batch's nodes plus ``sparse.sample_rows`` others drawn by
        :func:`~fedsparse.sparse.sampled.importance_weights` of the rows' gradient norms summed
        over all steps so far and their degree, sorted; None when the method does not sample
        (every row may get gradient).
        """
        if not self.sampled:
            return None
        offset = self.data.n_users
        required = torch.cat([users, pos_items + offset, neg_items.reshape(-1) + offset])
        weights = importance_weights(self._importance, self._degree)
        return sample_backward_rows(required, weights, self.cfg.sample_rows,
                                    generator_for(self.seed, step, 0, "sample-rows"))

    def after_step(self, step: int) -> None:
        """Record step ``step``'s gradients; prune or update the masks when it is time."""
        self._observe(step)
        pruned = self.dense_phase_bytes > 0
        if self.method.prune and not pruned and (step == self.prune_step
                                                 or self._thresholds_done(step)):
            self._prune()
        elif self.method.grow and is_update_step(step, self.cfg.update_interval, self.end_step):
            self._update_masks(step)

    def _observe(self, step: int) -> None:
        for name, recorder in self._recorders.items():
            rows, grad = recorder.pop()                                     # (R,), (R, d)
            if self.sampled:
                self._importance.index_add_(0, rows + self._offsets[name],
                                            grad.norm(dim=1).double())
            if step > self.end_step:
                continue
            if self.method.grow == "accumulated":
                self._accumulators[name].add_rows(rows, grad)
            elif self.method.grow == "last":
                self._last[name] = (rows, grad)

    def grow_scores(self, name: str, step: int) -> Tensor:
        """(n_rows, dim) scores by which a mask update at ``step`` grows table ``name``.

        Random draws (``set``), the last batch's |grad| (``rigl``, active entries included;
        the update only looks at inactive ones), or the |grad| of inactive entries summed over
        the steps since the last update (``sparserec``).
        """
        table = model_tables(self._model)[name]
        shape = (table.n_rows, table.dim)
        if self.method.grow == "random":
            return random_scores(shape, generator_for(self.seed, step, 0, f"grow-{name}"))
        if self.method.grow == "accumulated":
            return self._accumulators[name].scores(self._masks[name])
        dense = torch.zeros(shape)
        rows, grad = self._last[name]                                       # (R,), (R, d)
        dense[rows] = grad
        return gradient_scores(dense)

    def update_fraction(self, step: int) -> float:
        """Fraction of the active entries a mask update at ``step`` moves (``sparse.schedule``)."""
        schedule = (cosine_update_fraction if self.cfg.schedule == "cosine"
                    else constant_update_fraction)
        return schedule(step, initial_fraction=self.cfg.initial_fraction, end_step=self.end_step)

    def _update_masks(self, step: int) -> None:
        fraction = self.update_fraction(step)
        moved = {}
        for name, table in model_tables(self._model).items():
            update = update_mask(self._masks[name], magnitude_scores(table.to_dense()),
                                 self.grow_scores(name, step),
                                 update_count(table.nnz, fraction))
            apply_update(table, update, self._optimizer)
            self._masks[name] = update.new_mask
            moved[name] = update.grown.numel()
            if name in self._accumulators:
                self._accumulators[name].reset()
        self.updates += 1
        logger.debug("step %d: mask update %d, fraction %.4f, moved %s", step, self.updates,
                     fraction, moved)

    def _thresholds_done(self, step: int) -> bool:
        """PEP, checked every ``update_interval`` steps: have the thresholds zeroed at least
        the entries the budget drops, in both tables?"""
        return (self.method.init == "pep" and step % self.cfg.update_interval == 0
                and all(table.kept_fraction() <= density for table, density
                        in zip(model_tables(self._model).values(), self.densities)))

    def _prune(self) -> None:
        """Replace each dense table by a sparse one keeping its largest |w| (magnitude), or
        its largest thresholded |w|, ties by |V|, with the kept entries back at their initial
        values and fresh optimizer state (PEP's retraining). Records the dense phase's
        training bytes first (``dense_phase_bytes``)."""
        tables = model_tables(self._model)
        self.dense_phase_bytes = sum(table.memory_bytes(self._optimizer)
                                     for table in tables.values())
        for (name, table), density in zip(tables.items(), self.densities):
            weights = table.to_dense().detach()                                 # (n_rows, d)
            if self.method.init == "pep":
                mask = top_fraction_mask(weights.abs().numpy(), density,
                                         tie_break=table.values.detach().abs().numpy())
                sparse = SparseEmbeddingTable.from_dense(self._initial[name], mask)
                _swap_parameter(self._optimizer, table.values, sparse.values, None)
                _drop_parameter(self._optimizer, table.threshold)
            else:
                mask = top_fraction_mask(weights.abs().numpy(), density)
                sparse = SparseEmbeddingTable.from_dense(weights, mask)
                _swap_parameter(self._optimizer, table.values, sparse.values,
                                torch.from_numpy(mask))
            setattr(self._model, f"{name}_table", sparse)
            self._masks[name] = sparse.mask()
        self.updates += 1
        logger.info("%s pruning: density %.4f (users), %.4f (items)", self.cfg.method,
                    *(table.density for table in model_tables(self._model).values()))
