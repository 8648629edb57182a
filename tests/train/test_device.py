"""One device's local round: what it trains, what it uploads, what it holds."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedsparse.seeding import generator_for
from fedsparse.sparse import SparseEmbeddingTable
from fedsparse.sparse.masks import random_mask
from fedsparse.train.device import (LocalTraining, UserRow, device_reserve_bytes, evaluate_device,
                                    model_bytes, slice_train_bytes, touched_rows_bound,
                                    train_device)

HP = LocalTraining(local_epochs=3, batch_size=4, lr=0.05, l2=1e-4, negatives=2, growth_topk=3)


@pytest.fixture()
def device(small_data):
    mask = random_mask(small_data.n_items, 8, 0.3, generator_for(0, 0, 0, "mask"))
    table = SparseEmbeddingTable.from_dense(torch.randn(small_data.n_items, 8) * 0.1, mask)
    user = UserRow.initial(8, 0.1, generator_for(0, 0, 7, "user"))
    return table, user, small_data.train[7].indices


def test_round_trains_touched_rows_only_and_reports_growth_on_inactive_entries(device):
    table, user, positives = device
    before = table.to_dense().detach().clone()
    mask = table.mask().clone()
    update, new_user = train_device(table, user, positives, HP,
                                    generator=generator_for(0, 1, 7, "t"))
    after = table.to_dense().detach()
    changed_rows = set(torch.nonzero((after != before).any(dim=1)).squeeze(1).tolist())
    uploaded_rows = set((update.entries // 8).tolist())
    assert set(positives.tolist()) <= uploaded_rows and changed_rows <= uploaded_rows
    assert torch.equal(table.mask(), mask)                       # the device never moves masks
    assert np.array_equal(update.values, after.reshape(-1)[update.entries].numpy())
    assert mask.reshape(-1)[update.entries].all()
    assert not mask.reshape(-1)[update.grow_entries].any()       # growth: inactive entries only
    assert set((update.grow_entries // 8).tolist()) <= uploaded_rows
    assert (update.grow_scores > 0).all()
    assert np.bincount(update.grow_entries // 8).max() <= HP.growth_topk
    assert update.examples == len(positives) * HP.local_epochs
    steps = HP.local_epochs * -(-len(positives) // HP.batch_size)
    assert new_user.step == steps and not np.array_equal(new_user.values, user.values)
    again, _ = train_device(table, new_user, positives, HP, generator=generator_for(0, 2, 7, "t"))
    assert again.examples == update.examples


def test_round_is_reproducible(device, small_data):
    table, user, positives = device
    twin = SparseEmbeddingTable.from_dense(table.to_dense().detach(), table.mask())
    first, _ = train_device(table, user, positives, HP, generator=generator_for(3, 1, 7, "t"))
    second, _ = train_device(twin, user, positives, HP, generator=generator_for(3, 1, 7, "t"))
    assert np.array_equal(first.values, second.values)
    assert np.array_equal(first.grow_entries, second.grow_entries)


def test_held_bytes_are_measured_and_bounded_by_the_budget(device):
    table, user, positives = device
    update, _ = train_device(table, user, positives, HP, generator=generator_for(0, 1, 7, "t"))
    bound = table.memory_bytes() + 2 * 4 * table.nnz + 4 \
        + device_reserve_bytes(8, touched_rows_bound(len(positives), HP.negatives, table.n_rows))
    assert update.train_bytes <= bound
    with pytest.raises(ValueError, match="over its budget"):
        train_device(table, user, positives, HP, generator=generator_for(0, 1, 7, "t"),
                     budget_bytes=update.train_bytes - 1)
    assert model_bytes(table, user) == table.memory_bytes() + 4 * 8


def test_an_sgd_item_slice_steps_by_its_gradient_and_holds_no_state(device):
    # One local step (every positive in one batch). SGD moves the slice by -item_lr times the
    # gradient, so twice the rate moves it twice as far (Adam's first step moves every entry
    # with a gradient by about lr, whatever its size); the user row's Adam step sees the same
    # gradient either way; the slice holds no optimizer state.
    table, user, positives = device
    one_step = replace(HP, local_epochs=1, batch_size=len(positives), item_optimizer="sgd")
    before = table.to_dense().detach().clone()
    moved, results = {}, {}
    for name, hp in (("sgd", replace(one_step, item_lr=0.5)),
                     ("sgd, twice the rate", replace(one_step, item_lr=1.0)),
                     ("adam", replace(one_step, item_optimizer="adam"))):
        twin = SparseEmbeddingTable.from_dense(before, table.mask())
        results[name] = train_device(twin, user, positives, hp,
                                     generator=generator_for(0, 1, 7, "t"))
        moved[name] = twin.to_dense().detach() - before
    assert moved["sgd"].abs().sum() > 0
    # atol: a value's rounding, as moved = after - before
    torch.testing.assert_close(moved["sgd, twice the rate"], 2 * moved["sgd"], rtol=1e-5,
                               atol=1e-7)
    adam_steps = moved["adam"][moved["adam"] != 0].abs()
    torch.testing.assert_close(adam_steps, torch.full_like(adam_steps, HP.lr), rtol=1e-2, atol=0)
    assert moved["sgd"][moved["sgd"] != 0].abs().std() > 0.1 * moved["sgd"].abs().max()
    assert np.array_equal(results["sgd"][1].values, results["adam"][1].values)
    held = {name: update.train_bytes for name, (update, _) in results.items()}
    state = slice_train_bytes(table) - slice_train_bytes(table, "sgd")
    assert state == 2 * 4 * table.nnz + 4 and held["adam"] - held["sgd"] == state


def test_device_ranks_with_its_own_model(device, small_data):
    table, user, positives = device
    metrics = evaluate_device(table, user, positives, small_data.test[7].indices, k=20)
    assert set(metrics) == {"recall@20", "ndcg@20"}
    assert 0.0 <= metrics["recall@20"] <= 1.0
