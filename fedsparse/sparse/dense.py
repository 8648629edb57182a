"""A dense embedding table with the interface of :class:`SparseEmbeddingTable`.

Models hold two table modules and never ask which kind they are: both have a ``values``
Parameter, ``gather(rows)`` (also their ``forward``), ``to_dense()``, ``mask()``, ``nnz``,
``density``, ``memory_bytes(optimizer)`` and ``floor_bytes()``. Here every entry is active and
``values`` is the (n_rows, dim) table itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from fedsparse.sparse.mixed import MixedDimEmbeddingTable
from fedsparse.sparse.storage import SparseEmbeddingTable


class DenseEmbeddingTable(nn.Module):
    """An (n_rows, dim) table that stores every entry.

    Parameters
    ----------
    values:
        (n_rows, dim) float initial values (copied into the Parameter).

    Attributes
    ----------
    values : nn.Parameter
        (n_rows, dim) float32.
    """

    def __init__(self, values: Tensor) -> None:
        super().__init__()
        if values.ndim != 2 or min(values.shape) < 1:
            raise ValueError(f"values must be 2-D and non-empty, got shape {tuple(values.shape)}")
        self.n_rows, self.dim = values.shape
        self.values = nn.Parameter(values.detach().float().clone())

    @property
    def nnz(self) -> int:
        """Number of active entries: all of them."""
        return self.values.numel()

    @property
    def density(self) -> float:
        """1.0."""
        return 1.0

    def extra_repr(self) -> str:
        return f"n_rows={self.n_rows}, dim={self.dim}"

    def forward(self, rows: Tensor | None = None) -> Tensor:
        """``gather(rows)``, or the whole table when ``rows`` is None."""
        return self.to_dense() if rows is None else self.gather(rows)

    def gather(self, rows: Tensor) -> Tensor:
        """Vectors of ``rows`` (B,) -> (B, dim)."""
        return self.values[rows]                  # (B, dim)

    def to_dense(self) -> Tensor:
        """The (n_rows, dim) table (the Parameter itself)."""
        return self.values

    def mask(self) -> Tensor:
        """(n_rows, dim) bool, all True."""
        return torch.ones(self.n_rows, self.dim, dtype=torch.bool, device=self.values.device)

    def scale_groups(self) -> tuple[np.ndarray, int]:
        """The precision codec's groups (one scale each), its rows: (nnz,) int64 row of each
        value, in the order of ``values``, and their number."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), self.dim), self.n_rows

    def floor_bytes(self) -> int:
        """4 bytes per value: a dense table needs no index."""
        return 4 * self.nnz

    def memory_bytes(self, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Bytes of ``values`` plus, when ``optimizer`` is given, its state tensors for them."""
        held = [self.values]
        if optimizer is not None:
            state = optimizer.state.get(self.values, {})
            held += [value for value in state.values() if isinstance(value, Tensor)]
        return sum(tensor.nbytes for tensor in held)


#: Any kind of embedding table.
EmbeddingTable = DenseEmbeddingTable | SparseEmbeddingTable | MixedDimEmbeddingTable
