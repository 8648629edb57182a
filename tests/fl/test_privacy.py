"""What leaves a device: a scan of every reply the server receives in a simulated run."""

import numpy as np
import pytest
from flwr.app import Message

from fedsparse.data import load_dataset
from fedsparse.federated.devices import items_of
from fedsparse.federated.fleet import plan_fleet
from fedsparse.fl.simulation import simulate

#: Fields exempt from the scan, each for what it is (README, privacy section).
EXEMPT = {"devices": "device ids of a cohort", "device": "the device's own id",
          "keys": "public keys and pair secrets (uniform bytes)",
          "masked": "masked vectors (uniform mod 2^64)"}
#: The numbers a device sends in the clear (README, privacy section).
CLEAR_METRICS = {"round", "tier-index", "loss", "train-bytes", "sim-seconds",       # training
                 "recall@20", "ndcg@20", "model-bytes", "n-test"}                    # evaluation


def integer_fields(message: Message):
    """(record, field, set of the integers it carries) for every array, config and metric
    value of a reply that is integer-valued and not exempt."""
    content = message.content
    for name, record in content.array_records.items():
        for key in record:
            array = record[key].numpy()
            if key in EXEMPT or array.size == 0:
                continue
            if array.dtype.kind in "iu" or (array.dtype.kind == "f" and
                                             np.all(np.isfinite(array)) and
                                             np.array_equal(array, np.round(array))):
                yield name, key, set(np.unique(array).astype(np.int64).tolist())
    for records in (content.config_records, content.metric_records):
        for name, record in records.items():
            for key, value in record.items():
                values = value if isinstance(value, list) else [value]
                if key not in EXEMPT and all(isinstance(v, (int, float)) for v in values):
                    yield name, key, {int(v) for v in values if float(v).is_integer()}


def leaks(replies: list[Message], fleet_items: dict[int, tuple[set, set]]) -> set[str]:
    """The fields of any reply that hold all of some device's training or test items."""
    found = set()
    for reply in replies:
        for name, key, values in integer_fields(reply):
            for train, test in fleet_items.values():
                if train <= values or test <= values:
                    found.add(f"{name}/{key}")
    return found


def run_observed(fleet_config, tmp_path, *overrides):
    cfg = fleet_config("fl.eval_every=1", *overrides)
    replies: list[Message] = []
    simulate(cfg, tmp_path / "run", observer=lambda sent, reply: replies.append(reply))
    data = load_dataset(cfg.data.name)
    users = plan_fleet(cfg, data).users
    items = {device: (set(items_of(data, "train", int(user)).tolist()),
                      set(items_of(data, "test", int(user)).tolist()))
             for device, user in enumerate(users)}
    return replies, items


@pytest.mark.slow
def test_no_reply_names_a_devices_items_under_secure_summation(fleet_config, tmp_path,
                                                             monkeypatch):
    """Profile, keys, federated NMF, training, reveal and evaluation replies of a run with
    crashes (so that secrets of dropped peers are revealed): no array, config or metric value
    holds a device's training or test items, and the clear numbers are the named ones."""
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    replies, items = run_observed(fleet_config, tmp_path, "fl.crash_prob=0.2",
                                  "fl.tiers.large.budget_bytes=4000")      # NMF masks
    kinds = {key.split(".")[0] for reply in replies for key in reply.content}
    assert {"profile", "key", "nmf", "secure", "reveal", "replies", "metrics"} <= kinds, kinds
    assert all(min(len(train), len(test)) >= 2 for train, test in items.values())
    assert leaks(replies, items) == set()
    clear = {key for reply in replies for record in reply.content.metric_records.values()
             for key in record}
    assert clear - {"devices", "device"} <= CLEAR_METRICS


@pytest.mark.slow
def test_the_scan_finds_the_touched_rows_of_plain_training(fleet_config, tmp_path,
                                                           monkeypatch):
    """The control: with ``fl.privacy.training = "plain"`` the training replies name the
    touched rows, and the scan says so."""
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    replies, items = run_observed(fleet_config, tmp_path, "fl.privacy.training=plain")
    assert "updates/rows" in leaks(replies, items)
