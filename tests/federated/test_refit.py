"""A device's refit of its user row before it ranks (``fl.refit_steps``): evaluation only."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsparse.data import synthetic_dataset
from fedsparse.federated.cohort import UserRefit, refit_user_rows
from fedsparse.federated.devices import CohortState, evaluate_devices, items_of
from fedsparse.seeding import generator_for
from fedsparse.sparse import SparseEmbeddingTable

DIM = 8


def test_devices_rank_with_a_refit_copy_of_their_row_and_keep_their_state():
    data = synthetic_dataset(n_users=10, n_items=50, per_user=8, test_per_user=3, seed=4)
    users = np.arange(data.n_users)
    state = CohortState.initial(range(10), seed=5, dim=DIM, init_std=0.1)
    kept = {name: array.copy() for name, array in state.arrays().items()}
    rng = np.random.default_rng(1)
    tables = {tier: SparseEmbeddingTable.from_dense(
        torch.from_numpy(rng.normal(scale=0.3, size=(data.n_items, DIM)).astype(np.float32)),
        torch.from_numpy(rng.random((data.n_items, DIM)) < density))
        for tier, density in enumerate((0.4, 0.8))}
    pairs = [(device, device % 2) for device in range(10)]
    refit = UserRefit(steps=30, lr=0.05, l2=0.01, negatives=2)
    plain = evaluate_devices(data, users, state, pairs, tables, 5)
    refit_results = evaluate_devices(data, users, state, pairs, tables, 5, refit=refit, seed=5,
                                     server_round=7)
    for name, array in state.arrays().items():
        np.testing.assert_array_equal(array, kept[name])
    for device, tier in pairs:                       # the rows the devices ranked with
        row = refit_user_rows(tables[tier].to_dense().detach(), state.values[device:device + 1],
                              [items_of(data, "train", device)], refit,
                              [generator_for(5, 7, device, "refit")])[0]
        scores = tables[tier].to_dense().detach().numpy() @ row
        scores[items_of(data, "train", device)] = -np.inf
        top = set(np.argsort(-scores, kind="stable")[:5].tolist())
        test = items_of(data, "test", device)
        expected = len(top & set(test.tolist())) / len(test)
        assert abs(refit_results[device]["recall@5"] - expected) < 1e-6
        assert refit_results[device]["model-bytes"] == plain[device]["model-bytes"]
    assert any(refit_results[d]["recall@5"] != plain[d]["recall@5"] for d, _ in pairs)


def _refit_case(seed, n_devices, dim):
    """A slice with inactive entries, rows and positives for ``n_devices`` devices."""
    rng = np.random.default_rng(seed)
    items = torch.from_numpy((rng.normal(size=(40, dim)) * (rng.random((40, dim)) < 0.5))
                             .astype(np.float32))
    rows = (rng.normal(size=(n_devices, dim)) * 0.1).astype(np.float32)
    positives = [np.sort(rng.choice(40, size=int(rng.integers(1, 15)), replace=False))
                 for _ in range(n_devices)]
    return items, rows, positives


def _expected_loss(items, row, positives, l2):
    """The refit objective's expectation: BPR over every non-positive item, plus the L2 term."""
    scores = items.numpy() @ row
    others = np.setdiff1d(np.arange(len(scores)), positives)
    margins = scores[others][None, :] - scores[positives][:, None]              # (P, n - P)
    return float(np.logaddexp(0.0, margins).mean() + l2 * 0.5 * row @ row)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), dim=st.sampled_from([8, 64]), negatives=st.integers(1, 4))
def test_a_device_refits_the_same_bits_alone_or_with_others(seed, dim, negatives):
    items, rows, positives = _refit_case(seed, 7, dim)
    refit = UserRefit(steps=5, lr=0.05, l2=0.01, negatives=negatives)

    def streams(devices):
        return [generator_for(seed, 3, device, "refit") for device in devices]

    together = refit_user_rows(items, rows, positives, refit, streams(range(7)))
    some = refit_user_rows(items, rows[[2, 5]], [positives[2], positives[5]], refit,
                           streams([2, 5]))
    assert np.array_equal(some, together[[2, 5]])
    for device in range(7):
        alone = refit_user_rows(items, rows[device:device + 1], positives[device:device + 1],
                                refit, streams([device]))
        assert np.array_equal(alone[0], together[device])


def test_the_refit_lowers_each_devices_loss_and_leaves_the_slice_alone():
    items, rows, positives = _refit_case(0, 5, 8)
    before = items.clone()
    refit = UserRefit(steps=40, lr=0.05, l2=0.01, negatives=4)
    new = refit_user_rows(items, rows, positives, refit,
                          [generator_for(0, 1, device, "refit") for device in range(5)])
    assert torch.equal(items, before)
    for device in range(5):
        assert (_expected_loss(items, new[device], positives[device], 0.01)
                < _expected_loss(items, rows[device], positives[device], 0.01) - 1e-3)
