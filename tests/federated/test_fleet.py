"""The fleet plan: devices, tiers by share or file, densities from budgets, one-line errors."""

import numpy as np
import pytest
import torch

from fedsparse.config import load_config
from fedsparse.errors import ConfigError
from fedsparse.federated.fleet import fleet_users, plan_fleet, shares_to_tiers
from fedsparse.sparse.budget import table_bytes


def test_shares_split_devices_by_largest_remainder_in_seeded_order():
    tiers = shares_to_tiers(10, [0.25, 0.25, 0.5], seed=0)
    assert np.bincount(tiers).tolist() == [3, 2, 5] or np.bincount(tiers).tolist() == [2, 3, 5]
    assert np.array_equal(tiers, shares_to_tiers(10, [0.25, 0.25, 0.5], seed=0))
    assert not np.array_equal(tiers, shares_to_tiers(10, [0.25, 0.25, 0.5], seed=1))


def test_plan_orders_tiers_by_budget_and_fits_each_budget(fleet_config, fleet_data):
    plan = plan_fleet(fleet_config(), fleet_data)
    assert [tier.name for tier in plan.tiers] == ["small", "large"]
    assert plan.n_devices == fleet_data.n_users
    assert np.bincount(plan.device_tier).tolist() == [12, 12]
    for tier in plan.tiers:
        nnz = round(tier.density * fleet_data.n_items * 8)
        assert table_bytes(fleet_data.n_items, 8, nnz) + plan.reserve_bytes <= tier.budget_bytes
        if tier.density < 1.0:                                  # the next entry would not fit
            assert (table_bytes(fleet_data.n_items, 8, nnz + 1) + plan.reserve_bytes
                    > tier.budget_bytes)
    assert plan.tiers[0].density < plan.tiers[1].density


def test_an_sgd_item_slice_fits_more_entries_in_each_budget(fleet_config, fleet_data):
    adam = plan_fleet(fleet_config(), fleet_data)
    sgd = plan_fleet(fleet_config("fl.item_optimizer=sgd"), fleet_data)
    assert sgd.reserve_bytes == adam.reserve_bytes                # the user row keeps Adam
    assert sgd.tiers[0].density > adam.tiers[0].density
    for tier, adam_tier in zip(sgd.tiers, adam.tiers):
        nnz = round(tier.density * fleet_data.n_items * 8)
        assert tier.density > adam_tier.density or tier.density == 1.0
        assert (table_bytes(fleet_data.n_items, 8, nnz, torch.optim.SGD) + sgd.reserve_bytes
                <= tier.budget_bytes)
        if tier.density < 1.0:                                  # the next entry would not fit
            assert (table_bytes(fleet_data.n_items, 8, nnz + 1, torch.optim.SGD)
                    + sgd.reserve_bytes > tier.budget_bytes)


def test_a_tier_sizes_its_slice_for_its_own_item_step(fleet_config, fleet_data):
    adam = plan_fleet(fleet_config(), fleet_data)
    sgd = plan_fleet(fleet_config("fl.item_optimizer=sgd"), fleet_data)
    mixed = plan_fleet(fleet_config("fl.item_optimizer=sgd", "fl.tiers.small.item_optimizer=adam",
                                    "fl.tiers.large.item_lr=5"), fleet_data)
    assert [tier.item_optimizer for tier in mixed.tiers] == ["adam", "sgd"]
    assert [tier.item_lr for tier in mixed.tiers] == [1.0, 5.0]           # 1: fl.item_lr
    assert mixed.tiers[0].density == adam.tiers[0].density
    assert mixed.tiers[1].density == sgd.tiers[1].density


def test_a_tier_item_step_must_be_known(fleet_config):
    with pytest.raises(ConfigError, match="fl.tiers.small.item_optimizer"):
        fleet_config("fl.tiers.small.item_optimizer=lion")


def test_a_tier_too_small_to_open_its_secure_sum_is_a_config_error(fleet_config, fleet_data):
    with pytest.raises(ConfigError, match="more than the 12 devices of tier small"):
        plan_fleet(fleet_config("fl.privacy.min_aggregate=13"), fleet_data)
    plan_fleet(fleet_config("fl.privacy.min_aggregate=13", "fl.privacy.training=plain"),
               fleet_data)                                  # plain replies are not summed


def test_max_devices_samples_the_fleet_by_seed(fleet_config, fleet_data):
    plan = plan_fleet(fleet_config("fl.max_devices=10"), fleet_data)
    assert plan.n_devices == 10 and np.all(np.diff(plan.users) > 0)
    assert np.array_equal(plan.users, fleet_users(fleet_data, 10, seed=0))
    assert not np.array_equal(plan.users, fleet_users(fleet_data, 10, seed=1))
    assert np.array_equal(fleet_users(fleet_data, 0), fleet_users(fleet_data, 100))


def test_a_tier_may_send_fewer_growth_scores(fleet_config, fleet_data):
    plan = plan_fleet(fleet_config("fl.tiers.small.growth_topk=1"), fleet_data)
    assert [tier.growth_topk for tier in plan.tiers] == [1, 2]


def test_dense_fedavg_holds_the_full_table(fleet_config, fleet_data):
    plan = plan_fleet(fleet_config("sparse.method=dense"), fleet_data)
    assert all(tier.density == 1.0 for tier in plan.tiers)


def test_tier_file_assigns_devices(fleet_config, fleet_data, tmp_path):
    path = tmp_path / "tiers.csv"
    path.write_text("device_id,tier\n" + "".join(f"{d},{'large' if d < 5 else 'small'}\n"
                                                for d in range(fleet_data.n_users)))
    plan = plan_fleet(fleet_config(f"fl.tier_file={path}"), fleet_data)
    assert plan.device_tier[:5].tolist() == [1] * 5 and (plan.device_tier[5:] == 0).all()


@pytest.mark.parametrize(("overrides", "message"), [
    (["fl.tiers.small.budget_bytes=500"], "fl.tiers.small.budget_bytes: too small"),
    (["sparse.method=rigl"], "sparse.method: a fleet runs one of"),
    (["model.name=lightgcn"], "model.name: fleets train mf"),
    (["fl.clients_per_round=1000"], "fl.clients_per_round: 1000 is more than the 24 devices"),
    (["fl.tier_file=/nonexistent.csv"], "fl.tier_file: /nonexistent.csv not found"),
])
def test_bad_fleets_fail_with_one_line_naming_the_key(fleet_config, fleet_data, overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan_fleet(fleet_config(*overrides), fleet_data)


def test_tier_file_must_name_known_tiers_and_every_device(fleet_config, fleet_data, tmp_path):
    path = tmp_path / "tiers.csv"
    path.write_text("device_id,tier\n0,medium\n")
    with pytest.raises(ConfigError, match="unknown tier 'medium'"):
        plan_fleet(fleet_config(f"fl.tier_file={path}"), fleet_data)
    path.write_text("device_id,tier\n0,small\n")
    with pytest.raises(ConfigError, match="each device id 0..23 once"):
        plan_fleet(fleet_config(f"fl.tier_file={path}"), fleet_data)


@pytest.mark.parametrize(("overrides", "message"), [
    (["fl.tiers.a.share=0.5", "fl.tiers.a.budget_bytes=10"], "fl.tiers: shares must sum to 1"),
    (["fl.tiers.a.budget=10"], "fl.tiers.a.budget: unknown key"),
    (["fl.tiers.a=3"], "fl.tiers.a: expected a table"),
    (["fl.rounds=0"], "fl.rounds: must be >= 1"),
    (["fl.crash_prob=1.0"], "fl.crash_prob: must be < 1"),
    (["fl.min_success=2"], "fl.min_success: must be <= 1"),
    (["fl.deadline_seconds=-1"], "fl.deadline_seconds: must be >= 0"),
    (["fl.tiers.a.steps_per_second=0"], "fl.tiers.a.steps_per_second: must be > 0"),
])
def test_fleet_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
