"""The wire protocol of a device's training reply, engine-neutral: plain arrays and metrics.

A device's update is a dict of arrays (the engine carries it as one record; Flower as an
``ArrayRecord``):

* ``rows`` (T,) int32, ascending distinct item rows the device touched;
* ``values`` (E,) float32, its values at the tier mask's active entries of those rows, row by
  row in ascending column (E = the rows' active counts: the server knows the mask, so no
  per-value index travels);
* ``grow_cols`` (T, k) uint8, ``grow_scores`` (T, k) uint8 and ``grow_scale`` (1,) float32:
  per touched row, the k inactive entries with the largest accumulated |grad|, the scores
  quantised as ``round(255 * score / grow_scale)`` with ``grow_scale`` the reply's largest
  score (code 0: no entry; a score below 1/510 of the largest is dropped). One byte per score
  keeps the growth evidence small next to the values of the sparsest tier;

and its metrics (``device``, ``round``, ``tier-index``, ``num-examples``, ``loss``,
``train-bytes``, ``sim-seconds``: its work on the simulated clock). :func:`decode_update`
checks all of it and raises :class:`RejectedUpdate` with a one-line reason for anything
malformed.

On the wire, the updates of a SuperNode's devices (one in a deployment) travel packed
(:func:`pack_updates`): each array of the devices' updates concatenated, flat, in ascending
device id, with ``devices``, ``n_rows`` and ``n_values`` per device, and each metric as a list.
:func:`unpack_updates` checks the pack and gives back each device's own arrays and metrics,
which the server then checks and accounts device by device. :func:`own_bytes` is what a
device's update costs on its own: the pack of it alone, as a deployed device sends it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import io
from functools import lru_cache

import numpy as np

from fedsparse.sparse.federated import SparseUpdate
from fedsparse.train.device import DeviceUpdate

#: Largest |value| or growth score accepted in an update.
MAX_ABS_VALUE = 1e4

UPDATE_ARRAYS = {"rows": (np.int32, 1), "values": (np.float32, 1), "grow_cols": (np.uint8, 2),
                 "grow_scores": (np.uint8, 2), "grow_scale": (np.float32, 1)}
#: Arrays of an update that are payload (the rest is index).
PAYLOAD_ARRAYS = ("values", "grow_scores", "grow_scale")
REPLY_METRICS = ("device", "round", "tier-index", "num-examples", "loss", "train-bytes",
                 "sim-seconds")
#: Under secure summation the examples travel inside the masked sum, not in the clear.
SECURE_REPLY_METRICS = tuple(key for key in REPLY_METRICS if key != "num-examples")


class RejectedUpdate(ValueError):
    """A device's reply that the server does not aggregate; the message is the reason."""


def encode_update(update: DeviceUpdate, *, dim: int, topk: int) -> dict[str, np.ndarray]:
    """The arrays of a device's :class:`DeviceUpdate`, as they travel up."""
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
    return {"rows": rows, "values": update.values, "grow_cols": grow_cols,
            "grow_scores": grow_codes, "grow_scale": np.array([scale])}


def reply_metrics(update: DeviceUpdate, *, device: int, server_round: int, tier_index: int,
                  sim_seconds: float) -> dict[str, int | float]:
    """The metrics of a training reply (Python numbers)."""
    return {"device": device, "round": server_round, "tier-index": tier_index,
            "num-examples": update.examples, "loss": float(update.loss),
            "train-bytes": update.train_bytes, "sim-seconds": float(sim_seconds)}


@dataclass(frozen=True)
class Expected:
    """What the server expects of one device's training reply."""

    device: int
    server_round: int
    tier_index: int
    tier_mask: np.ndarray
    topk: int


def _check_arrays(arrays: Mapping[str, np.ndarray], topk: int) -> None:
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


def _check_metrics(metrics: Mapping[str, int | float], expected: Expected) -> float:
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


def decode_update(arrays: Mapping[str, np.ndarray], metrics: Mapping[str, int | float],
                  expected: Expected) -> SparseUpdate:
    """Check a device's training reply against what was sent and decode it.

    Raises
    ------
    RejectedUpdate
        With the first problem found: missing or extra arrays or metrics, a wrong dtype or
        shape, rows out of range, unsorted or repeated, a value count that does not match the
        tier mask, NaN/Inf or |x| > ``MAX_ABS_VALUE``, a growth column out of range or on an
        active entry, or another device's, round's or tier's reply.
    """
    weight = _check_metrics(metrics, expected)
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


def npy_bytes(array: np.ndarray) -> int:
    """Bytes of ``array`` serialised in NumPy's ``.npy`` format (header and data), as engines
    carry arrays (Flower's ``Array``)."""
    return _npy_header_bytes(array.dtype.str, array.shape) + array.nbytes


@lru_cache(maxsize=65536)
def _npy_header_bytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of the ``.npy`` header of a C-ordered array (it depends on dtype and shape only)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False,
                                                  "shape": shape})
    return len(header.getvalue())


def own_bytes(arrays: Mapping[str, np.ndarray], metrics: Mapping[str, int | float]) -> int:
    """Bytes of one device's update on its own: the pack of it alone (what a deployed device
    sends), each array in ``.npy`` format plus its key, each metric value 8 bytes plus the
    key's (how Flower's ``count_bytes`` counts an ``ArrayRecord`` and a ``MetricRecord``; a
    test checks it)."""
    packed, listed = pack_updates({0: (dict(arrays), dict(metrics))})
    return (sum(npy_bytes(array) + len(key) for key, array in packed.items())
            + sum(8 * len(values) + len(key) for key, values in listed.items()))


def pack_updates(updates: dict[int, tuple[dict[str, np.ndarray], dict[str, int | float]]]
                 ) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """The updates of several devices (device -> its arrays and metrics, as
    :func:`encode_update` and :func:`reply_metrics` give them) as one pack: each array
    concatenated as it is, in ascending device id (the (T, k) growth arrays flattened), and
    one list per metric every device has. Nothing is checked here: :func:`unpack_updates` is
    where a pack is judged."""
    devices = sorted(updates)
    parts = [updates[device] for device in devices]
    arrays = {"devices": np.array(devices, np.int64),
              "n_rows": np.array([len(a["rows"]) for a, _ in parts], np.int32),
              "n_values": np.array([len(a["values"]) for a, _ in parts], np.int32)}
    for key in sorted({key for a, _ in parts for key in a}):
        pieces = [a[key] for a, _ in parts if key in a]
        if UPDATE_ARRAYS.get(key, (None, 1))[1] == 2:
            pieces = [piece.reshape(-1) for piece in pieces]
        arrays[key] = np.concatenate(pieces)
    metrics = {key: [m[key] for _, m in parts] for key in REPLY_METRICS
               if all(key in m for _, m in parts)}
    return arrays, metrics


def _spans(counts: np.ndarray) -> list[slice]:
    ends = np.cumsum(counts)
    return [slice(int(end - count), int(end)) for end, count in zip(ends, counts)]


def unpack_updates(arrays: Mapping[str, np.ndarray], metrics: Mapping[str, list],
                   topk: Mapping[int, int]) -> dict[int, tuple[dict[str, np.ndarray],
                                                              dict[str, int | float]]]:
    """Each device's own arrays and metrics from a pack (:func:`pack_updates`); ``topk``
    maps each device the pack may hold to the growth scores per touched row it must send.

    Raises
    ------
    RejectedUpdate
        The pack itself is malformed (a missing or extra array or metric, a wrong dtype or
        rank, counts that do not add up, a device that was not asked): none of its devices'
        updates can be trusted.
    """
    expected = {"devices": np.int64, "n_rows": np.int32, "n_values": np.int32,
                **{key: dtype for key, (dtype, _) in UPDATE_ARRAYS.items()}}
    missing = [key for key in expected if key not in arrays]
    extra = sorted(set(arrays) - set(expected))
    if missing:
        raise RejectedUpdate(f"missing array {missing[0]!r}")
    if extra:
        raise RejectedUpdate(f"unexpected array {extra[0]!r}")
    for key, dtype in expected.items():
        if arrays[key].dtype != dtype:
            raise RejectedUpdate(f"{key}: dtype {arrays[key].dtype}, expected {np.dtype(dtype)}")
        if arrays[key].ndim != 1:
            raise RejectedUpdate(f"{key}: {arrays[key].ndim}-D, expected 1-D")
    devices = arrays["devices"].tolist()
    if any(device not in topk for device in devices) or len(set(devices)) != len(devices):
        raise RejectedUpdate(f"devices {devices[:3]}: unknown or repeated")
    n_rows, n_values = arrays["n_rows"].astype(np.int64), arrays["n_values"].astype(np.int64)
    if not len(n_rows) == len(n_values) == len(devices) or min(n_rows.min(initial=0),
                                                               n_values.min(initial=0)) < 0:
        raise RejectedUpdate("n_rows, n_values: one count >= 0 per device expected")
    ks = np.array([topk[device] for device in devices], dtype=np.int64)
    for key, want in (("rows", n_rows.sum()), ("values", n_values.sum()),
                      ("grow_cols", (n_rows * ks).sum()), ("grow_scores", (n_rows * ks).sum()),
                      ("grow_scale", len(devices))):
        if len(arrays[key]) != want:
            raise RejectedUpdate(f"{key}: shape {arrays[key].shape}, expected ({want},)")
    for key in REPLY_METRICS:
        if key not in metrics:
            raise RejectedUpdate(f"missing metric {key!r}")
        if len(metrics[key]) != len(devices):
            raise RejectedUpdate(f"metric {key!r}: {len(metrics[key])} values for "
                                 f"{len(devices)} devices")
    rows, values, grow = _spans(n_rows), _spans(n_values), _spans(n_rows * ks)
    return {device: ({"rows": arrays["rows"][rows[i]], "values": arrays["values"][values[i]],
                      "grow_cols": arrays["grow_cols"][grow[i]].reshape(n_rows[i], ks[i]),
                      "grow_scores": arrays["grow_scores"][grow[i]].reshape(n_rows[i], ks[i]),
                      "grow_scale": arrays["grow_scale"][i:i + 1]},
                     {key: metrics[key][i] for key in REPLY_METRICS})
            for i, device in enumerate(devices)}


def pack_secure_metrics(metrics: dict[int, dict[str, int | float]]) -> dict[str, list]:
    """The clear metrics (:data:`SECURE_REPLY_METRICS`) of a SuperNode's devices under secure
    summation, one list per metric in ascending device id."""
    devices = sorted(metrics)
    return {key: [metrics[device][key] for device in devices] for key in SECURE_REPLY_METRICS}


def unpack_secure_metrics(listed: Mapping[str, list], sent: list[int],
                          server_round: int) -> dict[int, dict[str, int | float]]:
    """Each device's clear metrics from :func:`pack_secure_metrics`.

    Raises
    ------
    RejectedUpdate
        A metric missing or of the wrong length, a device that was not asked or repeated, or
        another round's reply.
    """
    missing = [key for key in SECURE_REPLY_METRICS if key not in listed]
    if missing:
        raise RejectedUpdate(f"missing metric {missing[0]!r}")
    devices = [int(device) for device in listed["device"]]
    if any(device not in sent for device in devices) or len(set(devices)) != len(devices):
        raise RejectedUpdate(f"devices {devices[:3]}: unknown or repeated")
    for key in SECURE_REPLY_METRICS:
        if len(listed[key]) != len(devices):
            raise RejectedUpdate(f"metric {key!r}: {len(listed[key])} values for "
                                 f"{len(devices)} devices")
    if any(int(value) != server_round for value in listed["round"]):
        raise RejectedUpdate(f"round {listed['round'][0]}, expected {server_round}")
    return {device: {key: listed[key][i] for key in SECURE_REPLY_METRICS}
            for i, device in enumerate(devices)}


def secure_own_bytes(size: int, metrics: Mapping[str, int | float]) -> int:
    """Bytes a deployed device sends in a secure training round: its masked vector (``size``
    uint64 and its one-entry ``devices`` list, under ``masked``/``devices``) and its clear
    metrics, counted as :func:`own_bytes` counts them."""
    arrays = {"masked": (np.uint64, size), "devices": (np.int64, 1)}     # dtype, length
    return (sum(_npy_header_bytes(np.dtype(dtype).str, (length,)) + 8 * length + len(key)
                for key, (dtype, length) in arrays.items())
            + sum(8 + len(key) for key in metrics))
