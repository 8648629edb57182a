"""Mixed-dimension embeddings (Ginart et al., "Mixed Dimension Embeddings with Application to
Memory-Efficient Recommendation Systems", 2019): popular rows get more dimensions.

A table's rows are ranked by training frequency (most frequent first, ties by id) and cut into
``blocks`` blocks of (nearly) equal row counts. Block b holds an (n_b, d_b) table E_b and, when
d_b < d, a (d_b, d) projection P_b to the common dimension d; row r of block b is
``E_b[r'] @ P_b``. Block dimensions follow the power law ``d_b = round(lambda * p_b^alpha)``
(clamped to [1, d]), p_b the block's mean frequency per row (plus one) over the first block's,
alpha the temperature (0: every block alike, a dense model at a smaller dimension); lambda is
the largest whose measured memory fits the budget
(:func:`~fedsparse.sparse.budget.mixed_dims_for_budget`).

All blocks' E_b and P_b live in one flat Parameter ``values`` (E_0, P_0, E_1, P_1, ...), so
an optimizer's state, :meth:`~MixedDimEmbeddingTable.memory_bytes` and the value precision codec
treat it as any other table; ``position`` (n_rows,) holds each row's place in the ranking.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class MixedDimEmbeddingTable(nn.Module):
    """An (n_rows, dim) table whose row blocks have their own dimensions and projections.

    Parameters
    ----------
    frequency:
        (n_rows,) training frequency of each row (its ranking).
    dim:
        The common dimension d.
    block_dims:
        (K,) each block's dimension d_b in [1, d], blocks in ranking order.
    init_std:
        Std of E_b's normal initialisation (P_b is normal with variance 1 / d_b, so a row's
        entries start with about ``init_std``'s spread).
    generator:
        Seeded generator for the initialisation.
    """

    def __init__(self, frequency: np.ndarray, dim: int, block_dims: np.ndarray, *,
                 init_std: float = 0.1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.n_rows, self.dim = len(frequency), dim
        self.block_dims = np.asarray(block_dims, dtype=np.int64)
        if self.block_dims.min() < 1 or self.block_dims.max() > dim:
            raise ValueError(f"block dimensions must be in [1, {dim}], got {self.block_dims}")
        order = ranking(frequency)
        self.block_rows = block_sizes(self.n_rows, len(self.block_dims))
        position = np.empty(self.n_rows, dtype=np.min_scalar_type(self.n_rows))
        position[order] = np.arange(self.n_rows)
        self.register_buffer("position", torch.from_numpy(position))
        self._starts = np.concatenate([[0], np.cumsum(self.block_rows)])
        parts = []
        for rows, width in zip(self.block_rows, self.block_dims):
            parts.append(torch.randn(int(rows) * int(width), generator=generator) * init_std)
            if width < dim:
                parts.append(torch.randn(int(width) * dim, generator=generator) / width ** 0.5)
        self.values = nn.Parameter(torch.cat(parts))

    @classmethod
    def from_storage(cls, position: np.ndarray, dim: int, block_dims: np.ndarray,
                     values: np.ndarray) -> MixedDimEmbeddingTable:
        """Rebuild a table from its ``position`` (n_rows,) ranks, ``block_dims`` and flat
        ``values`` (as :meth:`layout_arrays` and ``values`` hold them).

        Raises
        ------
        ValueError
            Arrays that do not describe one table.
        """
        position = np.asarray(position)
        if not np.array_equal(np.sort(position), np.arange(len(position))):
            raise ValueError("position must be a permutation of the rows")
        table = cls(-position.astype(np.float64), dim, block_dims)        # ranks as frequency
        if table.values.numel() != np.asarray(values).size:
            raise ValueError(f"{np.asarray(values).size} values do not fill blocks of "
                             f"{table.block_rows.tolist()} rows x {table.block_dims.tolist()}")
        table.values.data = torch.from_numpy(np.asarray(values, np.float32).copy())
        return table

    def layout_arrays(self) -> dict[str, np.ndarray]:
        """What, besides ``values``, rebuilds the table (:meth:`from_storage`)."""
        return {"position": self.position.numpy().copy(), "block_dims": self.block_dims.copy()}

    def _blocks(self) -> list[tuple[Tensor, Tensor | None]]:
        """Views (E_b (n_b, d_b), P_b (d_b, d) or None) into ``values``."""
        blocks, offset = [], 0
        for rows, width in zip(self.block_rows.tolist(), self.block_dims.tolist()):
            table = self.values[offset:offset + rows * width].view(rows, width)
            offset += rows * width
            projection = None
            if width < self.dim:
                projection = self.values[offset:offset + width * self.dim].view(width, self.dim)
                offset += width * self.dim
            blocks.append((table, projection))
        return blocks

    @property
    def nnz(self) -> int:
        """Number of stored values (all blocks and projections)."""
        return self.values.numel()

    @property
    def density(self) -> float:
        """Stored values over the n_rows * dim of a dense table."""
        return self.nnz / (self.n_rows * self.dim)

    def extra_repr(self) -> str:
        return (f"n_rows={self.n_rows}, dim={self.dim}, block_rows={self.block_rows.tolist()}, "
                f"block_dims={self.block_dims.tolist()}")

    def forward(self, rows: Tensor | None = None) -> Tensor:
        """``gather(rows)``, or the whole table when ``rows`` is None."""
        return self.to_dense() if rows is None else self.gather(rows)

    def gather(self, rows: Tensor) -> Tensor:
        """Vectors of ``rows`` (B,) -> (B, dim)."""
        position = self.position[rows].long()                              # (B,)
        block = torch.bucketize(position, torch.from_numpy(self._starts[1:]), right=True)
        out = self.values.new_zeros(len(rows), self.dim)
        for index, (table, projection) in enumerate(self._blocks()):
            chosen = torch.nonzero(block == index).squeeze(1)              # (B_b,)
            if chosen.numel():
                local = table[position[chosen] - int(self._starts[index])]  # (B_b, d_b)
                out = out.index_copy(0, chosen, local if projection is None
                                     else local @ projection)
        return out

    def to_dense(self) -> Tensor:
        """The (n_rows, dim) table: every block projected, rows in id order."""
        ranked = torch.cat([table if projection is None else table @ projection
                            for table, projection in self._blocks()])      # (n_rows, d) ranked
        return ranked[self.position.long()]

    def mask(self) -> Tensor:
        """(n_rows, dim) bool, all True: every entry of the dense view is defined."""
        return torch.ones(self.n_rows, self.dim, dtype=torch.bool, device=self.values.device)

    def scale_groups(self) -> tuple[np.ndarray, int]:
        """The precision codec's groups (one scale each): every row of each E_b and each P_b
        (:func:`scale_groups`)."""
        return scale_groups(self.block_rows, self.block_dims, self.dim)

    def floor_bytes(self) -> int:
        """4 bytes per stored value."""
        return 4 * self.nnz

    def memory_bytes(self, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Bytes of ``values`` and ``position`` plus, when ``optimizer`` is given, its state
        tensors for ``values``."""
        held = [self.values, self.position]
        if optimizer is not None:
            state = optimizer.state.get(self.values, {})
            held += [value for value in state.values() if isinstance(value, Tensor)]
        return sum(tensor.nbytes for tensor in held)


def block_sizes(n_rows: int, blocks: int) -> np.ndarray:
    """(blocks,) int64 rows of each block: ``n_rows`` cut into nearly equal parts, the larger
    first."""
    return np.array([len(part) for part in np.array_split(np.arange(n_rows), blocks)],
                    dtype=np.int64)


def scale_groups(block_rows: np.ndarray, block_dims: np.ndarray,
                 dim: int) -> tuple[np.ndarray, int]:
    """The (nnz,) int64 group of each value of a mixed table's ``values`` (each row of each
    E_b, then of P_b, is one group) and the number of groups."""
    groups, next_group = [], 0
    for rows, width in zip(np.asarray(block_rows).tolist(), np.asarray(block_dims).tolist()):
        groups.append(np.repeat(np.arange(next_group, next_group + rows), width))
        next_group += rows
        if width < dim:
            groups.append(np.repeat(np.arange(next_group, next_group + width), dim))
            next_group += width
    return np.concatenate(groups).astype(np.int64), next_group


def ranking(frequency: np.ndarray) -> np.ndarray:
    """Row ids, most frequent first (ties by ascending id)."""
    return np.lexsort((np.arange(len(frequency)), -np.asarray(frequency)))


def block_dims(frequency: np.ndarray, blocks: int, dim: int, temperature: float,
               scale: float) -> np.ndarray:
    """(blocks,) ``clamp(round(scale * p_b^temperature), 1, dim)``, p_b the mean frequency
    (plus one) per row of block b over the first block's."""
    ranked = np.asarray(frequency, dtype=np.float64)[ranking(frequency)] + 1.0
    popularity = np.array([part.mean() for part in np.array_split(ranked, blocks)])
    return np.clip(np.rint(scale * (popularity / popularity[0]) ** temperature), 1,
                   dim).astype(np.int64)
