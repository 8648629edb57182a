"""The value-precision codec: round trips, packed sizes, bad input."""

import numpy as np
import pytest

from fedsparse.sparse.precision import dequantize, levels, quantize


def row_data(seed=0, n_rows=30, nnz=400):
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.integers(0, n_rows - 3, size=nnz))        # the last rows hold nothing
    scale = rng.uniform(0.01, 5.0, size=n_rows)[rows]             # rows of very different sizes
    return rng.normal(size=nnz).astype(np.float32) * scale.astype(np.float32), rows, n_rows


@pytest.mark.parametrize("dtype", ["int8", "int4", "int2"])
def test_each_integer_precision_round_trips_within_half_a_step_of_its_rows_scale(dtype):
    values, rows, n_rows = row_data()
    stored = quantize(values, rows, n_rows, dtype)
    top = levels(dtype)
    row_max = np.zeros(n_rows, np.float32)
    np.maximum.at(row_max, rows, np.abs(values))
    scales = stored.scales.astype(np.float64)
    assert (scales * top >= row_max).all()                         # rounded up to float16
    np.testing.assert_allclose(scales * top, row_max, rtol=2.0 ** -10)
    error = np.abs(dequantize(stored, rows) - values)
    assert (error <= stored.scales[rows].astype(np.float32) / 2 * (1 + 1e-5)).all()
    assert (stored.scales[n_rows - 3:] == 0).all()                 # empty rows: scale 0
    bits = {"int8": 8, "int4": 4, "int2": 2}[dtype]
    assert stored.codes.dtype == np.uint8 and stored.codes.size == -(-values.size * bits // 8)
    assert stored.nbytes == stored.codes.size + 2 * n_rows        # a float16 scale per row


def test_float_precisions_round_trip_within_their_rounding():
    values, rows, n_rows = row_data(seed=1)
    exact = quantize(values, rows, n_rows, "float32")
    assert np.array_equal(dequantize(exact, rows), values) and exact.nbytes == 4 * values.size
    half = quantize(values, rows, n_rows, "float16")
    np.testing.assert_allclose(dequantize(half, rows), values, rtol=2.0 ** -11)
    assert half.nbytes == 2 * values.size and half.scales.size == 0


def test_a_row_of_zeros_and_an_odd_count_decode_exactly():
    values = np.array([0.0, 0.0, 1.5, -3.5, 0.75], np.float32)     # 3.5 / 7: a float16 scale
    rows = np.array([0, 0, 1, 1, 1])
    for dtype in ("int4", "int2"):
        decoded = dequantize(quantize(values, rows, 2, dtype), rows)
        assert decoded[:2].tolist() == [0.0, 0.0] and decoded[3] == -3.5


def test_bad_precision_or_values_are_refused():
    with pytest.raises(ValueError, match="model.value_dtype: 'int3' is not one of"):
        quantize(np.ones(3), np.zeros(3, np.int64), 1, "int3")
    with pytest.raises(ValueError, match="not finite"):
        quantize(np.array([np.nan]), np.zeros(1, np.int64), 1, "int8")
