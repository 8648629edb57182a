"""The packed wire format of a cohort's updates: round trip, malformed packs, own bytes."""

import numpy as np
import pytest
from flwr.app import MetricRecord

from fedsparse.federated.protocol import (RejectedUpdate, own_bytes, pack_updates,
                                          unpack_updates)
from fedsparse.fl.records import arrays_record


def _update(device, n_rows, k):
    arrays = {"rows": np.arange(n_rows, dtype=np.int32) * 2,
              "values": np.linspace(0, 1, 3 * n_rows, dtype=np.float32),
              "grow_cols": np.full((n_rows, k), 5, np.uint8),
              "grow_scores": np.full((n_rows, k), 9, np.uint8),
              "grow_scale": np.array([0.5 + device], np.float32)}
    metrics = {"device": device, "round": 3, "tier-index": k, "num-examples": 4 + device,
               "loss": 0.25, "train-bytes": 1000, "sim-seconds": 0.5}
    return arrays, metrics


def test_a_pack_gives_back_each_devices_own_update():
    updates = {7: _update(7, 3, 2), 2: _update(2, 1, 1), 5: _update(5, 0, 0)}
    arrays, metrics = pack_updates(updates)
    assert arrays["devices"].tolist() == [2, 5, 7]
    back = unpack_updates(arrays, metrics, {2: 1, 5: 0, 7: 2, 9: 1})
    assert sorted(back) == [2, 5, 7]
    for device, (own_arrays, own_metrics) in back.items():
        want_arrays, want_metrics = updates[device]
        assert own_metrics == want_metrics
        for key, value in want_arrays.items():
            assert own_arrays[key].dtype == value.dtype and np.array_equal(own_arrays[key], value)


@pytest.mark.parametrize("mutate, reason", [
    (lambda a, m: a.pop("values"), "missing array 'values'"),
    (lambda a, m: a.update(extra=np.zeros(1)), "unexpected array 'extra'"),
    (lambda a, m: a.update(rows=a["rows"].astype(np.int64)), "rows: dtype int64"),
    (lambda a, m: a.update(n_rows=a["n_rows"] + 1), "rows: shape"),
    (lambda a, m: a.update(devices=np.array([2, 2], np.int64)), "unknown or repeated"),
    (lambda a, m: m.pop("loss"), "missing metric 'loss'"),
    (lambda a, m: m.update(loss=[0.1]), "metric 'loss': 1 values for 2 devices"),
])
def test_a_malformed_pack_is_rejected_whole(mutate, reason):
    arrays, metrics = pack_updates({2: _update(2, 2, 1), 4: _update(4, 1, 1)})
    mutate(arrays, metrics)
    with pytest.raises(RejectedUpdate, match=reason):
        unpack_updates(arrays, metrics, {2: 1, 4: 1})


def test_own_bytes_are_flowers_count_of_the_pack_of_one_device():
    arrays, metrics = _update(3, 4, 2)
    alone = pack_updates({3: (arrays, metrics)})
    flower = arrays_record(alone[0]).count_bytes() + MetricRecord(alone[1]).count_bytes()
    assert own_bytes(arrays, metrics) == flower
