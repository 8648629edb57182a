"""Turn a memory budget in bytes into the number of active entries a sparse table can hold.

The answer is solved against the measure itself: for each candidate nnz a real
:class:`~fedsparse.sparse.storage.SparseEmbeddingTable` is built, its optimizer state is
materialised by one optimizer step on a zero gradient, and ``memory_bytes(optimizer)`` is
compared with the budget (DESIGN section 3). Memory grows with nnz and does not depend on where
the entries sit (only on how many there are; the one exception, the full table, needs no index
and is checked first), so a bracketing search over nnz finds the largest that fits. The search
interpolates between the measured ends of the bracket (memory is nearly linear in nnz, so a few
measurements suffice) and bisects whenever a step fails to halve it, so it never needs more than
about twice the measurements of a plain bisection.

The other shapes a budget sets are solved against their own measured tables the same way: a
dense table's dimension (:func:`dense_dim_for_budget`), a nested-dimensions prefix
(:func:`prefix_width_for_budget`), a mixed-dimension table's block dimensions
(:func:`mixed_dims_for_budget`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from fedsparse.errors import ConfigError
from fedsparse.sparse.dense import DenseEmbeddingTable, EmbeddingTable
from fedsparse.sparse.masks import prefix_mask
from fedsparse.sparse.mixed import MixedDimEmbeddingTable, block_dims
from fedsparse.sparse.storage import SparseEmbeddingTable

logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def spread_mask(n_rows: int, dim: int, nnz: int) -> np.ndarray:
    """An (n_rows, dim) bool mask with ``nnz`` entries, filled column by column, each row's
    columns rotated by its index.

    Entry (r, c) is active when ``((c - r) mod dim) * n_rows + r < nnz``, so every row has at
    least one active entry once ``nnz >= n_rows`` and row counts differ by at most one. The
    rotation keeps a partial mask (of two or more rows) from being a prefix of the columns,
    which a table stores without an index (``"prefix"``); a measured budget is then one that
    any mask of ``nnz`` entries can meet.
    """
    rows = np.arange(n_rows)[:, None]
    order = ((np.arange(dim)[None, :] - rows) % dim) * n_rows + rows      # (n_rows, dim)
    return order < nnz


def table_bytes(n_rows: int, dim: int, nnz: int,
                optimizer: OptimizerFactory | None = torch.optim.Adam) -> int:
    """Measured ``memory_bytes`` of an (n_rows, dim) table with ``nnz`` active entries.

    Parameters
    ----------
    n_rows, dim, nnz:
        Table shape and active count (``n_rows <= nnz <= n_rows * dim``).
    optimizer:
        Builds the optimizer whose per-value state is counted (called with the table's
        parameters); None counts values and index only.
    """
    return _measured_bytes(spread_mask(n_rows, dim, nnz), optimizer)


def _measured_bytes(mask: np.ndarray, optimizer: OptimizerFactory | None) -> int:
    """``memory_bytes`` of a table with ``mask``, with the state of one ``optimizer`` step."""
    return _held_bytes(SparseEmbeddingTable.from_mask(mask), optimizer)


def _held_bytes(table: EmbeddingTable, optimizer: OptimizerFactory | None) -> int:
    """``table.memory_bytes`` with the state of one ``optimizer`` step (None: without)."""
    if optimizer is None:
        return table.memory_bytes()
    built = optimizer(table.parameters())
    table.values.grad = torch.zeros_like(table.values)
    built.step()
    return table.memory_bytes(built)


def dense_bytes(n_rows: int, dim: int,
                optimizer: OptimizerFactory | None = torch.optim.Adam) -> int:
    """Measured ``memory_bytes`` of a dense (n_rows, dim) table with its optimizer state."""
    return _held_bytes(DenseEmbeddingTable(torch.zeros(n_rows, dim)), optimizer)


def dense_dim_for_budget(table_rows: Sequence[int], max_dim: int, budget_bytes: int,
                         optimizer: OptimizerFactory | None = torch.optim.Adam) -> int:
    """The largest dimension d <= ``max_dim`` whose dense tables (one of d columns per entry of
    ``table_rows``, e.g. users and items) fit in ``budget_bytes`` together, each measured as
    :func:`dense_bytes` measures.

    Raises
    ------
    ConfigError
        When even d = 1 does not fit; the message gives the bytes d = 1 needs.
    """
    def needed(dim: int) -> int:
        return sum(dense_bytes(n_rows, dim, optimizer) for n_rows in table_rows)

    if needed(1) > budget_bytes:
        raise ConfigError(f"a budget of {budget_bytes} bytes cannot hold dimension 1 (the "
                          f"smallest budget that works is {needed(1)} bytes)")
    low, high = 1, max_dim + 1              # invariant: low fits, high does not (or is past it)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if needed(middle) <= budget_bytes else (low, middle)
    return low


def prefix_width_for_budget(n_rows: int, dim: int, budget_bytes: int,
                            optimizer: OptimizerFactory | None = torch.optim.Adam) -> int:
    """The largest width k whose (n_rows, dim) table of every row's first k columns (the
    ``"prefix"`` layout: a dense (n_rows, k) table) fits in ``budget_bytes`` with its optimizer
    state, measured as :func:`table_bytes` measures.

    Raises
    ------
    ConfigError
        When even one column does not fit.
    """
    def fits(width: int) -> bool:
        return _measured_bytes(prefix_mask(n_rows, dim, width), optimizer) <= budget_bytes

    if not fits(1):
        needed = _measured_bytes(prefix_mask(n_rows, dim, 1), optimizer)
        raise ConfigError(f"a budget of {budget_bytes} bytes cannot hold one dimension of a "
                          f"{n_rows} x {dim} table (that needs {needed} bytes)")
    low, high = 1, dim + 1                  # invariant: low fits, high does not (or is past dim)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def nnz_for_budget(n_rows: int, dim: int, budget_bytes: int,
                   optimizer: OptimizerFactory | None = torch.optim.Adam) -> int:
    """The largest nnz whose measured table memory fits in ``budget_bytes``.

    Parameters
    ----------
    n_rows, dim:
        Table shape.
    budget_bytes:
        Memory available for the table's values, index and optimizer state.
    optimizer:
        As in :func:`table_bytes` (default: Adam, two state values per active value).

    Returns
    -------
    int
        nnz in ``[n_rows, n_rows * dim]``: at least one active entry per row.

    Raises
    ------
    ConfigError
        When even one active entry per row does not fit.
    """
    low, high = n_rows, n_rows * dim
    low_bytes = table_bytes(n_rows, dim, low, optimizer)
    if low_bytes > budget_bytes:
        raise ConfigError(f"a budget of {budget_bytes} bytes cannot hold one active entry per row "
                          f"of a {n_rows} x {dim} table (that needs {low_bytes} bytes)")
    high_bytes = table_bytes(n_rows, dim, high, optimizer)
    if high_bytes <= budget_bytes:
        return high
    bisect = False
    while high - low > 1:    # invariant: low fits, high does not
        if bisect:
            guess = (low + high) // 2
        else:
            guess = low + (budget_bytes - low_bytes) * (high - low) // (high_bytes - low_bytes)
        guess = min(max(guess, low + 1), high - 1)
        guess_bytes = table_bytes(n_rows, dim, guess, optimizer)
        width = high - low
        if guess_bytes <= budget_bytes:
            low, low_bytes = guess, guess_bytes
        else:
            high, high_bytes = guess, guess_bytes
        bisect = 2 * (high - low) > width
    logger.debug("budget %d bytes -> nnz %d of %d x %d", budget_bytes, low, n_rows, dim)
    return low


def density_for_budget(n_rows: int, dim: int, budget_bytes: int,
                       optimizer: OptimizerFactory | None = torch.optim.Adam) -> float:
    """``nnz_for_budget(...) / (n_rows * dim)``: the largest density that fits the budget."""
    return nnz_for_budget(n_rows, dim, budget_bytes, optimizer) / (n_rows * dim)


def mixed_bytes(frequency: np.ndarray, dim: int, dims: np.ndarray,
                optimizer: OptimizerFactory | None = torch.optim.Adam) -> int:
    """Measured ``memory_bytes`` of a table with block dimensions ``dims``, with the state of
    one ``optimizer`` step (None: without)."""
    return _held_bytes(MixedDimEmbeddingTable(frequency, dim, dims), optimizer)


def mixed_dims_for_budget(frequency: np.ndarray, dim: int, blocks: int, temperature: float,
                          budget_bytes: int,
                          optimizer: OptimizerFactory | None = torch.optim.Adam) -> np.ndarray:
    """The block dimensions of the largest power-law scale whose table (measured
    ``memory_bytes`` with one ``optimizer`` step) fits ``budget_bytes``.

    Raises
    ------
    ConfigError
        When every block at dimension 1 does not fit; the message gives the bytes that needs.
    """
    def measured(dims: np.ndarray) -> int:
        return mixed_bytes(frequency, dim, dims, optimizer)

    smallest = measured(np.ones(blocks, dtype=np.int64))
    if smallest > budget_bytes:
        raise ConfigError(f"a budget of {budget_bytes} bytes cannot hold dimension 1 in every "
                          f"block (that needs {smallest} bytes)")
    low, high = 0.0, float(dim) * 2.0 ** 20     # scale: every block fits at low, none past high
    best = np.ones(blocks, dtype=np.int64)
    for _ in range(48):
        middle = (low + high) / 2
        dims = block_dims(frequency, blocks, dim, temperature, middle)
        if measured(dims) <= budget_bytes:
            low, best = middle, dims
        else:
            high = middle
        if (block_dims(frequency, blocks, dim, temperature, high) == best).all():
            break
    return best
