import numpy as np
import pytest
import torch

from fedsparse.sparse import SparseEmbeddingTable, spread_mask


def random_table(n_rows: int, dim: int, density: float, seed: int):
    """A table from a seeded random mask with row 0 holding one entry and row 1 none."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_rows, dim)) < density
    mask[0] = False
    mask[0, rng.integers(dim)] = True
    mask[1] = False
    dense = rng.standard_normal((n_rows, dim)).astype(np.float32)
    return SparseEmbeddingTable.from_dense(dense, mask), mask, dense


SHAPES = [  # (n_rows, dim, density, layout the mask should get)
    (50, 8, 0.3, "bitmap"),
    (37, 64, 0.05, "csr"),
    (37, 64, 0.6, "bitmap"),
    (20, 300, 0.03, "csr"),      # dim > 256: int16 columns
    (15, 300, 0.9, "bitmap"),
    (9, 1, 0.5, "csr"),
]


@pytest.mark.parametrize("n_rows, dim, density, layout", SHAPES)
def test_gather_matches_dense(n_rows, dim, density, layout):
    table, mask, dense = random_table(n_rows, dim, density, seed=n_rows * dim)
    assert table.index_layout == layout
    assert table.nnz == mask.sum() and table.density == pytest.approx(mask.mean())
    assert table.values.dtype == torch.float32 and table.values.shape == (mask.sum(),)
    np.testing.assert_array_equal(table.mask().numpy(), mask)
    expected = torch.from_numpy(dense * mask)
    torch.testing.assert_close(table.to_dense().detach(), expected)
    rows = torch.randint(n_rows, (40,), generator=torch.Generator().manual_seed(dim))
    rows[:2] = torch.tensor([0, 1])
    torch.testing.assert_close(table.gather(rows).detach(), expected[rows])
    np.testing.assert_array_equal(table.row_mask(rows).numpy(), mask[rows.numpy()])
    # The gradient reaches the active values of the gathered rows, summed over repeats.
    weights = torch.randn(len(rows), dim, generator=torch.Generator().manual_seed(n_rows))
    (table.gather(rows) * weights).sum().backward()
    dense_grad = torch.zeros(n_rows, dim).index_add_(0, rows, weights)          # (n_rows, dim)
    torch.testing.assert_close(table.values.grad, dense_grad[torch.from_numpy(mask)])
    row_idx, col_idx = table.active_coordinates()
    assert mask[row_idx.numpy(), col_idx.numpy()].all()
    torch.testing.assert_close(table.values.detach(), torch.from_numpy(dense[row_idx, col_idx]))


def test_column_dtype_grows_with_dim():
    for dim, dtype in [(64, torch.uint8), (256, torch.uint8), (300, torch.int16),
                       (40000, torch.int32)]:
        table = SparseEmbeddingTable.from_mask(spread_mask(3, dim, 3))
        assert table.index_layout == "csr" and table.columns.dtype == dtype
        assert table.row_counts.dtype == (torch.uint8 if dim < 256 else torch.uint16)


@pytest.mark.parametrize("density", [0.05, 0.6])
def test_gradient_reaches_only_gathered_rows(density):
    table, mask, _ = random_table(30, 64, density, seed=7)
    rows = torch.tensor([2, 5, 5, 9, 2, 2, 0])
    table.gather(rows).sum().backward()
    value_rows, _ = table.active_coordinates()
    times_gathered = torch.bincount(rows, minlength=30).float()
    torch.testing.assert_close(table.values.grad, times_gathered[value_rows])
    assert set(value_rows[table.values.grad != 0].tolist()) == {0, 2, 5, 9}


def held_tensors(table, optimizer=None):
    index = [table.row_counts, table.columns if table.index_layout == "csr" else table.bitmap]
    state = list(optimizer.state[table.values].values()) if optimizer else []
    return [table.values, *index, *state]


@pytest.mark.parametrize("density", [0.05, 0.6])
def test_memory_bytes_is_the_held_tensors(density):
    table, mask, _ = random_table(200, 64, density, seed=11)
    expected = sum(t.numel() * t.element_size() for t in held_tensors(table))
    assert table.memory_bytes() == expected
    optimizer = torch.optim.Adam(table.parameters(), lr=0.1)
    assert table.memory_bytes(optimizer) == expected          # no state before the first step
    table.gather(torch.arange(10)).pow(2).sum().backward()
    optimizer.step()
    state = optimizer.state[table.values]
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == (table.nnz,)
    with_state = sum(t.numel() * t.element_size() for t in held_tensors(table, optimizer))
    assert table.memory_bytes(optimizer) == with_state
    step_bytes = state["step"].numel() * state["step"].element_size()
    assert with_state - expected == 8 * table.nnz + step_bytes


@pytest.mark.parametrize("density, layout", [(0.02, "csr"), (0.1, "csr"), (0.2, "bitmap"),
                                             (0.9, "bitmap")])
def test_layout_is_the_smaller_index(density, layout):
    table, mask, _ = random_table(500, 64, density, seed=3)
    assert table.index_layout == layout
    csr_bytes = np.nonzero(mask)[1].astype(np.uint8).nbytes
    bitmap_bytes = np.packbits(mask, axis=1).nbytes
    held = table.columns if layout == "csr" else table.bitmap
    assert held.nbytes == min(csr_bytes, bitmap_bytes)
    index_bytes = table.row_counts.nbytes + min(csr_bytes, bitmap_bytes)
    assert table.memory_bytes() == 4 * table.nnz + index_bytes


@pytest.mark.parametrize("density", [0.05, 0.1, 0.2, 0.5])
def test_memory_is_near_the_floor_at_gowalla_item_size(density):
    n_rows, dim = 40981, 64
    nnz = round(density * n_rows * dim)
    table = SparseEmbeddingTable.from_mask(spread_mask(n_rows, dim, nnz))
    # The floor: 4 bytes per active value plus the smaller of the two bare indexes.
    floor = 4 * nnz + min(nnz * 1, n_rows * dim // 8)
    assert table.floor_bytes() == floor
    assert floor <= table.memory_bytes() <= 1.15 * floor


def test_replace_mask_keeps_shared_values_and_maps_positions():
    table, mask, dense = random_table(40, 64, 0.05, seed=5)
    values = table.values
    rng = np.random.default_rng(6)
    new_mask = mask.copy()
    new_mask[rng.random(mask.shape) < 0.5] = True                 # grow to a bitmap-sized mask
    new_mask[0] = False
    old_rows, old_cols = (t.numpy() for t in table.active_coordinates())
    previous = table.replace_mask(new_mask)
    assert table.values is values and table.index_layout == "bitmap"
    np.testing.assert_array_equal(table.mask().numpy(), new_mask)
    np.testing.assert_array_equal(table.to_dense().detach().numpy(),
                                  np.where(mask & new_mask, dense, 0))
    rows, cols = (t.numpy() for t in table.active_coordinates())
    kept = previous.numpy() >= 0
    np.testing.assert_array_equal(old_rows[previous[kept]], rows[kept])
    np.testing.assert_array_equal(old_cols[previous[kept]], cols[kept])
    assert (mask[rows[~kept], cols[~kept]] == 0).all()

    table.replace_mask(mask, dense)                               # back to csr, explicit values
    assert table.index_layout == "csr"
    np.testing.assert_array_equal(table.to_dense().detach().numpy(), dense * mask)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        SparseEmbeddingTable.from_mask(np.ones(5, dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        SparseEmbeddingTable.from_dense(np.zeros((3, 4)), np.ones((3, 5), dtype=bool))
    with pytest.raises(ValueError, match="bool"):
        SparseEmbeddingTable.from_mask(np.ones((3, 4), dtype=np.int64))


@pytest.mark.parametrize("width", [0, 3, 8])
def test_a_prefix_of_the_columns_is_stored_without_an_index(width):
    rng = np.random.default_rng(width)
    dense = rng.standard_normal((11, 8)).astype(np.float32)
    mask = np.zeros((11, 8), dtype=bool)
    mask[:, :width] = True
    table = SparseEmbeddingTable.from_dense(dense, mask)
    assert table.index_layout == "prefix" and table.prefix_width == width
    assert table.memory_bytes() == 4 * 11 * width == table.floor_bytes()
    expected = np.where(mask, dense, 0.0)
    rows = torch.tensor([3, 0, 3, 10])
    torch.testing.assert_close(table.gather(rows).detach(), torch.from_numpy(expected)[rows])
    assert np.array_equal(table.mask().numpy(), mask)
    flat, values = table.row_entries(torch.tensor([2, 5]))
    assert flat.tolist() == [row * 8 + col for row in (2, 5) for col in range(width)]
    assert np.array_equal(values.numpy(), dense[[2, 5], :width].reshape(-1))
    arrays = table.storage_arrays()
    assert arrays["row_counts"].size == 0 and arrays["index"].tolist() == [width]
    again = SparseEmbeddingTable.from_storage(11, 8, **arrays)
    assert again.index_layout == "prefix"
    assert np.array_equal(again.to_dense().detach().numpy(), expected)
    table.gather(rows).sum().backward()                  # gradient only on the gathered rows
    grad = np.zeros((11, 8), np.float32)
    grad[mask] = table.values.grad.numpy()
    assert np.array_equal(grad[:, :width].sum(1), np.bincount(rows, minlength=11) * width)


def test_a_prefix_mask_that_does_not_match_its_values_is_refused():
    with pytest.raises(ValueError, match="prefix of width 3"):
        SparseEmbeddingTable.from_storage(4, 8, np.zeros(10, np.float32), np.zeros(0, np.uint8),
                                          np.array([3], np.uint8))


def test_a_mask_with_unequal_rows_is_not_a_prefix():
    mask = np.zeros((4, 8), dtype=bool)
    mask[:, :3] = True
    mask[2, 3] = True
    assert SparseEmbeddingTable.from_mask(mask).index_layout != "prefix"
