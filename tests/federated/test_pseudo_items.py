"""Pseudo-items: rows a device reports but never trained on."""

import numpy as np
import torch

from fedsparse.data import synthetic_dataset
from fedsparse.federated.devices import CohortState, TrainRound, items_of, train_devices
from fedsparse.federated.faults import FaultModel
from fedsparse.sparse import SparseEmbeddingTable
from fedsparse.train.device import LocalTraining

DIM = 8


def run_round(data, pseudo_items):
    users = np.arange(data.n_users)
    state = CohortState.initial(range(6), seed=3, dim=DIM, init_std=0.1)
    rng = np.random.default_rng(0)
    mask = rng.random((data.n_items, DIM)) < 0.6
    mask[:, 0] = True
    values = torch.from_numpy(rng.normal(scale=0.1, size=(data.n_items, DIM)).astype(np.float32))
    table = SparseEmbeddingTable.from_dense(values, torch.from_numpy(mask))
    spec = TrainRound(server_round=1, seed=3,
                      hp=LocalTraining(local_epochs=1, batch_size=4, lr=0.05, l2=1e-4,
                                       negatives=2, growth_topk=0),
                      tier_budget_bytes=[0], tier_growth_topk=[1], tier_steps_per_second=[100.0],
                      faults=FaultModel(), pseudo_items=pseudo_items)
    replies = train_devices(data, users, state, [(d, 0) for d in range(6)], {0: table}, spec)
    return state, replies, table


def test_pseudo_items_are_added_to_the_reply_only():
    data = synthetic_dataset(n_users=6, n_items=60, per_user=5, test_per_user=1, seed=2)
    plain_state, plain, table = run_round(data, 0.0)
    state, padded, _ = run_round(data, 2.0)
    np.testing.assert_array_equal(state.values, plain_state.values)     # training unchanged
    received, mask = table.to_dense().detach().numpy(), table.mask().numpy()
    for device in range(6):
        before, after = plain[device].arrays, padded[device].arrays
        positives = set(items_of(data, "train", device).tolist())
        real, rows = set(before["rows"].tolist()), set(after["rows"].tolist())
        pseudo = sorted(rows - real)
        assert real <= rows and not set(pseudo) & positives
        assert len(pseudo) == round(2.0 * len(real & positives))
        # each real row's values are those it trained to, in the padded reply too
        per_row = np.repeat(after["rows"], mask[after["rows"]].sum(axis=1))
        kept = np.isin(per_row, before["rows"])
        np.testing.assert_array_equal(after["values"][kept], before["values"])
        # a pseudo row moves by the change of one of the device's positive rows
        changes = []
        for row in sorted(real & positives):
            change = np.zeros(DIM, np.float32)
            change[mask[row]] = after["values"][per_row == row] - received[row][mask[row]]
            changes.append(change)
        for row in pseudo:
            moved = after["values"][per_row == row] - received[row][mask[row]]
            assert any(np.allclose(moved, change[mask[row]], atol=1e-6) for change in changes)
