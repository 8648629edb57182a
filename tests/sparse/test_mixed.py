"""Mixed-dimension tables (Ginart et al. 2019): blocks, projections, bytes, budgets."""

import numpy as np
import pytest
import torch

from fedsparse.errors import ConfigError
from fedsparse.sparse.budget import mixed_bytes, mixed_dims_for_budget
from fedsparse.sparse.mixed import MixedDimEmbeddingTable, block_dims


def frequencies(n=103, seed=0):
    return np.random.default_rng(seed).zipf(1.8, size=n).astype(np.float64)


def test_blocks_and_projections_have_the_expected_shapes_and_bytes():
    frequency, dim = frequencies(), 16
    table = MixedDimEmbeddingTable(frequency, dim, np.array([16, 8, 2]),
                                   generator=torch.Generator().manual_seed(0))
    assert table.block_rows.tolist() == [35, 34, 34]
    blocks = table._blocks()
    assert [tuple(e.shape) for e, _ in blocks] == [(35, 16), (34, 8), (34, 2)]
    assert [None if p is None else tuple(p.shape) for _, p in blocks] == [None, (8, 16), (2, 16)]
    values = 35 * 16 + 34 * 8 + 8 * 16 + 34 * 2 + 2 * 16                  # no projection at d
    assert table.nnz == values and table.floor_bytes() == 4 * values
    assert table.memory_bytes() == 4 * values + 103        # uint8 position: one byte a row
    adam = torch.optim.Adam(table.parameters())
    table.values.grad = torch.zeros_like(table.values)
    adam.step()
    assert table.memory_bytes(adam) == 12 * values + 103 + 4 == mixed_bytes(frequency, dim,
                                                                           table.block_dims)
    most = np.argsort(-frequency, kind="stable")
    dense = table.to_dense()                                             # (n_rows, d)
    first, _ = blocks[0]
    assert torch.equal(dense[torch.from_numpy(most[:35])], first)        # popular rows, d = 16
    second, projection = blocks[1]
    torch.testing.assert_close(dense[torch.from_numpy(most[35:69])], second @ projection)
    rows = torch.tensor([int(most[-1]), int(most[0]), 7, 7])
    torch.testing.assert_close(table(rows), dense[rows])
    groups, count = table.scale_groups()
    assert count == 103 + 8 + 2 and groups.size == values


def test_popular_blocks_get_more_dimensions_and_temperature_zero_is_uniform():
    frequency = frequencies(400)
    dims = block_dims(frequency, 4, 64, 0.5, 64.0)
    assert dims[0] == 64 and (np.diff(dims) <= 0).all() and dims[-1] < 64
    assert (block_dims(frequency, 4, 64, 0.0, 24.0) == 24).all()


def test_the_block_dimensions_solved_from_a_budget_fit_it_and_a_larger_scale_does_not():
    frequency, dim = frequencies(300), 32
    budget = 40_000
    dims = mixed_dims_for_budget(frequency, dim, 4, 0.3, budget)
    assert mixed_bytes(frequency, dim, dims) <= budget
    wider = [block_dims(frequency, 4, dim, 0.3, scale) for scale in np.linspace(1, 200, 400)]
    larger = [d for d in wider if (d >= dims).all() and (d > dims).any()]
    assert larger and all(mixed_bytes(frequency, dim, d) > budget for d in larger)
    with pytest.raises(ConfigError, match="cannot hold dimension 1 in every block"):
        mixed_dims_for_budget(frequency, dim, 4, 0.3, 1000)


def test_a_stored_table_rebuilds_exactly():
    table = MixedDimEmbeddingTable(frequencies(), 16, np.array([16, 4, 1]),
                                   generator=torch.Generator().manual_seed(1))
    layout = table.layout_arrays()
    again = MixedDimEmbeddingTable.from_storage(layout["position"], 16, layout["block_dims"],
                                                table.values.detach().numpy())
    assert torch.equal(again.to_dense(), table.to_dense())
    with pytest.raises(ValueError, match="do not fill blocks"):
        MixedDimEmbeddingTable.from_storage(layout["position"], 16, layout["block_dims"],
                                            np.zeros(5, np.float32))
