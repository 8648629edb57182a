import numpy as np
import torch

from fedsparse.sparse import DenseEmbeddingTable, GradientAccumulator, SparseEmbeddingTable


def test_dense_table_has_the_sparse_table_interface():
    values = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    table = DenseEmbeddingTable(values)
    rows = torch.tensor([3, 0, 3])
    torch.testing.assert_close(table(rows), values[rows])
    torch.testing.assert_close(table(), values)
    assert table.mask().all() and table.mask().shape == (4, 3)
    assert (table.nnz, table.density) == (12, 1.0)
    assert table.memory_bytes() == 12 * 4
    optimizer = torch.optim.Adam(table.parameters())
    table(rows).sum().backward()
    optimizer.step()
    # values + exp_avg + exp_avg_sq (12 float32 each) + Adam's float32 step counter.
    assert table.memory_bytes(optimizer) == 3 * 12 * 4 + 4
    # Same interface on both kinds: a sparse table at full density returns the same vectors.
    sparse = SparseEmbeddingTable.from_dense(values, np.ones((4, 3), dtype=bool))
    torch.testing.assert_close(sparse(rows), values[rows])
    torch.testing.assert_close(sparse(), values)


def test_accumulator_row_add_matches_dense_add():
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(6, 4, generator=generator) < 0.5
    rows = torch.tensor([1, 4, 5])
    row_grad = torch.randn(3, 4, generator=generator)
    dense_grad = torch.zeros(6, 4)
    dense_grad[rows] = row_grad
    by_rows = GradientAccumulator(6, 4)
    by_rows.add_rows(rows, row_grad)
    by_rows.add_rows(rows, row_grad)
    torch.testing.assert_close(by_rows.scores(mask), 2 * dense_grad.abs().masked_fill(mask, 0.0))
    assert (by_rows.scores(mask)[mask] == 0).all() and by_rows.scores(mask)[0].eq(0).all()
