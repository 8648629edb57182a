"""Flower records of the federated protocol: the engine-neutral protocol
(:mod:`fedsparse.federated.protocol`) carried in Flower's records, and the cohort layout.

A message goes to a SuperNode, which simulates a cohort of devices (one in a deployment); its
records are per tier or per device, named ``<kind>.<id>`` (:func:`device_key`):

* down (TRAIN, EVALUATE): ``"config"`` (the round, ``devices`` and ``device-tiers`` of the
  cohort's devices addressed, per-tier lists, the local hyperparameters) and ``item.<tier>``,
  the tier's sparse item slice as stored (``values``, ``row_counts``, ``index``), once per
  tier the cohort's devices need;
* up (TRAIN, plain): ``updates`` and ``replies``, the cohort's updates and metrics packed
  (:func:`~fedsparse.federated.protocol.pack_updates`), and ``errors`` (``devices``,
  ``reasons``, ``simulated``) for devices that failed;
* up (EVALUATE): ``metrics.<device>`` and, when the server asks (``export-user``: the final
  evaluation of a deployment with ``fl.privacy.export_user_rows``), ``user.<device>``;
* QUERY ``profile``: up ``profile`` with the cohort's ``devices``;
* QUERY ``secure-keys``: up ``key.<device>`` (a public key) per device;
* QUERY ``nmf`` (and ``nmf-resend``): down ``h`` (after the first step) and ``peers.<device>``
  (its mask peers' public keys), up ``nmf`` (``masked``: the sum of the masked contributions
  of the cohort's ``devices`` that sent one, mod 2^64);
* QUERY ``secure-reveal``: down ``dropped.<device>`` (dropped peers' public keys and the size
  of the sum to open), up ``reveal.<device>`` (the pair secrets with them);
* TRAIN under secure summation: down also ``peers.<device>``; up ``secure.<tier>`` (the masked
  sum of the cohort's devices of that tier, and their ``devices``) and ``replies`` (their clear
  metrics), or ``errors``; QUERY ``train-resend``: ``secure.<tier>`` again for some devices.

What one device sends and receives is its own records: the records a message to it alone
would carry (:func:`message_bytes` of those is what the byte ledger counts).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsparse.federated.secure_sum import KEY_BYTES
from fedsparse.sparse.storage import SparseEmbeddingTable

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


def keys_record(keys: dict[int, bytes], **extra: np.ndarray) -> ArrayRecord:
    """Device -> 32-byte key (public key or pair secret) as ``devices`` (m,) int64 and ``keys``
    (m, 32) uint8, in ascending device id, and any ``extra`` arrays."""
    devices = sorted(keys)
    table = np.frombuffer(b"".join(keys[device] for device in devices), np.uint8)
    return arrays_record({"devices": np.array(devices, np.int64),
                          "keys": table.reshape(len(devices), KEY_BYTES), **extra})


def record_keys(record: ArrayRecord) -> dict[int, bytes]:
    """The keys of a :func:`keys_record`, device -> bytes."""
    arrays = record_arrays(record)
    return {int(device): bytes(key) for device, key in zip(arrays["devices"], arrays["keys"])}


def device_key(kind: str, device: int | str) -> str:
    """The name of a per-device (or per-tier) record in a cohort message, ``<kind>.<id>``."""
    return f"{kind}.{device}"


def config_record(values: dict[str, int | float | str | bool]) -> ConfigRecord:
    """A ``ConfigRecord`` with numpy scalars cast to Python (Flower rejects numpy scalars)."""
    return ConfigRecord({key: value.item() if isinstance(value, np.generic) else value
                         for key, value in values.items()})
