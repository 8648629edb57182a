"""Flower records of the federated protocol: encoding, decoding and validation.

Down (server -> device, TRAIN and EVALUATE): ``"item"``, an ``ArrayRecord`` with the tier's
sparse item slice as stored (``values``, ``row_counts``, ``index``), and ``"config"``, a
``ConfigRecord`` with the round, the device's id and tier and the local hyperparameters.

Up (device -> server, TRAIN): ``"update"``, an ``ArrayRecord`` with

* ``rows`` (T,) int32, ascending distinct item rows the device touched;
* ``values`` (E,) float32, its values at the tier mask's active entries of those rows, row by
  row in ascending column (E = the rows' active counts: the server knows the mask, so no
  per-value index travels);
* ``grow_cols`` (T, k) uint8, ``grow_scores`` (T, k) uint8 and ``grow_scale`` (1,) float32:
  per touched row, the k inactive entries with the largest accumulated |grad|, the scores
  quantised as ``round(255 * score / grow_scale)`` with ``grow_scale`` the reply's largest
  score (code 0: no entry; a score below 1/510 of the largest is dropped). One byte per score
  keeps the growth evidence small next to the values of the sparsest tier;

and ``"reply"``, a ``MetricRecord`` with ``device``, ``round``, ``tier-index``,
``num-examples``, ``loss``, ``train-bytes`` and ``sim-seconds`` (its work on the simulated
clock). :func:`decode_train_reply` checks all of it and
raises :class:`RejectedUpdate` with a one-line reason for anything malformed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsparse.sparse.federated import SparseUpdate
from fedsparse.sparse.storage import SparseEmbeddingTable
from fedsparse.train.device import DeviceUpdate, UserRow

#: Largest |value| or growth score accepted in an update.
MAX_ABS_VALUE = 1e4

UPDATE_ARRAYS = {"rows": (np.int32, 1), "values": (np.float32, 1), "grow_cols": (np.uint8, 2),
                 "grow_scores": (np.uint8, 2), "grow_scale": (np.float32, 1)}
#: Arrays of an update that are payload (the rest is index).
PAYLOAD_ARRAYS = ("values", "grow_scores", "grow_scale")
REPLY_METRICS = ("device", "round", "tier-index", "num-examples", "loss", "train-bytes",
                 "sim-seconds")


class RejectedUpdate(ValueError):
    """A device's reply that the server does not aggregate; the message is the reason."""


def arrays_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """An ``ArrayRecord`` of numpy arrays, keys in the given order."""
    return ArrayRecord({key: Array(np.ascontiguousarray(value)) for key, value in arrays.items()})


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The numpy arrays of an ``ArrayRecord``."""
    return {key: record[key].numpy() for key in record}


def message_bytes(content: RecordDict) -> int:
    """Bytes of a message's records, as Flower counts them (``count_bytes`` of each record)."""
    return sum(record.count_bytes() for record in content.values())


def slice_record(table: SparseEmbeddingTable) -> ArrayRecord:
    """The tier slice as it travels down."""
    return arrays_record(table.storage_arrays())


def slice_from_record(record: ArrayRecord, n_items: int, dim: int) -> SparseEmbeddingTable:
    """Rebuild the tier slice a device received."""
    arrays = record_arrays(record)
    return SparseEmbeddingTable.from_storage(n_items, dim, arrays["values"],
                                             arrays["row_counts"], arrays["index"])


def encode_update(update: DeviceUpdate, *, dim: int, topk: int) -> ArrayRecord:
    """The ``"update"`` record of a device's :class:`DeviceUpdate`."""
    rows = np.unique(update.entries // dim).astype(np.int32)
    grow_cols = np.zeros((len(rows), topk), np.uint8)
    grow_codes = np.zeros((len(rows), topk), np.uint8)
    grow_rows = update.grow_entries // dim
    slot = np.searchsorted(rows, grow_rows)                                       # (G,)
    rank = np.arange(len(grow_rows)) - np.searchsorted(grow_rows, grow_rows)      # (G,)
    scale = np.float32(min(update.grow_scores.max(initial=0.0), MAX_ABS_VALUE))
    grow_cols[slot, rank] = update.grow_entries % dim
    if scale > 0:
        grow_codes[slot, rank] = np.rint(255 * np.minimum(update.grow_scores, scale) / scale)
    return arrays_record({"rows": rows, "values": update.values, "grow_cols": grow_cols,
                          "grow_scores": grow_codes, "grow_scale": np.array([scale])})


def reply_metrics(update: DeviceUpdate, *, device: int, server_round: int, tier_index: int,
                  sim_seconds: float) -> MetricRecord:
    """The ``"reply"`` record of a training reply."""
    return MetricRecord({"device": device, "round": server_round, "tier-index": tier_index,
                         "num-examples": update.examples, "loss": float(update.loss),
                         "train-bytes": update.train_bytes, "sim-seconds": float(sim_seconds)})


@dataclass(frozen=True)
class Expected:
    """What the server expects of one device's training reply."""

    device: int
    server_round: int
    tier_index: int
    tier_mask: np.ndarray
    topk: int


def _check_arrays(arrays: dict[str, np.ndarray], topk: int) -> None:
    missing = sorted(set(UPDATE_ARRAYS) - set(arrays))
    extra = sorted(set(arrays) - set(UPDATE_ARRAYS))
    if missing:
        raise RejectedUpdate(f"missing array {missing[0]!r}")
    if extra:
        raise RejectedUpdate(f"unexpected array {extra[0]!r}")
    for key, (dtype, ndim) in UPDATE_ARRAYS.items():
        if arrays[key].dtype != dtype:
            raise RejectedUpdate(f"{key}: dtype {arrays[key].dtype}, expected {np.dtype(dtype)}")
        if arrays[key].ndim != ndim:
            raise RejectedUpdate(f"{key}: {arrays[key].ndim}-D, expected {ndim}-D")
    n_rows = len(arrays["rows"])
    if arrays["grow_scale"].shape != (1,):
        raise RejectedUpdate(f"grow_scale: shape {arrays['grow_scale'].shape}, expected (1,)")
    for key in ("grow_cols", "grow_scores"):
        if arrays[key].shape != (n_rows, topk):
            raise RejectedUpdate(f"{key}: shape {arrays[key].shape}, expected {(n_rows, topk)}")


def _check_metrics(metrics: MetricRecord, expected: Expected) -> float:
    missing = [key for key in REPLY_METRICS if key not in metrics]
    if missing:
        raise RejectedUpdate(f"missing metric {missing[0]!r}")
    for key, want in (("device", expected.device), ("round", expected.server_round),
                      ("tier-index", expected.tier_index)):
        if metrics[key] != want:
            raise RejectedUpdate(f"{key} {metrics[key]}, expected {want}")
    weight = float(metrics["num-examples"])
    if not np.isfinite(weight) or weight <= 0:
        raise RejectedUpdate(f"num-examples {metrics['num-examples']} is not positive")
    if not float(metrics["sim-seconds"]) >= 0.0:
        raise RejectedUpdate(f"sim-seconds {metrics['sim-seconds']} is not a duration")
    return weight


def decode_train_reply(reply: Message, expected: Expected) -> SparseUpdate:
    """Check a training reply against what was sent and decode it.

    Raises
    ------
    RejectedUpdate
        With the first problem found: an error reply, missing or extra records, arrays or
        metrics, a wrong dtype or shape, rows out of range, unsorted or repeated, a value count
        that does not match the tier mask, NaN/Inf or |x| > ``MAX_ABS_VALUE``, a growth column
        out of range or on an active entry, or another device's, round's or tier's reply.
    """
    if reply.has_error():
        raise RejectedUpdate(f"error reply: {reply.error.reason}")
    content = reply.content
    if set(content.keys()) != {"update", "reply"}:
        raise RejectedUpdate(f"records {sorted(content.keys())}, expected ['reply', 'update']")
    if not isinstance(content["update"], ArrayRecord) or not isinstance(content["reply"],
                                                                         MetricRecord):
        raise RejectedUpdate("records of the wrong kind")
    weight = _check_metrics(content["reply"], expected)
    arrays = record_arrays(content["update"])
    _check_arrays(arrays, expected.topk)
    mask = expected.tier_mask
    n_items, dim = mask.shape
    rows = arrays["rows"].astype(np.int64)
    if rows.size == 0:
        raise RejectedUpdate("no rows")
    if rows.min() < 0 or rows.max() >= n_items:
        raise RejectedUpdate(f"rows out of range [0, {n_items})")
    if (np.diff(rows) <= 0).any():
        raise RejectedUpdate("rows not ascending and distinct")
    row_mask = mask[rows]                                                        # (T, d)
    entries = (rows[:, None] * dim + np.arange(dim))[row_mask]                   # (E,)
    values = arrays["values"]
    if values.size != entries.size:
        raise RejectedUpdate(f"{values.size} values, the tier mask has {entries.size} there")
    scale = arrays["grow_scale"]
    for key, data in (("values", values), ("grow_scale", scale)):
        if not np.isfinite(data).all():
            raise RejectedUpdate(f"{key}: NaN or Inf")
        if (np.abs(data) > MAX_ABS_VALUE).any():
            raise RejectedUpdate(f"{key}: |x| above {MAX_ABS_VALUE:g}")
    if scale[0] < 0:
        raise RejectedUpdate("grow_scale: negative")
    scores = arrays["grow_scores"].astype(np.float32) * (scale[0] / 255)          # (T, k)
    cols = arrays["grow_cols"].astype(np.int64)
    live = scores > 0
    if (cols[live] >= dim).any():
        raise RejectedUpdate(f"grow_cols out of range [0, {dim})")
    grow_rows = np.broadcast_to(rows[:, None], cols.shape)[live]
    if row_mask[np.nonzero(live)[0], cols[live]].any():
        raise RejectedUpdate("grow_cols name an active entry")
    grow_entries = grow_rows * dim + cols[live]
    if np.unique(grow_entries).size != grow_entries.size:
        raise RejectedUpdate("grow_cols repeat an entry")
    order = np.argsort(grow_entries)
    return SparseUpdate(device=expected.device, weight=weight, entries=entries,
                        values=values.astype(np.float32), grow_entries=grow_entries[order],
                        grow_scores=scores[live][order])


def user_state_record(user: UserRow) -> ArrayRecord:
    """A device's user row and Adam state, for ``context.state``."""
    return arrays_record({"values": user.values, "exp_avg": user.exp_avg,
                          "exp_avg_sq": user.exp_avg_sq, "step": np.array([user.step])})


def user_from_state(record: ArrayRecord) -> UserRow:
    """Inverse of :func:`user_state_record`."""
    arrays = record_arrays(record)
    return UserRow(values=arrays["values"], exp_avg=arrays["exp_avg"],
                   exp_avg_sq=arrays["exp_avg_sq"], step=int(arrays["step"][0]))


def config_record(values: dict[str, int | float | str | bool]) -> ConfigRecord:
    """A ``ConfigRecord`` with numpy scalars cast to Python (Flower rejects numpy scalars)."""
    return ConfigRecord({key: value.item() if isinstance(value, np.generic) else value
                         for key, value in values.items()})
