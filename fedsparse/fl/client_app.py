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
* ``query``: ``question = "profile"`` (the cohort's device ids), or a stage of federated NMF
  under secure summation (:mod:`fedsparse.federated.nmf`): ``"secure-keys"``, ``"nmf"``,
  ``"nmf-resend"``, ``"secure-reveal"``; and ``"train-resend"`` of a secure training round.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsparse.data import InteractionData, load_dataset
from fedsparse.federated.checkpoint import persist_cohort_state, restore_cohort_state
from fedsparse.federated.cohort import UserRefit
from fedsparse.federated.devices import CohortState, TrainRound, evaluate_devices, train_devices
from fedsparse.federated.faults import FaultModel, is_offline
from fedsparse.federated.fleet import cohort_of, fleet_users
from fedsparse.federated.nmf import MaskedStep, masked_nmf_sum, nmf_row_steps, reveal_secrets
from fedsparse.federated.protocol import pack_secure_metrics, pack_updates
from fedsparse.federated.secure_sum import KeyPair, masked_cohort_sum
from fedsparse.federated.secure_training import secure_vector_size
from fedsparse.fl.records import (KEY_RECORD, PEERS_RECORD, arrays_record, device_key,
                                  keys_record, record_arrays, record_keys, record_peers,
                                  slice_from_record)
from fedsparse.sparse import SparseEmbeddingTable
from fedsparse.train.device import LocalTraining

logger = logging.getLogger(__name__)

app = ClientApp()

#: A cohort's sparse training contributions of a round: device -> (tier, (positions, values)).
Contributions = dict[int, tuple[int, tuple[np.ndarray, np.ndarray]]]


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
        tier_item_optimizer=[str(o) for o in config.get("tier-item-optimizer", [])],  # absent:
        tier_item_lr=[float(r) for r in config.get("tier-item-lr", [])],              # Adam
        faults=FaultModel(crash_prob=float(config["crash-prob"]),
                          offline_prob=float(config["offline-prob"]),
                          offline_rounds=int(config["offline-rounds"]),
                          speed_jitter=float(config["speed-jitter"])),
        secure=bool(config["secure"]), deadline_seconds=float(config["deadline-seconds"]),
        pseudo_items=float(config["pseudo-items"]))
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
    trained = {device: reply for device, reply in replies.items() if not reply.error}
    if trained and spec.secure:
        tier_of = dict(pairs)
        contributions = {device: (tier_of[device], reply.contribution)
                         for device, reply in trained.items() if reply.contribution is not None}
        context.state["secure-round"] = _contributions_record(contributions)
        content.update(_masked_training_sums(msg, context, contributions, data.n_items, dim))
        content["replies"] = MetricRecord(pack_secure_metrics(
            {device: reply.metrics for device, reply in trained.items()}))
    elif trained:
        arrays, metrics = pack_updates({device: (reply.arrays, reply.metrics)
                                        for device, reply in trained.items()})
        content["updates"], content["replies"] = arrays_record(arrays), MetricRecord(metrics)
    return Message(content=content, reply_to=msg)


def _contributions_record(contributions: Contributions) -> ArrayRecord:
    """The round's sparse contributions (device -> tier, (positions, values)), kept for a
    resend."""
    devices = sorted(contributions)
    parts = [contributions[device][1] for device in devices]
    return arrays_record({
        "devices": np.array(devices, np.int64),
        "tiers": np.array([contributions[device][0] for device in devices], np.int64),
        "counts": np.array([len(positions) for positions, _ in parts], np.int64),
        "positions": np.concatenate([p for p, _ in parts]) if parts else np.zeros(0, np.int64),
        "values": np.concatenate([v for _, v in parts]) if parts else np.zeros(0)})


def _stored_contributions(context: Context) -> Contributions:
    """The round's contributions kept by :func:`_contributions_record`."""
    arrays = record_arrays(context.state["secure-round"])
    ends = np.cumsum(arrays["counts"])
    return {int(device): (int(tier), (arrays["positions"][end - count:end],
                                      arrays["values"][end - count:end]))
            for device, tier, count, end in zip(arrays["devices"], arrays["tiers"],
                                                arrays["counts"], ends)}


def _masked_training_sums(msg: Message, context: Context, contributions: Contributions,
                          n_items: int, dim: int) -> dict[str, ArrayRecord]:
    """``secure.<tier>``: the sum (mod 2^64) of the masked vectors of the cohort's devices in
    each tier, and which devices are in it (pairs inside a sum are not masked: their masks
    would cancel in it: :func:`~fedsparse.federated.secure_sum.masked_cohort_sum`)."""
    config = msg.content["config"]
    keys, peers = _key_pairs(context), record_peers(msg.content[PEERS_RECORD])
    by_tier: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for device, (tier, contribution) in sorted(contributions.items()):
        by_tier.setdefault(tier, {})[device] = contribution
    return {device_key("secure", tier): arrays_record({
        "masked": masked_cohort_sum(secure_vector_size(n_items, dim), tier_contributions, keys,
                                    peers, int(config["secure-step"]),
                                    int(config["fraction-bits"])),
        "devices": np.array(sorted(tier_contributions), np.int64)})
        for tier, tier_contributions in sorted(by_tier.items())}


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Each addressed device ranks every item with its own sparse model."""
    config = msg.content["config"]
    torch.set_num_threads(int(config["threads"]))
    data, users = _fleet(config)
    cohort = _cohort(context, config, len(users))
    pairs = _addressed(config, cohort)
    state = _state(context, config, cohort, int(config["round"]))
    refit = None
    if int(config.get("refit-steps", 0)) > 0:                  # absent: rank as trained
        refit = UserRefit(steps=int(config["refit-steps"]), lr=float(config["refit-lr"]),
                          l2=float(config["l2"]), negatives=int(config["negatives"]))
    results = evaluate_devices(data, users, state, pairs,
                               _tables(msg, pairs, data.n_items, int(config["dim"])),
                               int(config["topk"]), refit=refit, seed=int(config["seed"]),
                               server_round=int(config["round"]))
    content = RecordDict()
    for device, metrics in results.items():
        content[device_key("metrics", device)] = MetricRecord(metrics)
        if bool(config.get("export-user", False)):
            content[device_key("user", device)] = arrays_record(
                {"values": state.row(device).values})
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """``profile`` (the cohort's devices), ``secure-keys`` (a fresh key pair per device), one
    masked ``nmf`` step of the addressed devices, ``nmf-resend`` or ``train-resend`` of some
    devices' masked vectors, or ``secure-reveal`` of pair secrets with dropped peers."""
    config = msg.content["config"]
    question = str(config["question"])
    data, users = _fleet(config)
    cohort = _cohort(context, config, len(users))
    if question == "profile":
        profile = MetricRecord({"devices": list(cohort)})
        return Message(content=RecordDict({"profile": profile}), reply_to=msg)
    handlers = {"secure-keys": _secure_keys, "nmf": _nmf_step, "nmf-resend": _nmf_step,
                "train-resend": _train_resend, "secure-reveal": _secure_reveal}
    if question not in handlers:
        raise ValueError(f"unknown query {question!r}")
    content = handlers[question](msg, context, data, users, _devices(config, cohort))
    return Message(content=content, reply_to=msg)


def _key_pairs(context: Context) -> dict[int, KeyPair]:
    arrays = record_arrays(context.state["secure-keys"])
    return {int(device): KeyPair(private=bytes(private), public=bytes(public))
            for device, private, public in zip(arrays["devices"], arrays["private"],
                                               arrays["public"])}


def _secure_keys(msg: Message, context: Context, data: InteractionData, users: np.ndarray,
                 devices: list[int]) -> RecordDict:
    """A fresh key pair per device (private keys stay in ``context.state``); in a training
    round (``round`` given) a device in an offline spell does not answer."""
    config = msg.content["config"]
    if "round" in config:
        fault = FaultModel(offline_prob=float(config["offline-prob"]),
                           offline_rounds=int(config["offline-rounds"]))
        devices = [device for device in devices if not is_offline(
            fault, int(config["seed"]), int(config["round"]), device)]
    pairs = {device: KeyPair.generate() for device in devices}
    context.state["secure-keys"] = arrays_record({
        "devices": np.array(devices, np.int64),
        "private": np.array([list(pairs[d].private) for d in devices], np.uint8),
        "public": np.array([list(pairs[d].public) for d in devices], np.uint8)})
    return RecordDict({KEY_RECORD: keys_record({device: pairs[device].public
                                                for device in devices})})


def _nmf_step(msg: Message, context: Context, data: InteractionData, users: np.ndarray,
              devices: list[int]) -> RecordDict:
    """One masked NMF step of the addressed devices (``nmf``), or their masked contributions
    again from their current rows (``nmf-resend``); the cohort's sum goes up."""
    config = msg.content["config"]
    peers = record_peers(msg.content[PEERS_RECORD])
    task = MaskedStep(step=int(config["step"]),
                      h=msg.content["h"]["h"].numpy() if "h" in msg.content else None,
                      peers={device: peers[device] for device in devices},
                      fraction_bits=int(config["fraction-bits"]))
    saved = record_arrays(context.state["nmf"]) if "nmf" in context.state else {}
    rows = dict(zip(saved["devices"].tolist(), saved["w"])) if saved else {}
    keys, seed, rank = _key_pairs(context), int(config["seed"]), int(config["rank"])
    sent = (nmf_row_steps(data, users, rows, devices, seed, rank, task,
                          FaultModel(crash_prob=float(config["crash-prob"])))
            if str(config["question"]) == "nmf" else sorted(devices))
    total = masked_nmf_sum(data, users, rows, keys, sent, rank, task)
    kept = sorted(rows)
    context.state["nmf"] = arrays_record({"devices": np.array(kept, np.int64),
                                          "w": np.stack([rows[d] for d in kept])
                                          if kept else np.zeros((0, rank))})
    return RecordDict({"nmf": arrays_record({"masked": total,
                                             "devices": np.array(sent, np.int64)})})


def _train_resend(msg: Message, context: Context, data: InteractionData, users: np.ndarray,
                  devices: list[int]) -> RecordDict:
    """The addressed devices' masked training vectors of this round again, summed per tier."""
    stored = _stored_contributions(context)
    return RecordDict(_masked_training_sums(msg, context, {d: stored[d] for d in devices},
                                            data.n_items, int(msg.content["config"]["dim"])))


def _secure_reveal(msg: Message, context: Context, data: InteractionData, users: np.ndarray,
                   devices: list[int]) -> RecordDict:
    """Each addressed device's pair secrets with its dropped peers."""
    keys, min_aggregate = _key_pairs(context), int(msg.content["config"]["min-aggregate"])
    content = RecordDict()
    for device in devices:
        record = msg.content[device_key("dropped", device)]
        secrets = reveal_secrets(keys, device, record_keys(record),
                                 int(record["component"].numpy()[0]), min_aggregate)
        content[device_key("reveal", device)] = keys_record(secrets)
    return content
