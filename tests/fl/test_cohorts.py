"""Cohort SuperNodes: a fleet gives the same files whatever the number of devices per
SuperNode, and each device's bytes are those of a message to it alone."""

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, MetricRecord, RecordDict

from fedsparse.cli import main
from fedsparse.config import dump_config
from fedsparse.data import load_dataset
from fedsparse.federated.fleet import cohort_of, plan_fleet
from fedsparse.federated.protocol import pack_updates, unpack_updates
from fedsparse.federated.server import FleetServer
from fedsparse.fl.client_app import train
from fedsparse.fl.records import arrays_record, message_bytes, record_arrays
from fedsparse.fl.strategy import SparseFedStrategy
from fedsparse.seeding import generator_for
from fedsparse.sparse.masks import random_mask

COHORT_FLEET = ("fl.rounds=4", "fl.clients_per_round=18", "fl.crash_prob=0.15",
                "fl.nmf_devices=12",                                          # sampled NMF
                "fl.offline_prob=0.1", "fl.offline_rounds=2", "fl.speed_jitter=0.5",
                "fl.deadline_seconds=0.09", "fl.eval_every=2", "fl.mask_interval=1",
                "fl.refit_steps=3",                        # evaluation refits too
                "fl.item_optimizer=sgd", "fl.item_lr=2",   # the item-step keys travel too, and
                "fl.tiers.small.budget_bytes=1300",        # SGD's stateless slices fit more:
                "fl.tiers.large.budget_bytes=1800")        # densities 0.35 and 0.74


@pytest.mark.slow
def test_one_device_per_supernode_and_auto_cohorts_write_the_same_files(fleet_config, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    runs = {}
    for per_node in (1, 0):
        config = tmp_path / f"fleet_{per_node}.toml"
        dump_config(fleet_config(*COHORT_FLEET, f"fl.devices_per_node={per_node}"), config)
        runs[per_node] = tmp_path / f"run_{per_node}"
        assert main(["simulate", str(config), "--out", str(runs[per_node])]) == 0
    assert len(list((runs[0] / "checkpoint" / "devices").iterdir())) == 2     # 2 cohorts
    assert len(list((runs[1] / "checkpoint" / "devices").iterdir())) > 2     # 1 device each
    for name in ("metrics.json", "clients.csv", "model.npz", "nmf_history.csv"):
        assert (runs[1] / name).read_bytes() == (runs[0] / name).read_bytes(), name
    nmf = pd.read_csv(runs[0] / "nmf_history.csv")          # a fresh sample of 12 each time
    assert (nmf["sent"] + nmf["dropped"] == 12).all() and (nmf["summed"] > 0).all()
    clients = pd.read_csv(runs[0] / "clients.csv")          # devices trained the SGD slices,
    assert (clients["rounds_participated"] > 0).any()      # which fit where Adam's would not
    assert (clients["train_bytes"] <= clients["budget_bytes"]).all()


def test_cohorts_split_the_fleet_in_order():
    assert [list(cohort_of(p, 5, 12)) for p in range(3)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9],
                                                             [10, 11]]
    with pytest.raises(ValueError, match="partition-id 3 holds no device"):
        cohort_of(3, 5, 12)


def test_each_device_is_charged_the_bytes_of_a_message_to_it_alone(server_identity,
                                                                   fleet_config):
    cfg = fleet_config("sparse.method=sparserec_no_nmf", "fl.privacy.training=plain")
    data = load_dataset(cfg.data.name)
    plan = plan_fleet(cfg, data)
    top = random_mask(data.n_items, cfg.model.dim, max(t.density for t in plan.tiers),
                      generator_for(0, 0, 0, "mask-init"))
    values = np.random.default_rng(0).normal(scale=0.1, size=top.shape).astype(np.float32)

    alone = SparseFedStrategy(FleetServer(cfg, plan, values, top, 1),
                              {100 + d: [d] for d in range(24)})
    messages = list(alone.configure_train(1, None, None, None))
    assert len(messages) == 24
    for message in messages:
        device = message.content["config"]["devices"][0]
        assert alone.server.ledger.down_bytes[device] == message_bytes(message.content)

    cohorts = {100 + p: list(cohort_of(p, 10, 24)) for p in range(3)}
    together = SparseFedStrategy(FleetServer(cfg, plan, values, top, 10), cohorts)
    messages = list(together.configure_train(1, None, None, None))
    assert len(messages) == 3
    assert np.array_equal(together.server.ledger.down_bytes, alone.server.ledger.down_bytes)
    replies = []
    for message in messages:
        context = Context(run_id=1, node_id=message.metadata.dst_node_id,
                          node_config={"partition-id": message.metadata.dst_node_id - 100},
                          state=RecordDict(), run_config={})
        replies.append(train(message, context))
    _, counts = together.aggregate_train(1, replies)
    assert counts["succeeded"] == 24
    for reply in replies:
        arrays, metrics = record_arrays(reply.content["updates"]), dict(reply.content["replies"])
        unpacked = unpack_updates(arrays, metrics, {device: 2 for device in arrays["devices"]})
        for device, (own_arrays, own_metrics) in unpacked.items():
            alone = pack_updates({device: (own_arrays, own_metrics)})
            message = RecordDict({"updates": arrays_record(alone[0]),
                                  "replies": MetricRecord(alone[1])})
            assert together.server.ledger.up_bytes[device] == message_bytes(message)


@pytest.mark.parametrize("overrides, message", [
    (("fl.devices_per_node=25",), "fl.devices_per_node: 25 is more than the 24 devices"),
    (("fl.devices_per_node=-1",), "fl.devices_per_node"),
    (("fl.ray_address=127.0.0.1:1",), "fl.ray_address: no Ray cluster reachable at 127.0.0.1:1"),
    (("fl.ray_address=nohost",), "fl.ray_address: 'nohost' is not host:port"),
    (("train.lr=0.5",), "train.lr: a fleet ignores it"),
    (("model.value_dtype=int8",), "model.value_dtype: a fleet ignores it"),
    (("fl.tiers.small.budget_bytes=10", "sparse.method=dense"),
     "fl.tiers.small.budget_bytes: too small for dense"),
])
def test_bad_cohort_and_cluster_keys_fail_in_one_line_before_anything_starts(
        fleet_config, tmp_path, capsys, overrides, message):
    config = tmp_path / "fleet.toml"
    dump_config(fleet_config(), config)
    out = tmp_path / "run"
    args = ["simulate", str(config), "--out", str(out)]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not out.exists()


def test_a_fleet_config_without_a_method_runs_sparserec(fleet_data_dir):
    from fedsparse.config import load_config
    assert load_config(None, [f"data.name={fleet_data_dir}"], fleet=True).sparse.method == \
        "sparserec"
    assert load_config(None, []).sparse.method == "dense"          # centralized default
