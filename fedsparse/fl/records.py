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
* QUERY ``secure-keys``: up ``key``, the public key of each of the cohort's devices that
  answers (:func:`keys_record`);
* QUERY ``nmf`` (and ``nmf-resend``): down ``h`` (after the first step) and ``peers``, the mask
  peers of each addressed device with their public keys (:func:`peers_record`), up ``nmf``
  (``masked``: the sum of the masked contributions of the cohort's ``devices`` that sent one,
  mod 2^64);
* QUERY ``secure-reveal``: down ``dropped.<device>`` (dropped peers' public keys and the size
  of the sum to open), up ``reveal.<device>`` (the pair secrets with them);
* TRAIN under secure summation: down also ``peers``; up ``secure.<tier>`` (the masked
  sum of the cohort's devices of that tier, and their ``devices``) and ``replies`` (their clear
  metrics), or ``errors``; QUERY ``train-resend``: ``secure.<tier>`` again for some devices.

What one device sends and receives is its own records: the records a message to it alone
would carry (:func:`message_bytes` of those is what the byte ledger counts). The cohort's keys
and peers travel as one record each, not one per device: building, counting and reading
1,878 devices' peer records took 0.5 to 1.5 s of every secure LastFM round, one record per
cohort 0.01 to 0.04 s.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsparse.federated.secure_sum import KEY_BYTES
from fedsparse.sparse.storage import SparseEmbeddingTable

#: Names of a cohort's public keys (up) and of its devices' mask peers (down).
KEY_RECORD, PEERS_RECORD = "key", "peers"


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


def peers_record(peers: dict[int, list[int]], public: Mapping[int, bytes]) -> ArrayRecord:
    """Devices' mask peers with the peers' public keys: ``devices`` (m,) int64 ascending,
    ``counts`` (m,) int64 peers of each, then ``peers`` (P,) int64 and ``keys`` (P, 32) uint8,
    the peers of each device in turn (``peers`` device -> its peers, ``public`` peer -> public
    key)."""
    devices = sorted(peers)
    listed = [peer for device in devices for peer in peers[device]]
    table = np.frombuffer(b"".join(public[peer] for peer in listed), np.uint8)
    return arrays_record({"devices": np.array(devices, np.int64),
                          "counts": np.array([len(peers[device]) for device in devices],
                                             np.int64),
                          "peers": np.array(listed, np.int64),
                          "keys": table.reshape(len(listed), KEY_BYTES)})


def record_peers(record: ArrayRecord) -> dict[int, dict[int, bytes]]:
    """The peers of a :func:`peers_record`: device -> (peer -> public key)."""
    arrays = record_arrays(record)
    ends = np.cumsum(arrays["counts"])
    peers, keys = arrays["peers"].tolist(), arrays["keys"]
    return {int(device): {peers[i]: bytes(keys[i]) for i in range(end - count, end)}
            for device, count, end in zip(arrays["devices"], arrays["counts"], ends)}


def named_record_bytes(key: str, record: ArrayRecord) -> int:
    """Bytes of one record as Flower counts it, with its key."""
    return record.count_bytes() + len(key)


@lru_cache(maxsize=64)
def own_peers_bytes(count: int) -> int:
    """Bytes of the :data:`PEERS_RECORD` that a message to one device with ``count`` mask peers
    carries, with its key (they depend on the count alone)."""
    fake = {peer: bytes(KEY_BYTES) for peer in range(1, count + 1)}
    return named_record_bytes(PEERS_RECORD, peers_record({0: list(fake)}, fake))


@lru_cache(maxsize=1)
def own_key_bytes() -> int:
    """Bytes of the :data:`KEY_RECORD` one device sends, with its key."""
    return named_record_bytes(KEY_RECORD, keys_record({0: bytes(KEY_BYTES)}))


def device_key(kind: str, device: int | str) -> str:
    """The name of a per-device (or per-tier) record in a cohort message, ``<kind>.<id>``."""
    return f"{kind}.{device}"


def config_record(values: dict[str, int | float | str | bool]) -> ConfigRecord:
    """A ``ConfigRecord`` with numpy scalars cast to Python (Flower rejects numpy scalars)."""
    return ConfigRecord({key: value.item() if isinstance(value, np.generic) else value
                         for key, value in values.items()})
