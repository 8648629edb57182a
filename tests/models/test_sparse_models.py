"""Models on sparse tables, and LightGCN's sampled sparse backward."""

import numpy as np
import pytest
import torch

from fedsparse.models import MF, LightGCN
from fedsparse.seeding import generator_for
from fedsparse.sparse import DenseEmbeddingTable, SparseEmbeddingTable, random_mask


def masks(data, dim, density=0.3):
    generator = generator_for(0, 0, 0, "mask-init")
    return (random_mask(data.n_users, dim, density, generator),
            random_mask(data.n_items, dim, density, generator))


def batch(data):
    users = torch.arange(0, 20)
    pos = torch.tensor([data.train[u].indices[0] for u in range(20)])
    neg = torch.arange(40, 100).reshape(20, 3)
    return users, pos, neg


@pytest.mark.parametrize("kind", ["mf", "lightgcn"])
def test_sparse_tables_keep_dense_draws_at_the_mask(small_data, kind):
    user_mask, item_mask = masks(small_data, 8)
    build = {"mf": lambda g, m: MF(small_data.n_users, small_data.n_items, 8, generator=g, masks=m),
             "lightgcn": lambda g, m: LightGCN(small_data.train, 8, generator=g, masks=m)}[kind]
    dense = build(torch.Generator().manual_seed(1), None)
    sparse = build(torch.Generator().manual_seed(1), (user_mask, item_mask))
    assert isinstance(dense.user_table, DenseEmbeddingTable)
    assert isinstance(sparse.user_table, SparseEmbeddingTable)
    assert np.array_equal(sparse.user_table.mask().numpy(), user_mask)
    torch.testing.assert_close(sparse.tables()["item"],
                               dense.tables()["item"] * torch.from_numpy(item_mask))
    users, pos, neg = batch(small_data)
    sparse.loss(users, pos, neg).backward()
    assert sparse.item_table.values.grad.shape == (sparse.item_table.nnz,)


def lightgcn_with_grads(data, grad_rows=None):
    model = LightGCN(data.train, 8, layers=2, generator=torch.Generator().manual_seed(2),
                     masks=masks(data, 8))
    users, pos, neg = batch(data)
    loss = model.loss(users, pos, neg, grad_rows=grad_rows)
    loss.backward()
    grads = []
    for table in (model.user_table, model.item_table):
        dense = torch.zeros(table.n_rows, table.dim)
        dense[table.active_coordinates()] = table.values.grad
        grads.append(dense)
    return loss, torch.cat(grads)                          # (U + I, d) gradient per entry


def sampled_rows(data):
    users, pos, neg = batch(data)
    extra = torch.tensor([30, 31, data.n_users + 140])
    return torch.unique(torch.cat([users, pos + data.n_users, neg.flatten() + data.n_users, extra]))


def test_sampled_step_has_the_dense_loss_and_no_gradient_outside_the_rows(small_data):
    dense_loss, dense_grad = lightgcn_with_grads(small_data)
    rows = sampled_rows(small_data)
    sampled_loss, sampled_grad = lightgcn_with_grads(small_data, rows)
    torch.testing.assert_close(sampled_loss, dense_loss, rtol=1e-6, atol=0)
    outside = torch.ones(len(sampled_grad), dtype=torch.bool)
    outside[rows] = False
    assert sampled_grad[outside].abs().sum() == 0
    assert dense_grad[outside].abs().sum() > 0            # the full backward does reach them
    assert sampled_grad[rows].abs().sum(dim=1).gt(0).float().mean() > 0.5


def test_sampled_backward_over_all_rows_is_the_exact_gradient(small_data):
    _, dense_grad = lightgcn_with_grads(small_data)
    every = torch.arange(small_data.n_users + small_data.n_items)
    _, sampled_grad = lightgcn_with_grads(small_data, every)
    torch.testing.assert_close(sampled_grad, dense_grad, rtol=1e-4, atol=1e-7)


def test_grad_rows_must_cover_the_batch(small_data):
    model = LightGCN(small_data.train, 8, generator=torch.Generator().manual_seed(2))
    users, pos, neg = batch(small_data)
    with pytest.raises(ValueError, match="grad_rows must contain"):
        model.loss(users, pos, neg, grad_rows=torch.arange(10))
