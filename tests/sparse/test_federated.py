"""The server half of federated SparseRec: sparse aggregation, nested tier masks, federated NMF."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsparse.data import synthetic_dataset
from fedsparse.seeding import generator_for
from fedsparse.sparse.federated import (ServerStep, SparseUpdate, initial_nmf_items,
                                        initial_nmf_row, nested_tier_masks, nmf_item_scores,
                                        nmf_item_step, nmf_multiplicative, nmf_user_step,
                                        sum_sparse_updates)
from fedsparse.sparse.masks import mask_nnz, random_mask


def update(device, weight, entries, values, grow=(), scores=()):
    return SparseUpdate(device=device, weight=weight, entries=np.array(entries, np.int64),
                        values=np.array(values, np.float32),
                        grow_entries=np.array(grow, np.int64),
                        grow_scores=np.array(scores, np.float32))


def aggregate(table, updates, kind="sgd", lr=1.0):
    """One SGD (or fresh Adam) server step on the round's sums; the new table and growth."""
    weighted_delta, weight, growth = sum_sparse_updates(table, updates)
    return ServerStep(kind, table.size, lr)(table, weighted_delta, weight), growth


def test_aggregation_is_a_per_entry_weighted_average_of_the_deltas():
    table = np.zeros((2, 3), np.float32)
    table[0, 0] = 1.0
    updates = [update(0, 1.0, [0, 4], [2.0, 1.0], grow=[1], scores=[0.5]),
               update(1, 3.0, [0], [4.0], grow=[1, 5], scores=[0.25, 2.0])]
    new, growth = aggregate(table, updates)
    # entry 0: deltas 1 (weight 1) and 3 (weight 3) -> 1 + (1 + 9) / 4; entry 4 only device 0
    assert new[0, 0] == pytest.approx(1.0 + 10.0 / 4)
    assert new[1, 1] == pytest.approx(1.0)
    assert np.count_nonzero(new) == 2                    # untouched entries keep their value
    assert growth.reshape(-1)[[1, 5]] == pytest.approx([0.75, 2.0])


def test_aggregation_does_not_depend_on_reply_order_and_server_lr_scales_the_step():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(20, 8)).astype(np.float32)
    updates = []
    for device in range(6):
        entries = np.sort(rng.choice(160, size=30, replace=False))
        updates.append(update(device, float(rng.integers(1, 9)), entries,
                              rng.normal(size=30)))
    forward, _ = aggregate(table, updates)
    backward, _ = aggregate(table, updates[::-1])
    assert np.array_equal(forward, backward)
    half, _ = aggregate(table, updates, lr=0.5)
    np.testing.assert_allclose(half - table, (forward - table) / 2, atol=1e-5)


def test_server_adam_steps_on_the_mean_delta_and_keeps_untrained_moments():
    table = np.zeros((2, 2), np.float32)
    step = ServerStep("adam", table.size, lr=0.1, eps=1e-3)
    first = step(table, np.array([2.0, 0.0, -0.5, 0.0]), np.array([4.0, 0.0, 1.0, 0.0]))
    # entry 0: mean delta 0.5 -> m = 0.05, v = 0.0025, step 0.1 * 0.05 / (0.05 + 1e-3)
    assert first.reshape(-1)[0] == pytest.approx(0.1 * 0.05 / 0.051, rel=1e-6)
    assert first.reshape(-1)[2] == pytest.approx(-0.1 * 0.05 / 0.051, rel=1e-6)
    assert first.reshape(-1)[[1, 3]].tolist() == [0.0, 0.0]  # untrained: no step, no moments
    second = step(first, np.array([0.0, 1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0, 0.0]))
    assert np.array_equal(second.reshape(-1)[[0, 2]], first.reshape(-1)[[0, 2]])
    assert step.moments["m"][0] == pytest.approx(0.05)       # not decayed while untrained
    step.forget(np.array([[True, False], [False, False]]))
    assert step.moments["m"][0] == 0.0 and step.moments["v"][0] == 0.0
    assert step.moments["m"][1] == pytest.approx(0.1)


@settings(max_examples=40, deadline=None)
@given(n_rows=st.integers(1, 30), dim=st.integers(1, 16), seed=st.integers(0, 10_000),
       densities=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=4))
def test_tier_masks_are_nested_and_hit_their_densities(n_rows, dim, seed, densities):
    rng = np.random.default_rng(seed)
    top_density = max(densities)
    top = random_mask(n_rows, dim, top_density, generator_for(seed, 0, 0, "t"))
    weights = np.where(top, rng.normal(size=top.shape), 0.0)
    weights[rng.random(top.shape) < 0.2] = 0.0                # ties at zero (grown entries)
    growth = rng.random(top.shape)
    masks = nested_tier_masks(top, weights, growth, {str(i): d for i, d in enumerate(densities)})
    ordered = sorted(masks.values(), key=lambda mask: mask.sum())
    for small, large in itertools.pairwise(ordered):
        assert not (small & ~large).any()
    assert not (ordered[-1] & ~top).any()
    for name, density in enumerate(densities):
        mask = masks[str(name)]
        assert mask.any(axis=1).all()
        assert mask.sum() == mask_nnz(n_rows, dim, density)


def test_federated_nmf_equals_centralized_nmf():
    data = synthetic_dataset(n_users=40, n_items=60, per_user=8, test_per_user=2, seed=2)
    rank, seed, iterations = 6, 3, 5
    users = np.flatnonzero(np.diff(data.train.indptr) > 0)
    w0 = np.stack([initial_nmf_row(seed, device, rank) for device in range(len(users))])
    h0 = initial_nmf_items(seed, rank, data.n_items)
    w_central, h_central = nmf_multiplicative(data.train[users], w0, h0, iterations)

    h, rows = h0.copy(), list(w0)
    for _ in range(iterations):
        numerator, gram = np.zeros_like(h), np.zeros((rank, rank))
        for device, user in enumerate(users):
            items = data.train[user].indices
            rows[device] = nmf_user_step(rows[device], h[:, items], h @ h.T)
            numerator[:, items] += rows[device][:, None]          # W_u^T R_u
            gram += np.outer(rows[device], rows[device])          # W_u^T W_u
        h = nmf_item_step(h, numerator, gram)
    np.testing.assert_allclose(np.stack(rows), w_central, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h, h_central, rtol=1e-9, atol=1e-12)
    # the reconstruction improves on the start
    dense = data.train[users].toarray()
    assert np.linalg.norm(dense - w_central @ h_central) < np.linalg.norm(dense - w0 @ h0)
    scores = nmf_item_scores(h, gram)
    assert scores.shape == (data.n_items, rank) and (scores >= 0).all()
