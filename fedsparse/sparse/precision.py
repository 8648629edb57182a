"""Value precision of a stored table (``model.value_dtype``): the codec, one place.

A table's values (a sparse table's active values, row-major; a dense table's every entry; a
mixed-dimension table's blocks and projections), in groups that share a scale (a table's rows:
``scale_groups()``), are stored as

* ``float32``: themselves (4 bytes a value);
* ``float16``: rounded to half precision (2 bytes);
* ``int8``, ``int4``, ``int2``: symmetric integer codes q in [-L, L], L = 2^(bits - 1) - 1
  (127, 7, 1), with one float16 scale per group (row), ``scale_r = max |v| over r / L`` rounded up
  to half precision, so that ``v ~ q * scale_r`` within half a step (``scale_r / 2``). Codes
  are stored offset by L (unsigned) and packed ``8 / bits`` to a byte, the first value in the
  lowest bits. (A sparse row holds few values, 3 on average at density 0.05 and d = 64, so a
  float32 scale would cost more than its codes; half precision is ample for a scale.)

The index (row counts, columns or bitmap) is stored as the table holds it; only values change.
Plain NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsparse.config import VALUE_DTYPES

_INT_BITS = {"int8": 8, "int4": 4, "int2": 2}


def levels(dtype: str) -> int:
    """L of an integer ``dtype``: codes lie in [-L, L]."""
    return 2 ** (_INT_BITS[dtype] - 1) - 1


@dataclass(frozen=True)
class StoredValues:
    """A table's values at one precision.

    Attributes
    ----------
    dtype : str
        One of :data:`VALUE_DTYPES`.
    codes : np.ndarray
        float32 or float16 values (nnz,), or uint8 packed integer codes (ceil(nnz * bits / 8),).
    scales : np.ndarray
        (n_rows,) float16 per-row scales of an integer dtype; empty for a float one.
    count : int
        nnz, the number of values.
    """

    dtype: str
    codes: np.ndarray
    scales: np.ndarray
    count: int

    @property
    def nbytes(self) -> int:
        """Bytes of the stored codes and scales."""
        return int(self.codes.nbytes + self.scales.nbytes)


def quantize(values: np.ndarray, rows: np.ndarray, n_rows: int, dtype: str) -> StoredValues:
    """``values`` (nnz,) of rows ``rows`` (nnz,) of an ``n_rows``-row table at ``dtype``.

    Raises
    ------
    ValueError
        An unknown ``dtype``, or values that are not finite.
    """
    values = np.asarray(values, dtype=np.float32)
    if dtype not in VALUE_DTYPES:
        raise ValueError(f"model.value_dtype: {dtype!r} is not one of {', '.join(VALUE_DTYPES)}")
    if not np.isfinite(values).all():
        raise ValueError("value precision: a value is not finite")
    if dtype in ("float32", "float16"):
        return StoredValues(dtype, values.astype(dtype), np.zeros(0, np.float16), values.size)
    top = levels(dtype)
    exact = np.zeros(n_rows, np.float64)
    np.maximum.at(exact, rows, np.abs(values).astype(np.float64))
    exact /= top
    scales = exact.astype(np.float16)
    low = scales < exact                                                  # round up, so no
    scales[low] = np.nextafter(scales[low], np.float16(np.inf))           # code exceeds L
    if not np.isfinite(scales).all():
        raise ValueError("value precision: a value is too large for a float16 scale")
    row_scale = scales[rows].astype(np.float32)                           # (nnz,)
    safe = np.where(row_scale > 0, row_scale, 1.0)
    codes = np.clip(np.rint(values / safe), -top, top).astype(np.int64) + top
    return StoredValues(dtype, _pack(codes, _INT_BITS[dtype]), scales, values.size)


def dequantize(stored: StoredValues, rows: np.ndarray) -> np.ndarray:
    """(nnz,) float32 values of ``stored`` (its rows ``rows`` (nnz,), as quantized)."""
    if stored.dtype in ("float32", "float16"):
        return stored.codes.astype(np.float32)
    top = levels(stored.dtype)
    codes = _unpack(stored.codes, _INT_BITS[stored.dtype], stored.count) - top
    return (codes * stored.scales[rows].astype(np.float32)).astype(np.float32)


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``codes`` (n,) below 2^bits, ``8 / bits`` to a byte, first in the lowest bits."""
    per_byte = 8 // bits
    padded = np.zeros(-(-codes.size // per_byte) * per_byte, np.uint8)
    padded[:codes.size] = codes
    grouped = padded.reshape(-1, per_byte)                                # (bytes, per_byte)
    shifts = (bits * np.arange(per_byte)).astype(np.uint8)
    return np.bitwise_or.reduce(grouped << shifts, axis=1).astype(np.uint8)


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Invert :func:`_pack`: the first ``count`` codes, int64."""
    per_byte = 8 // bits
    shifts = (bits * np.arange(per_byte)).astype(np.uint8)
    codes = (packed[:, None] >> shifts) & np.uint8(2 ** bits - 1)        # (bytes, per_byte)
    return codes.reshape(-1)[:count].astype(np.int64)
