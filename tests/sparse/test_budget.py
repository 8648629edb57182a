import numpy as np
import pytest
import torch

from fedsparse.errors import ConfigError
from fedsparse.sparse import (SparseEmbeddingTable, dense_bytes, dense_dim_for_budget,
                              density_for_budget, nnz_for_budget, spread_mask, table_bytes)


def adam_bytes(table: SparseEmbeddingTable) -> int:
    """Measured memory of ``table`` after one real Adam step on a BPR-like loss."""
    optimizer = torch.optim.Adam(table.parameters(), lr=0.01)
    table.gather(torch.arange(table.n_rows)).pow(2).sum().backward()
    optimizer.step()
    return table.memory_bytes(optimizer)


def random_mask(n_rows: int, dim: int, nnz: int, seed: int) -> np.ndarray:
    """``nnz`` random entries with at least one per row."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((n_rows, dim), dtype=bool)
    mask[np.arange(n_rows), rng.integers(dim, size=n_rows)] = True
    free = np.flatnonzero(~mask)
    mask.flat[rng.choice(free, nnz - n_rows, replace=False)] = True
    return mask


def test_spread_mask_has_nnz_and_every_row():
    mask = spread_mask(7, 5, 12)
    assert mask.sum() == 12 and mask.any(axis=1).all()
    assert mask.sum(axis=1).max() - mask.sum(axis=1).min() <= 1


@pytest.mark.parametrize("n_rows, dim, budget", [(300, 64, 20_000), (300, 64, 120_000),
                                                 (50, 300, 60_000), (40981, 64, 4_000_000)])
def test_budget_gives_the_largest_table_that_fits(n_rows, dim, budget):
    nnz = nnz_for_budget(n_rows, dim, budget)
    assert n_rows <= nnz < n_rows * dim
    assert table_bytes(n_rows, dim, nnz) <= budget < table_bytes(n_rows, dim, nnz + 1)
    table = SparseEmbeddingTable.from_mask(random_mask(n_rows, dim, nnz, seed=n_rows))
    assert table.nnz == nnz and adam_bytes(table) <= budget
    assert density_for_budget(n_rows, dim, budget) == nnz / (n_rows * dim)


@pytest.mark.parametrize("n_rows, dim, optimizer", [(6, 20, torch.optim.Adam), (3, 40, None)])
def test_search_agrees_with_a_scan_of_every_nnz(n_rows, dim, optimizer):
    nnzs = np.arange(n_rows, n_rows * dim + 1)
    measured = np.array([table_bytes(n_rows, dim, int(nnz), optimizer) for nnz in nnzs])
    assert (np.diff(measured[:-1]) >= 0).all()
    assert len(set(np.diff(measured[:-1]))) > 1                # the layout switch is a kink
    assert measured[-1] < measured[-2]                         # the full table needs no index
    for budget in np.linspace(measured[0], measured[-1] + 50, 23).astype(int):
        assert nnz_for_budget(n_rows, dim, int(budget), optimizer) == nnzs[measured <= budget].max()


def test_without_optimizer_state_more_entries_fit():
    with_adam = nnz_for_budget(300, 64, 40_000)
    without = nnz_for_budget(300, 64, 40_000, optimizer=None)
    assert without > with_adam
    assert table_bytes(300, 64, without, optimizer=None) <= 40_000


def test_a_large_budget_gives_the_full_table():
    full = table_bytes(20, 16, 20 * 16)
    assert nnz_for_budget(20, 16, full) == 20 * 16
    assert density_for_budget(20, 16, 10 * full) == 1.0
    assert nnz_for_budget(20, 16, full - 1) < 20 * 16


def test_too_small_a_budget_is_one_line_config_error():
    need = table_bytes(1000, 64, 1000)
    assert nnz_for_budget(1000, 64, need) == 1000
    with pytest.raises(ConfigError) as error:
        nnz_for_budget(1000, 64, need - 1)
    message = str(error.value)
    assert "\n" not in message and str(need - 1) in message and "1000 x 64" in message


def test_the_dense_dimension_solved_from_a_budget_fits_and_the_next_does_not():
    tables = (300, 500)
    for budget in (20_000, 123_456, 400_000):
        dim = dense_dim_for_budget(tables, 64, budget)
        assert sum(dense_bytes(rows, dim) for rows in tables) <= budget
        assert sum(dense_bytes(rows, dim + 1) for rows in tables) > budget
    assert dense_bytes(300, 7) == 3 * 4 * 300 * 7 + 4     # values, Adam's moments and step
    assert dense_dim_for_budget(tables, 16, 10**9) == 16             # at most model.dim
    with pytest.raises(ConfigError, match="smallest budget that works is 9608 bytes"):
        dense_dim_for_budget(tables, 64, 9607)
