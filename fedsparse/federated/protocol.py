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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
