"""Sparse embedding tables that hold only their active values and a compact index.

A table of shape (n_rows, dim) at density p keeps a 1-D float32 Parameter ``values`` of its
nnz active entries, stored row by row in ascending column order, and one of three indexes,
whichever takes fewer bytes for the mask at hand:

* ``"csr"``: ``row_counts`` (n_rows,) active entries per row and ``columns`` (nnz,) in the
  smallest integer dtype that holds ``dim - 1`` (uint8 up to dim 256, then int16, then int32);
* ``"bitmap"``: the same ``row_counts`` and ``bitmap`` (n_rows, ceil(dim / 8)) uint8, the mask packed
  as ``np.packbits(mask, axis=1)`` packs it (most significant bit first);
* ``"prefix"``: nothing but the width k, when every row's active entries are its first k
  columns (a dense (n_rows, k) table inside the (n_rows, dim) shape: the full table, or a
  nested-dimensions tier).

``row_counts`` (``"csr"``, ``"bitmap"``) has the smallest unsigned dtype that holds ``dim``
(uint8 up to dim 255); a lookup derives the rows' offsets into ``values`` from their
cumulative sum, so no (n_rows + 1,) int32 row pointer is held. Because the order of
``values`` does not depend on the layout, switching layouts never reorders values.
``memory_bytes()`` sums the ``nbytes`` of the tensors actually held (DESIGN section 3: "Sparse
storage is real").
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | Tensor


def _as_numpy(array: ArrayLike) -> np.ndarray:
    if isinstance(array, Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def column_dtype(dim: int) -> np.dtype:
    """The smallest integer dtype that holds every column index of a ``dim``-wide table."""
    if dim <= 2**8:
        return np.dtype(np.uint8)
    if dim <= 2**15:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def _unpack_bits(packed: Tensor, dim: int) -> Tensor:
    """Invert ``np.packbits(mask, axis=-1)``: (..., ceil(dim / 8)) uint8 -> (..., dim) bool."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1        # (..., ceil(dim / 8), 8)
    return bits.flatten(-2)[..., :dim].bool()           # (..., dim)


class SparseEmbeddingTable(nn.Module):
    """An (n_rows, dim) embedding table that stores only its active entries.

    A new table is empty (nnz = 0); build populated ones with :meth:`from_mask` or
    :meth:`from_dense`, and change the mask with :meth:`replace_mask`.

    Parameters
    ----------
    n_rows, dim:
        Table shape.

    Attributes
    ----------
    values : nn.Parameter
        (nnz,) float32 active values, row by row, ascending column within a row.
    row_counts : Tensor
        (n_rows,) number of active entries of each row (uint8 up to dim 255, then wider).
    columns : Tensor or None
        (nnz,) column of each value in the ``"csr"`` layout, None in the ``"bitmap"`` layout.
    bitmap : Tensor or None
        (n_rows, ceil(dim / 8)) uint8 packed mask in the ``"bitmap"`` layout, else None.
    prefix_width : int or None
        k of the ``"prefix"`` layout (``row_counts`` is then None too), else None.
    """

    def __init__(self, n_rows: int, dim: int) -> None:
        super().__init__()
        if n_rows < 1 or dim < 1:
            raise ValueError(f"a table needs n_rows >= 1 and dim >= 1, got ({n_rows}, {dim})")
        self.n_rows, self.dim = n_rows, dim
        self.values = nn.Parameter(torch.zeros(0))
        self.register_buffer("row_counts",
                             torch.from_numpy(np.zeros(n_rows, dtype=np.min_scalar_type(dim))))
        self.register_buffer("columns", torch.from_numpy(np.zeros(0, dtype=column_dtype(dim))))
        self.register_buffer("bitmap", None)
        self.prefix_width: int | None = None

    @classmethod
    def from_mask(cls, mask: ArrayLike, values: ArrayLike | None = None) -> SparseEmbeddingTable:
        """A table whose active entries are ``mask``'s True entries.

        Parameters
        ----------
        mask:
            (n_rows, dim) bool.
        values:
            Optional (n_rows, dim) dense array; the table keeps its entries at active
            positions. Default: zeros.
        """
        mask = _as_numpy(mask)
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D (n_rows, dim), got shape {mask.shape}")
        table = cls(*mask.shape)
        table.replace_mask(mask, values)
        return table

    @classmethod
    def from_dense(cls, dense: ArrayLike, mask: ArrayLike) -> SparseEmbeddingTable:
        """A table holding ``dense``'s (n_rows, dim) entries where ``mask`` is True."""
        return cls.from_mask(mask, dense)

    @classmethod
    def from_storage(cls, n_rows: int, dim: int, values: np.ndarray, row_counts: np.ndarray,
                     index: np.ndarray) -> SparseEmbeddingTable:
        """Rebuild a table from the arrays :meth:`storage_arrays` returns (e.g. received over
        the network), checking that they describe a valid table.

        Parameters
        ----------
        n_rows, dim:
            Table shape.
        values:
            (nnz,) float32.
        row_counts:
            (n_rows,) unsigned counts of active entries per row.
        index:
            (nnz,) column ids (``"csr"``), or (n_rows, ceil(dim / 8)) uint8 packed mask
            (``"bitmap"``), or (1,) the width with an empty ``row_counts`` (``"prefix"``), as
            the sender's layout was.

        Raises
        ------
        ValueError
            One line naming what does not fit.
        """
        values, row_counts, index = (np.asarray(a) for a in (values, row_counts, index))
        if values.dtype != np.float32 or values.ndim != 1:
            raise ValueError(f"values must be 1-D float32, got {values.dtype} {values.shape}")
        if row_counts.size == 0 and index.shape == (1,) and index.dtype.kind in "iu":
            width = int(index[0])
            if not 0 <= width <= dim or values.size != n_rows * width:
                raise ValueError(f"a prefix of width {width} does not match {values.size} "
                                 f"values of a {n_rows} x {dim} table")
            mask = np.zeros((n_rows, dim), dtype=bool)
            mask[:, :width] = True
            return cls.from_mask(mask, cls._dense_values(mask, values))
        if row_counts.shape != (n_rows,) or row_counts.dtype.kind != "u":
            raise ValueError(f"row_counts must be unsigned ({n_rows},), got {row_counts.dtype} "
                             f"{row_counts.shape}")
        if int(row_counts.sum()) != values.size or (row_counts > dim).any():
            raise ValueError("row_counts do not match the values")
        bitmap_shape = (n_rows, -(-dim // 8))
        if index.shape == bitmap_shape and index.dtype == np.uint8 and index.ndim == 2:
            bits = np.unpackbits(index, axis=1)                          # (n_rows, 8k)
            mask = bits[:, :dim].astype(bool)
            if (mask.sum(axis=1) != row_counts).any() or bits[:, dim:].any():
                raise ValueError("bitmap does not match row_counts")
        elif index.ndim == 1 and index.size == values.size and index.dtype.kind in "iu":
            rows = np.repeat(np.arange(n_rows), row_counts.astype(np.int64))
            if index.size and (index.min() < 0 or index.max() >= dim):
                raise ValueError(f"column ids must be in [0, {dim})")
            keys = rows * dim + index.astype(np.int64)
            if (np.diff(keys) <= 0).any():
                raise ValueError("column ids must ascend within each row")
            mask = np.zeros((n_rows, dim), dtype=bool)
            mask[rows, index] = True
        else:
            raise ValueError(f"index must be (nnz,) column ids or a {bitmap_shape} uint8 bitmap, "
                             f"got {index.dtype} {index.shape}")
        table = cls(n_rows, dim)
        table._store_index(mask, np.nonzero(mask)[1])
        table.values.data = torch.from_numpy(values.copy())
        return table

    @staticmethod
    def _dense_values(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
        """(n_rows, dim) float32 with ``values`` (nnz,) at ``mask``'s entries, row-major."""
        dense = np.zeros(mask.shape, dtype=np.float32)
        dense[mask] = values
        return dense

    def storage_arrays(self) -> dict[str, np.ndarray]:
        """Copies of the held arrays: ``values``, ``row_counts`` and ``index`` (column ids or
        bitmap; for a prefix, no counts and the width), what :meth:`from_storage` rebuilds the
        table from."""
        values = self.values.detach().cpu().numpy().copy()
        if self.prefix_width is not None:
            return {"values": values, "row_counts": np.zeros(0, np.min_scalar_type(self.dim)),
                    "index": np.array([self.prefix_width], np.min_scalar_type(self.dim))}
        index = self.columns if self.columns is not None else self.bitmap
        return {"values": values, "row_counts": self.row_counts.cpu().numpy().copy(),
                "index": index.cpu().numpy().copy()}

    @property
    def nnz(self) -> int:
        """Number of active entries."""
        return self.values.numel()

    @property
    def density(self) -> float:
        """Fraction of the n_rows * dim entries that are active."""
        return self.nnz / (self.n_rows * self.dim)

    @property
    def index_layout(self) -> str:
        """``"csr"``, ``"bitmap"`` or ``"prefix"``."""
        if self.prefix_width is not None:
            return "prefix"
        return "csr" if self.columns is not None else "bitmap"

    def extra_repr(self) -> str:
        return (f"n_rows={self.n_rows}, dim={self.dim}, nnz={self.nnz}, "
                f"layout={self.index_layout}")

    def replace_mask(self, new_mask: ArrayLike, new_values: ArrayLike | None = None) -> Tensor:
        """Rebuild the storage for ``new_mask``, choosing the smaller index layout.

        ``values`` stays the same Parameter object (its data and length change and its
        ``grad`` is dropped), so an optimizer keeps referring to it; per-value optimizer
        state must be remapped by the caller with the returned positions.

        Parameters
        ----------
        new_mask:
            (n_rows, dim) bool.
        new_values:
            Optional (n_rows, dim) dense array to take the new active values from. Default:
            entries active before and after keep their value, newly active entries are 0.

        Returns
        -------
        Tensor
            (new nnz,) int64: for each new storage position, the old storage position of the
            same entry, or -1 for a newly active entry.
        """
        mask = _as_numpy(new_mask)
        if mask.shape != (self.n_rows, self.dim) or mask.dtype != np.bool_:
            raise ValueError(f"mask must be bool of shape {(self.n_rows, self.dim)}, "
                             f"got {mask.dtype} {mask.shape}")
        rows, cols = np.nonzero(mask)                    # row-major: the storage order
        previous = self._previous_positions(torch.from_numpy(rows * self.dim + cols))
        if new_values is None:
            values = torch.zeros(len(rows), dtype=torch.float32)
            kept = previous >= 0
            values[kept] = self.values.detach().cpu()[previous[kept]]
        else:
            dense = _as_numpy(new_values)
            if dense.shape != mask.shape:
                raise ValueError(f"values must have shape {mask.shape}, got {dense.shape}")
            values = torch.from_numpy(dense[rows, cols].astype(np.float32))
        self._store_index(mask, cols)
        self.values.data = values.to(self.values.device)
        self.values.grad = None
        logger.debug("sparse table %s", self.extra_repr())
        return previous

    def _previous_positions(self, new_keys: Tensor) -> Tensor:
        """For each (new nnz,) key ``row * dim + col``, its current storage position or -1."""
        old_rows, old_cols = self.active_coordinates()
        old_keys = (old_rows * self.dim + old_cols).cpu()             # sorted ascending
        if old_keys.numel() == 0:
            return torch.full_like(new_keys, -1)
        slot = torch.searchsorted(old_keys, new_keys).clamp_(max=old_keys.numel() - 1)
        return torch.where(old_keys[slot] == new_keys, slot, -1)

    def _store_index(self, mask: np.ndarray, cols: np.ndarray) -> None:
        counts = mask.sum(axis=1).astype(np.min_scalar_type(self.dim))
        width = int(counts[0])
        if (counts == width).all() and mask[:, :width].all():       # every row: columns 0..k-1
            self.prefix_width = width
            self.row_counts = self.columns = self.bitmap = None
            return
        self.prefix_width = None
        columns = cols.astype(column_dtype(self.dim))
        bitmap = np.packbits(mask, axis=1)
        use_csr = columns.nbytes <= bitmap.nbytes
        device = self.values.device
        self.row_counts = torch.from_numpy(counts).to(device)
        self.columns = torch.from_numpy(columns).to(device) if use_csr else None
        self.bitmap = None if use_csr else torch.from_numpy(bitmap).to(device)

    def _all_counts(self) -> Tensor:
        """(n_rows,) int64 active entries per row."""
        if self.prefix_width is not None:
            return torch.full((self.n_rows,), self.prefix_width, dtype=torch.long,
                              device=self.values.device)
        return self.row_counts.long()

    def forward(self, rows: Tensor | None = None) -> Tensor:
        """``gather(rows)``, or the whole table (``to_dense()``) when ``rows`` is None.

        Modules that should be observable (forward hooks see the rows and the dense output)
        read the table through this call.
        """
        return self.to_dense() if rows is None else self.gather(rows)

    def _row_positions(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """The storage positions (T,) int64 of the active entries of ``rows`` (B,) int64, row
        by row in ascending column, and each row's count (B,) int64 (not for a prefix)."""
        all_counts = self._all_counts()                                 # (n_rows,)
        starts = (torch.cumsum(all_counts, 0) - all_counts)[rows]        # (B,)
        counts = all_counts[rows]                                       # (B,)
        total = int(counts.sum())
        shift = starts - (torch.cumsum(counts, 0) - counts)             # (B,)
        positions = (torch.arange(total, device=rows.device)
                     + shift.repeat_interleave(counts, output_size=total))   # (T,)
        return positions, counts

    def _row_entries(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The active entries of ``rows`` (B,): for each, its position in the batch, its
        column and its storage position, each (T,) int64, row by row in ascending column."""
        rows = rows.long()
        if self.prefix_width is not None:
            width = self.prefix_width
            batch = torch.arange(len(rows), device=rows.device).repeat_interleave(width)  # (T,)
            cols = torch.arange(width, device=rows.device).repeat(len(rows))             # (T,)
            return batch, cols, rows[batch] * width + cols
        positions, counts = self._row_positions(rows)                   # (T,), (B,)
        if self.columns is not None:
            batch = torch.arange(len(rows), device=rows.device).repeat_interleave(
                counts, output_size=len(positions))                     # (T,)
            cols = self.columns[positions].long()                       # (T,)
        else:
            row_bits = _unpack_bits(self.bitmap[rows], self.dim)        # (B, dim)
            batch, cols = row_bits.nonzero().unbind(1)                  # (T,), (T,)
        return batch, cols, positions

    def gather(self, rows: Tensor) -> Tensor:
        """Dense vectors of ``rows`` (B,) -> (B, dim), zero at inactive entries.

        Differentiable with respect to ``values``: only the active values of the gathered rows
        receive gradient (accumulated over repeated rows; ``index_select``'s backward adds them
        with ``index_add_``, faster than indexing's). In the bitmap layout the rows' unpacked
        bits place the values (``masked_scatter`` fills the True entries in row-major order,
        the order of ``values``), 1.4 to 2 times as fast as listing the entries first.
        """
        out = torch.zeros(len(rows), self.dim, dtype=self.values.dtype, device=self.values.device)
        if self.bitmap is not None:
            rows = rows.long()
            positions, _ = self._row_positions(rows)                    # (T,)
            row_bits = _unpack_bits(self.bitmap[rows], self.dim)        # (B, dim)
            return out.masked_scatter(row_bits, self.values.index_select(0, positions))
        batch, cols, positions = self._row_entries(rows)                # (T,) each
        return out.index_put((batch, cols), self.values.index_select(0, positions))

    def row_mask(self, rows: Tensor) -> Tensor:
        """(B, dim) bool, True at the active entries of ``rows`` (B,)."""
        if self.bitmap is not None:
            return _unpack_bits(self.bitmap[rows.long()], self.dim)     # (B, dim)
        batch, cols, _ = self._row_entries(rows)                        # (T,) each
        out = torch.zeros(len(rows), self.dim, dtype=torch.bool, device=self.values.device)
        out[batch, cols] = True
        return out

    def row_entries(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Flat ids ``row * dim + col`` (T,) and values (T,) of the active entries of ``rows``
        (B,), row by row in ascending column (sorted when ``rows`` is)."""
        batch, cols, positions = self._row_entries(rows)                # (T,) each
        return rows.long()[batch] * self.dim + cols, self.values.detach()[positions]

    def to_dense(self) -> Tensor:
        """The whole table as (n_rows, dim), differentiable with respect to ``values``."""
        return self.gather(torch.arange(self.n_rows, device=self.values.device))

    def mask(self) -> Tensor:
        """(n_rows, dim) bool, True at active entries."""
        if self.bitmap is not None:
            return _unpack_bits(self.bitmap, self.dim)
        if self.prefix_width is not None:
            columns = torch.arange(self.dim, device=self.values.device)
            return (columns < self.prefix_width).expand(self.n_rows, self.dim).clone()
        out = torch.zeros(self.n_rows, self.dim, dtype=torch.bool, device=self.values.device)
        out[self.active_coordinates()] = True
        return out

    def active_coordinates(self) -> tuple[Tensor, Tensor]:
        """(rows, cols), each (nnz,) int64, of the active entries in the order of ``values``."""
        if self.columns is None:
            rows, cols = self.mask().nonzero().unbind(1)
            return rows, cols
        counts = self._all_counts()                                     # (n_rows,)
        rows = torch.arange(self.n_rows, device=counts.device).repeat_interleave(
            counts, output_size=self.nnz)                               # (nnz,)
        return rows, self.columns.long()

    def scale_groups(self) -> tuple[np.ndarray, int]:
        """The precision codec's groups (one scale each), its rows: (nnz,) int64 row of each
        value, in the order of ``values``, and their number."""
        return self.active_coordinates()[0].numpy().astype(np.int64), self.n_rows

    def floor_bytes(self) -> int:
        """The reference floor that :meth:`memory_bytes` is judged against: 4 bytes per active
        value plus the smaller bare index (column ids or bitmap, no per-row counts; none for a
        prefix)."""
        if self.prefix_width is not None:
            return 4 * self.nnz
        columns = self.nnz * column_dtype(self.dim).itemsize
        bitmap = self.n_rows * -(-self.dim // 8)
        return 4 * self.nnz + min(columns, bitmap)

    def memory_bytes(self, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Bytes of the tensors this table holds, summed from their ``nbytes``.

        Counts ``values``, the index tensors of the current layout and, when ``optimizer`` is
        given, every tensor in ``optimizer.state[self.values]`` (empty until its first step).
        Gradients are not counted.
        """
        held = [self.values, *(buffer for buffer in self.buffers(recurse=False))]
        if optimizer is not None:
            state = optimizer.state.get(self.values, {})
            held += [value for value in state.values() if isinstance(value, Tensor)]
        return sum(tensor.nbytes for tensor in held)
