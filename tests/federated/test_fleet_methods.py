"""Fleet methods on the server: nested_dims (each tier holds the widest prefix of the item
dimensions that fits its budget; each dimension averaged over the devices that hold it) and the
devices' learning-rate schedule."""

import numpy as np
import pytest
import torch

from fedsparse.data import load_dataset
from fedsparse.errors import ConfigError
from fedsparse.federated.fleet import plan_fleet
from fedsparse.federated.secure_training import TierLayout, sparse_contribution
from fedsparse.federated.server import DeviceOutcome, FleetServer, OpenedSums
from fedsparse.sparse import SparseEmbeddingTable, prefix_mask
from fedsparse.sparse.federated import SparseUpdate
from fedsparse.train.device import DeviceUpdate, slice_train_bytes

NESTED = ["sparse.method=nested_dims", "fl.tiers.small.budget_bytes=2500",
          "fl.tiers.large.budget_bytes=4400"]


def prefix_train_bytes(n_items: int, dim: int, width: int) -> int:
    mask = torch.from_numpy(prefix_mask(n_items, dim, width))
    return slice_train_bytes(SparseEmbeddingTable.from_dense(torch.zeros(mask.shape), mask))


def test_each_tier_holds_the_widest_prefix_that_fits(fleet_config):
    cfg = fleet_config(*NESTED)
    data = load_dataset(cfg.data.name, cfg.data.split)
    plan = plan_fleet(cfg, data)
    widths = [tier.prefix_width(cfg.model.dim) for tier in plan.tiers]
    assert 1 <= widths[0] < widths[1] < cfg.model.dim
    for tier, width in zip(plan.tiers, widths):
        assert tier.density == width / cfg.model.dim
        assert prefix_train_bytes(data.n_items, cfg.model.dim, width) + plan.reserve_bytes \
            <= tier.budget_bytes
        assert prefix_train_bytes(data.n_items, cfg.model.dim, width + 1) + plan.reserve_bytes \
            > tier.budget_bytes


def test_a_budget_below_one_dimension_names_the_tier(fleet_config):
    with pytest.raises(ConfigError, match="fl.tiers.small.budget_bytes: too small for "
                                          "nested_dims .* one dimension"):
        plan_fleet(fleet_config(*NESTED, "fl.tiers.small.budget_bytes=1200"),
                   load_dataset(fleet_config().data.name))


@pytest.mark.parametrize("training", ["plain", "secure_sum"])
def test_a_dimension_is_averaged_over_the_devices_that_hold_it(fleet_config, training):
    cfg = fleet_config(*NESTED, f"fl.privacy.training={training}", "fl.server_lr=1.0")
    data = load_dataset(cfg.data.name, cfg.data.split)
    plan = plan_fleet(cfg, data)
    dim, n_items = cfg.model.dim, data.n_items
    narrow, wide = (tier.prefix_width(dim) for tier in plan.tiers)
    start = np.full((n_items, dim), 0.5, np.float32)
    server = FleetServer(cfg, plan, start, prefix_mask(n_items, dim, wide))
    assert [int(mask[3].sum()) for mask in server.masks] == [narrow, wide]
    assert not server.item[:, wide:].any()                  # nothing held beyond the widest
    small, large = (int(np.flatnonzero(plan.device_tier == t)[0]) for t in (0, 1))
    sent = {small: (0, 1.5, 10), large: (1, 2.5, 30)}         # tier, value after training, weight
    outcomes, sums = {}, {}
    for device, (tier, value, weight) in sent.items():
        width = (narrow, wide)[tier]
        entries = np.array([3 * dim + col for col in range(width)], np.int64)   # row 3 only
        update = DeviceUpdate(entries=entries, values=np.full(width, value, np.float32),
                              grow_entries=np.zeros(0, np.int64),
                              grow_scores=np.zeros(0, np.float32), examples=weight, loss=0.1,
                              train_bytes=100, steps=1)
        if training == "plain":
            outcomes[device] = DeviceOutcome("replied", update=SparseUpdate(
                device=device, weight=float(weight), entries=update.entries,
                values=update.values, grow_entries=update.grow_entries,
                grow_scores=update.grow_scores), train_bytes=100)
        else:
            positions, values = sparse_contribution(update, TierLayout.of(server.tier_table(tier)),
                                                    dim)
            total = np.zeros(server.secure_size)
            total[positions] = values
            sums[tier] = total
            outcomes[device] = DeviceOutcome("replied", train_bytes=100)
    opened = OpenedSums(sums=sums, devices=frozenset(sent)) if sums else None
    counts = server.accept_round(1, outcomes, sampled=2, opened=opened)
    assert counts["succeeded"] == 2
    row = server.item[3]
    np.testing.assert_allclose(row[:narrow], (10 * 1.5 + 30 * 2.5) / 40, rtol=1e-6)
    np.testing.assert_allclose(row[narrow:wide], 2.5, rtol=1e-6)   # only the wide device
    assert not row[wide:].any()
    np.testing.assert_array_equal(server.item[4, :wide], 0.5)      # untouched rows keep theirs
    assert [int(mask.sum()) for mask in server.masks] == [n_items * narrow, n_items * wide]


def test_a_cosine_schedule_decays_the_devices_learning_rate_over_the_rounds(fleet_config):
    cfg = fleet_config("fl.lr_schedule=cosine", "fl.rounds=4", "fl.lr=0.08")
    data = load_dataset(cfg.data.name)
    plan = plan_fleet(cfg, data)
    server = FleetServer(cfg, plan, np.zeros((data.n_items, 8), np.float32),
                         np.ones((data.n_items, 8), bool))
    rates = [server.device_config(r, [(0, 0)])["lr"] for r in (1, 2, 3, 4)]
    np.testing.assert_allclose(rates, [0.08, 0.08 * (1 + 2 ** -0.5) / 2, 0.04,
                                       0.08 * (1 - 2 ** -0.5) / 2])
    constant = FleetServer(fleet_config("fl.rounds=4", "fl.lr=0.08"), plan,
                           np.zeros((data.n_items, 8), np.float32),
                           np.ones((data.n_items, 8), bool))
    assert constant.device_config(3, [(0, 0)])["lr"] == 0.08


def test_sgd_item_steps_travel_with_their_cosine_rate_and_adam_messages_stay_as_before(
        fleet_config):
    cfg = fleet_config("fl.lr_schedule=cosine", "fl.rounds=4", "fl.item_optimizer=sgd",
                       "fl.item_lr=2")
    data = load_dataset(cfg.data.name)
    plan = plan_fleet(cfg, data)
    server = FleetServer(cfg, plan, np.zeros((data.n_items, 8), np.float32),
                         np.ones((data.n_items, 8), bool))
    config = server.device_config(3, [(0, 0)])
    assert config["tier-item-optimizer"] == ["sgd", "sgd"]
    assert config["tier-item-lr"] == pytest.approx([1.0, 1.0])
    adam_cfg = fleet_config("fl.lr_schedule=cosine", "fl.rounds=4")
    adam = FleetServer(adam_cfg, plan_fleet(adam_cfg, data),
                       np.zeros((data.n_items, 8), np.float32), np.ones((data.n_items, 8), bool))
    assert not {"tier-item-optimizer", "tier-item-lr"} & set(adam.device_config(3, [(0, 0)]))


def test_each_tier_sends_its_own_item_step(fleet_config):
    cfg = fleet_config("fl.lr_schedule=cosine", "fl.rounds=4", "fl.item_optimizer=sgd",
                       "fl.item_lr=2", "fl.tiers.small.item_optimizer=adam",
                       "fl.tiers.large.item_lr=6")
    data = load_dataset(cfg.data.name)
    plan = plan_fleet(cfg, data)
    server = FleetServer(cfg, plan, np.zeros((data.n_items, 8), np.float32),
                         np.ones((data.n_items, 8), bool))
    config = server.device_config(3, [(0, 0)])                  # tiers: small, then large
    assert config["tier-item-optimizer"] == ["adam", "sgd"]
    assert config["tier-item-lr"] == pytest.approx([1.0, 3.0])  # the cosine's half-way factor
