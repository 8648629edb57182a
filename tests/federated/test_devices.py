"""train_devices: the devices of a cohort train together, each tier with its own item step."""

from dataclasses import replace

import numpy as np
import torch

from fedsparse.data import synthetic_dataset
from fedsparse.federated.devices import CohortState, TrainRound, train_devices
from fedsparse.federated.faults import FaultModel
from fedsparse.sparse import SparseEmbeddingTable
from fedsparse.train.device import LocalTraining

DIM = 8
SPEC = TrainRound(server_round=1, seed=3,
                  hp=LocalTraining(local_epochs=1, batch_size=4, lr=0.05, l2=1e-4, negatives=2,
                                   growth_topk=0),
                  tier_budget_bytes=[0, 0], tier_growth_topk=[1, 1],
                  tier_steps_per_second=[100.0, 100.0], faults=FaultModel())


def tables(n_items):
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.normal(scale=0.1, size=(n_items, DIM)).astype(np.float32))
    masks = [rng.random((n_items, DIM)) < density for density in (0.3, 0.7)]
    for mask in masks:
        mask[:, 0] = True
    return {tier: SparseEmbeddingTable.from_dense(values, torch.from_numpy(mask))
            for tier, mask in enumerate(masks)}


def test_each_tier_trains_with_its_item_step_as_its_devices_would_alone():
    data = synthetic_dataset(n_users=6, n_items=60, per_user=5, test_per_user=1, seed=2)
    users, pairs = np.arange(6), [(device, device % 2) for device in range(6)]
    mixed_state = CohortState.initial(range(6), seed=3, dim=DIM, init_std=0.1)
    mixed = train_devices(data, users, mixed_state, pairs, tables(60),
                          replace(SPEC, tier_item_optimizer=["adam", "sgd"],
                                  tier_item_lr=[0.0, 2.0]))
    sgd_hp = replace(SPEC.hp, item_optimizer="sgd", item_lr=2.0)
    for tier, spec in ((0, SPEC), (1, replace(SPEC, hp=sgd_hp))):
        state = CohortState.initial(range(6), seed=3, dim=DIM, init_std=0.1)
        alone = train_devices(data, users, state, [pair for pair in pairs if pair[1] == tier],
                              tables(60), spec)
        for device, reply in alone.items():
            for key, array in reply.arrays.items():
                np.testing.assert_array_equal(mixed[device].arrays[key], array, err_msg=key)
            np.testing.assert_array_equal(mixed_state.row(device).values,
                                          state.row(device).values)
    adam = train_devices(data, users, CohortState.initial(range(6), seed=3, dim=DIM, init_std=0.1),
                         [(1, 1)], tables(60), SPEC)                  # the tier's step mattered
    assert not np.array_equal(adam[1].arrays["values"], mixed[1].arrays["values"])
