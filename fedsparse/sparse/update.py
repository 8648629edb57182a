"""One dynamic-sparse-training mask update: scorers say what to drop and grow, ``update_mask``
moves the entries, ``apply_update`` carries the move into a table and its optimizer.

Scorers return (n_rows, dim) float scores over all entries of a table:

* drop: :func:`magnitude_scores` (the active entries with the smallest |w| are dropped);
* grow: :func:`random_scores` (SET), :func:`gradient_scores` (RigL / DSL: |grad| of the last
  batch) or :class:`GradientAccumulator` (SparseRec: |grad| of inactive entries summed over all
  steps since the last update, DESIGN section 3, idea 2).

All of them see dense (n_rows, dim) weights or gradients, which the engine builds for the
update; the table itself stores only its active values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from fedsparse.sparse.storage import SparseEmbeddingTable

logger = logging.getLogger(__name__)


def magnitude_scores(dense_weights: Tensor) -> Tensor:
    """|w| of (n_rows, dim) weights, float32: drop the active entries that score lowest."""
    return dense_weights.detach().abs().float()


def random_scores(shape: tuple[int, int], generator: torch.Generator) -> Tensor:
    """(n_rows, dim) float32 uniform scores from ``generator``: random growth (SET)."""
    return torch.rand(shape, generator=generator)


def gradient_scores(dense_grad: Tensor) -> Tensor:
    """|grad| of one batch's (n_rows, dim) dense gradient, float32: growth by RigL / DSL."""
    return dense_grad.detach().abs().float()


class GradientAccumulator:
    """Sums |grad| at inactive entries over all steps between two mask updates.

    It holds a dense (n_rows, dim) float32 buffer: a training buffer that lives only while the
    table trains (it is neither part of the sparse table nor sent anywhere), and is not counted
    in the table's ``memory_bytes``. The mask does not move between two resets (the caller
    resets after each update), so the buffer sums |grad| at every entry of the rows it is
    given and :meth:`scores` zeroes the active entries once, when they are read.

    Parameters
    ----------
    n_rows, dim:
        Table shape.
    device:
        Where the buffer lives.
    """

    def __init__(self, n_rows: int, dim: int, device: torch.device | str | None = None) -> None:
        self._sum = torch.zeros(n_rows, dim, dtype=torch.float32, device=device)

    def add_rows(self, rows: Tensor, row_grad: Tensor) -> None:
        """Add |row_grad| of some rows (a row-sparse gradient).

        The same as adding the |grad| of a dense gradient that is ``row_grad`` on ``rows`` and
        zero elsewhere, when ``rows`` are distinct. A repeated row adds the |grad| of each of
        its occurrences, so sum a step's gradient per row first to accumulate |step gradient|.

        Parameters
        ----------
        rows:
            (R,) int row ids.
        row_grad:
            (R, dim) gradient of those rows.
        """
        if rows.ndim != 1 or row_grad.shape != (rows.shape[0], self._sum.shape[1]):
            raise ValueError(f"rows (R,) and row_grad (R, {self._sum.shape[1]}) expected, got "
                             f"{tuple(rows.shape)} and {tuple(row_grad.shape)}")
        self._sum.index_add_(0, rows.long(), row_grad.detach().abs().float())

    def scores(self, active: Tensor) -> Tensor:
        """The (n_rows, dim) sums since the last :meth:`reset`, 0 at the ``active`` entries
        ((n_rows, dim) bool, the mask since that reset): a new tensor."""
        return self._sum.masked_fill(active, 0.0)

    def reset(self) -> None:
        """Zero the sums (after a mask update)."""
        self._sum.zero_()


@dataclass(frozen=True)
class MaskUpdate:
    """The result of :func:`update_mask`.

    Attributes
    ----------
    new_mask : Tensor
        (n_rows, dim) bool.
    dropped, grown : Tensor
        (k,) int64 row-major flat indices (``row * dim + col``), ascending, of the entries
        switched off and on; both have the same length k.
    """

    new_mask: Tensor
    dropped: Tensor
    grown: Tensor


def _weakest_droppable(mask: Tensor, drop_scores: Tensor) -> Tensor:
    """Flat indices of the active entries other than each row's strongest, weakest first.

    Order: ascending drop score, ties by ascending flat index. A row's strongest entry (the
    last of its row in that order) is never returned, so dropping any prefix of the result
    leaves every row that had an active entry with at least one.
    """
    active = mask.reshape(-1).nonzero().squeeze(1)                                 # (A,)
    weakest_first = active[torch.sort(drop_scores.reshape(-1)[active], stable=True).indices]
    rows = weakest_first // mask.shape[1]                                          # (A,)
    by_row = torch.sort(rows, stable=True).indices      # (A,) grouped by row, weakest first
    grouped_rows = rows[by_row]                                                    # (A,)
    is_last = torch.ones_like(grouped_rows, dtype=torch.bool)
    is_last[:-1] = grouped_rows[1:] != grouped_rows[:-1]
    droppable = torch.ones_like(is_last)
    droppable[by_row[is_last]] = False
    return weakest_first[droppable]                                                # (A - rows,)


def _strongest_inactive(mask: Tensor, grow_scores: Tensor) -> Tensor:
    """Flat indices of the inactive entries, descending grow score, ties by ascending index."""
    inactive = (~mask).reshape(-1).nonzero().squeeze(1)                            # (I,)
    order = torch.sort(grow_scores.reshape(-1)[inactive], descending=True, stable=True).indices
    return inactive[order]                                                         # (I,)


def update_mask(mask: Tensor, drop_scores: Tensor, grow_scores: Tensor,
                n_update: int) -> MaskUpdate:
    """Drop the weakest active entries and grow as many of the strongest inactive ones.

    Parameters
    ----------
    mask:
        (n_rows, dim) bool, the current mask.
    drop_scores:
        (n_rows, dim); the active entries with the smallest scores are dropped, but never a
        row's last active entry (each row keeps its highest-scoring one).
    grow_scores:
        (n_rows, dim); the entries inactive in ``mask`` with the largest scores are grown, so an
        entry dropped by this update cannot be regrown by it.
    n_update:
        Entries to move. When fewer entries may be dropped or grown, both counts become the
        smaller number, so the active count never changes.

    Ties are broken by ascending row-major index, on both sides.

    Returns
    -------
    MaskUpdate
    """
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D bool tensor, got {mask.dtype} {tuple(mask.shape)}")
    for name, scores in (("drop_scores", drop_scores), ("grow_scores", grow_scores)):
        if scores.shape != mask.shape:
            raise ValueError(f"{name} must have shape {tuple(mask.shape)}, "
                             f"got {tuple(scores.shape)}")
        if scores.isnan().any():
            raise ValueError(f"{name} contain NaN")
    if n_update < 0:
        raise ValueError(f"n_update must be >= 0, got {n_update}")
    drop_order = _weakest_droppable(mask, drop_scores)
    grow_order = _strongest_inactive(mask, grow_scores)
    count = min(n_update, drop_order.numel(), grow_order.numel())
    if count < n_update:
        logger.debug("mask update moves %d entries instead of %d (%d droppable, %d inactive)",
                     count, n_update, drop_order.numel(), grow_order.numel())
    dropped = drop_order[:count].sort().values
    grown = grow_order[:count].sort().values
    flat = mask.reshape(-1).clone()
    flat[dropped] = False
    flat[grown] = True
    new_mask = flat.reshape(mask.shape)
    old_flat = mask.reshape(-1)
    assert int(new_mask.sum()) == int(mask.sum()), "active count changed"
    assert not torch.isin(dropped, grown).any(), "an entry was dropped and grown"
    assert old_flat[dropped].all() and not old_flat[grown].any(), "moved the wrong entries"
    return MaskUpdate(new_mask=new_mask, dropped=dropped, grown=grown)


def apply_update(table: SparseEmbeddingTable, update: MaskUpdate,
                 optimizer: torch.optim.Optimizer | None = None) -> Tensor:
    """Move ``table`` to ``update.new_mask`` and remap ``optimizer``'s state for its values.

    Kept entries keep their value and optimizer state; grown entries start at 0 with zero
    state. Every per-value state tensor of ``table.values`` (shape (nnz,): Adam's ``exp_avg``,
    ``exp_avg_sq`` and ``max_exp_avg_sq``, SGD's ``momentum_buffer``, ...) is remapped; scalar
    state such as Adam's ``step`` is kept as it is.

    Parameters
    ----------
    table:
        The table whose current mask ``update`` was computed from.
    update:
        From :func:`update_mask`.
    optimizer:
        Optimizer over ``table.values``, or None.

    Returns
    -------
    Tensor
        (nnz,) int64: for each new storage position, the old one, or -1 for a grown entry (as
        :meth:`SparseEmbeddingTable.replace_mask` returns it).

    Raises
    ------
    ValueError
        When ``update`` does not fit the table's current mask.
    """
    current = table.mask().reshape(-1).cpu()
    if (update.new_mask.shape != (table.n_rows, table.dim)
            or not current[update.dropped.cpu()].all() or current[update.grown.cpu()].any()):
        raise ValueError("the update was not computed from this table's current mask")
    old_nnz = table.nnz
    previous = table.replace_mask(update.new_mask)                      # (nnz,)
    if optimizer is None:
        return previous
    state = optimizer.state.get(table.values, {})
    for key, value in list(state.items()):
        if not isinstance(value, Tensor) or value.ndim == 0:
            continue
        if value.shape != (old_nnz,):
            raise ValueError(f"optimizer state {key!r} has shape {tuple(value.shape)}, "
                             f"expected ({old_nnz},) or a scalar")
        positions = previous.to(value.device)
        kept = positions >= 0
        remapped = torch.zeros(positions.shape, dtype=value.dtype, device=value.device)
        remapped[kept] = value[positions[kept]]                          # (kept,)
        state[key] = remapped
    return previous
