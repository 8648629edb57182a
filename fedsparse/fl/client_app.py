"""The ClientApp: a SuperNode that simulates a cohort of devices (one in a deployment).

Its ``partition-id`` (node config) and the ``devices-per-node`` the server sends say which
devices it is (:func:`~fedsparse.federated.fleet.cohort_of`); device i is the fleet's i-th
user. Everything else arrives in the message's ``"config"`` record (dataset, round, seed, the
devices addressed and their tiers, local hyperparameters), so the same app runs under
``fedsparse simulate``, ``flwr run`` and real SuperNodes. The cohort's private state between
rounds (user rows, Adam state, NMF rows) lives in ``context.state`` and, when the server names
a ``state-dir``, in a state file per round (:mod:`fedsparse.federated.checkpoint`), from which
a restarted cohort resumes; the dataset is a read-only per-process cache. This module only
turns records into calls of the device half (:mod:`fedsparse.federated.devices`) and back.

Handlers:

* ``train``: the addressed devices train together on their tiers' slices; each replies with
  its sparse update, or an error (offline, crashed, over budget).
* ``evaluate``: each addressed device ranks all items with its own sparse model.
* ``query``: ``question = "profile"`` (the cohort's device ids) or ``"nmf"`` (one federated
  NMF step of each device).
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsparse.data import InteractionData, load_dataset
from fedsparse.federated.checkpoint import persist_cohort_state, restore_cohort_state
from fedsparse.federated.devices import (CohortState, TrainRound, evaluate_devices, nmf_devices,
                                         train_devices)
from fedsparse.federated.faults import FaultModel
from fedsparse.federated.fleet import cohort_of, fleet_users
from fedsparse.federated.protocol import pack_updates
from fedsparse.fl.records import arrays_record, device_key, record_arrays, slice_from_record
from fedsparse.sparse import SparseEmbeddingTable
from fedsparse.train.device import LocalTraining

logger = logging.getLogger(__name__)

app = ClientApp()


@lru_cache(maxsize=2)
def _load(name: str, split: str, max_items: int) -> InteractionData:
    """The dataset, loaded once per process (read-only)."""
    return load_dataset(name, split, max_items)


@lru_cache(maxsize=2)
def _users(name: str, split: str, max_items: int, max_devices: int, seed: int) -> np.ndarray:
    """The fleet's users (device i is user ``[i]``), computed once per process."""
    return fleet_users(_load(name, split, max_items), max_devices, seed)


def _fleet(config: ConfigRecord) -> tuple[InteractionData, np.ndarray]:
    """The dataset and fleet users the message's fleet identity names."""
    key = (str(config["dataset"]), str(config["split"]), int(config["max-items"]))
    return _load(*key), _users(*key, int(config["max-devices"]), int(config["seed"]))


def _cohort(context: Context, config: ConfigRecord, n_devices: int) -> range:
    return cohort_of(int(context.node_config["partition-id"]), int(config["devices-per-node"]),
                     n_devices)


def _devices(config: ConfigRecord, cohort: range) -> list[int]:
    """The devices the message addresses, each checked to be of this cohort."""
    devices = [int(device) for device in config["devices"]]
    strangers = [device for device in devices if device not in cohort]
    if strangers:
        raise ValueError(f"device {strangers[0]} is not simulated by this SuperNode "
                         f"(devices {cohort.start}..{cohort.stop - 1})")
    return devices


def _addressed(config: ConfigRecord, cohort: range) -> list[tuple[int, int]]:
    """The (device, tier) pairs the message addresses."""
    return list(zip(_devices(config, cohort), (int(tier) for tier in config["device-tiers"])))


def _state(context: Context, config: ConfigRecord, cohort: range, up_to_round: int) -> CohortState:
    """The cohort's private rows: kept in ``context.state``; after a restart, restored from
    its state file of the latest round <= ``up_to_round``; else every device's seeded row."""
    if "cohort" in context.state:
        return CohortState.from_arrays(record_arrays(context.state["cohort"]))
    devices = np.arange(cohort.start, cohort.stop)
    state_dir = str(config.get("state-dir", ""))
    restored = restore_cohort_state(state_dir, devices, up_to_round) if state_dir else None
    if restored is not None:
        return CohortState.from_arrays(restored)
    return CohortState.initial(cohort, int(config["seed"]), int(config["dim"]),
                               float(config["init-std"]))


def _tables(msg: Message, pairs: list[tuple[int, int]], n_items: int,
            dim: int) -> dict[int, SparseEmbeddingTable]:
    return {tier: slice_from_record(msg.content[device_key("item", tier)], n_items, dim)
            for tier in sorted({tier for _, tier in pairs})}


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training of the addressed devices; each replies with its sparse
    update, or with an error when it is offline, crashes or would exceed its budget (its
    state then stays as it was)."""
    config = msg.content["config"]
    torch.set_num_threads(int(config["threads"]))     # the client's CPUs; more oversubscribe
    data, users = _fleet(config)
    cohort = _cohort(context, config, len(users))
    pairs = _addressed(config, cohort)
    server_round, dim = int(config["round"]), int(config["dim"])
    state = _state(context, config, cohort, server_round - 1)
    spec = TrainRound(
        server_round=server_round, seed=int(config["seed"]),
        hp=LocalTraining(local_epochs=int(config["local-epochs"]),
                         batch_size=int(config["batch-size"]), lr=float(config["lr"]),
                         l2=float(config["l2"]), negatives=int(config["negatives"]),
                         growth_topk=0),
        tier_budget_bytes=[int(b) for b in config["tier-budget-bytes"]],
        tier_growth_topk=[int(k) for k in config["tier-growth-topk"]],
        tier_steps_per_second=[float(s) for s in config["tier-steps-per-second"]],
        faults=FaultModel(crash_prob=float(config["crash-prob"]),
                          offline_prob=float(config["offline-prob"]),
                          offline_rounds=int(config["offline-rounds"]),
                          speed_jitter=float(config["speed-jitter"])))
    replies = train_devices(data, users, state, pairs, _tables(msg, pairs, data.n_items, dim),
                            spec)
    context.state["cohort"] = arrays_record(state.arrays())
    if "state-dir" in config and any(reply.error == "" for reply in replies.values()):
        persist_cohort_state(str(config["state-dir"]), server_round, state.arrays())
    content = RecordDict()
    failed = sorted(device for device, reply in replies.items() if reply.error)
    if failed:
        content["errors"] = ConfigRecord({
            "devices": failed, "reasons": [replies[device].error for device in failed],
            "simulated": [replies[device].simulated_fault for device in failed]})
    updates = {device: (reply.arrays, reply.metrics) for device, reply in replies.items()
               if not reply.error}
    if updates:
        arrays, metrics = pack_updates(updates)
        content["updates"], content["replies"] = arrays_record(arrays), MetricRecord(metrics)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Each addressed device ranks every item with its own sparse model."""
    config = msg.content["config"]
    torch.set_num_threads(int(config["threads"]))
    data, users = _fleet(config)
    cohort = _cohort(context, config, len(users))
    pairs = _addressed(config, cohort)
    state = _state(context, config, cohort, int(config["round"]))
    results = evaluate_devices(data, users, state, pairs,
                               _tables(msg, pairs, data.n_items, int(config["dim"])),
                               int(config["topk"]))
    content = RecordDict()
    for device, metrics in results.items():
        content[device_key("metrics", device)] = MetricRecord(metrics)
        if bool(config.get("export-user", False)):
            content[device_key("user", device)] = arrays_record(
                {"values": state.row(device).values})
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """``profile`` (the cohort's devices) or one ``nmf`` step of the addressed devices."""
    config = msg.content["config"]
    question = str(config["question"])
    data, users = _fleet(config)
    cohort = _cohort(context, config, len(users))
    if question == "profile":
        profile = MetricRecord({"devices": list(cohort)})
        return Message(content=RecordDict({"profile": profile}), reply_to=msg)
    if question != "nmf":
        raise ValueError(f"unknown query {question!r}")
    devices = _devices(config, cohort)
    saved = record_arrays(context.state["nmf"]) if "nmf" in context.state else {}
    rows = dict(zip(saved.get("devices", []).tolist() if saved else [], saved.get("w", [])))
    first = "gram_h" not in msg.content
    factors = None if first else {device: msg.content[device_key("h_items", device)]["h_items"]
                                  .numpy() for device in devices}
    gram_h = None if first else msg.content["gram_h"]["gram_h"].numpy()
    steps = nmf_devices(data, users, rows, devices, int(config["seed"]), int(config["rank"]),
                        factors, gram_h)
    kept = sorted(rows)
    context.state["nmf"] = arrays_record({"devices": np.array(kept, np.int64),
                                          "w": np.stack([rows[d] for d in kept])})
    content = RecordDict({device_key("nmf", device): arrays_record(
        {"w": w_user, "items": items.astype(np.int32)})
        for device, (w_user, items) in steps.items()})
    return Message(content=content, reply_to=msg)
