"""The ClientApp: one device of the fleet (one user), on Flower's Message API.

A device knows its own data: its ``partition-id`` (node config) indexes the users with training
interactions. Everything else arrives in the message's ``"config"`` record (dataset, device id
and tier, round, seed, local hyperparameters), so the same app runs under ``fedsparse
simulate``, ``flwr run`` and real SuperNodes. Its private state between rounds (user row, Adam
state, NMF row) lives in ``context.state`` and, when the server names a ``state-dir``, in
state files too (:mod:`fedsparse.fl.checkpoint`), from which a restarted device resumes; the
dataset is a read-only per-process cache. Simulated faults (:mod:`fedsparse.fl.faults`): an
offline or crashing device replies with an error instead of training.

Handlers:

* ``train``: local SparseRec on the device's interactions against its tier's slice; replies
  with the sparse update (:mod:`fedsparse.fl.records`).
* ``evaluate``: ranks all items with its own sparse model; replies Recall@K, NDCG@K, its
  measured model bytes and how many test items it has.
* ``query``: ``question = "profile"`` (device id, training and test interactions) or
  ``"nmf"`` (one federated NMF step: it updates its own row W_u and returns it with its item
  ids, from which the server sums W_u^T R_u and W_u^T W_u). The update needs only H's columns
  at its items and H H^T: in the first step the device makes the seeded H0 itself, later the
  server sends just those (``h_items``, ``gram_h``), since it learnt the items from the sums.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsparse.data import InteractionData, load_dataset
from fedsparse.fl.checkpoint import persist_device_state, restore_device_state
from fedsparse.fl.faults import SIMULATED_FAULT_CODE, FaultModel, device_fault, simulated_seconds
from fedsparse.fl.fleet import fleet_users
from fedsparse.fl.records import (arrays_record, encode_update, record_arrays, reply_metrics,
                                  slice_from_record, user_from_state, user_state_record)
from fedsparse.seeding import generator_for
from fedsparse.sparse.federated import initial_nmf_items, initial_nmf_row, nmf_user_step
from fedsparse.train.device import (LocalTraining, UserRow, evaluate_device, model_bytes,
                                    train_device)

logger = logging.getLogger(__name__)

app = ClientApp()


@lru_cache(maxsize=2)
def _load(name: str, split: str, max_items: int) -> InteractionData:
    """The dataset, loaded once per process (read-only)."""
    return load_dataset(name, split, max_items)


def _dataset(config: ConfigRecord) -> InteractionData:
    """The dataset the message's fleet identity names."""
    return _load(str(config["dataset"]), str(config["split"]), int(config["max-items"]))


def _items(data: InteractionData, matrix: str, user: int) -> np.ndarray:
    split = data.train if matrix == "train" else data.test
    return split.indices[split.indptr[user]:split.indptr[user + 1]].astype(np.int64)


@lru_cache(maxsize=2)
def _users(name: str, split: str, max_items: int, max_devices: int, seed: int) -> np.ndarray:
    """The fleet's users (device i is user ``[i]``), computed once per process."""
    return fleet_users(_load(name, split, max_items), max_devices, seed)


def _own_user(context: Context, config: ConfigRecord) -> int:
    """The user this device is: its partition id indexes the fleet's users."""
    users = _users(str(config["dataset"]), str(config["split"]), int(config["max-items"]),
                   int(config["max-devices"]), int(config["seed"]))
    return int(users[int(context.node_config["partition-id"])])


def _user_row(context: Context, config: ConfigRecord, up_to_round: int) -> UserRow:
    """The device's private row: kept in ``context.state``; after a restart, restored from its
    state file of the latest round <= ``up_to_round``; else the seeded initial row."""
    if "user" in context.state:
        return user_from_state(context.state["user"])
    state_dir, device = str(config.get("state-dir", "")), int(config["device"])
    restored = restore_device_state(state_dir, device, up_to_round) if state_dir else None
    if restored is not None:
        return restored
    generator = generator_for(int(config["seed"]), 0, device, "user-init")
    return UserRow.initial(int(config["dim"]), float(config["init-std"]), generator)


def _fault_model(config: ConfigRecord) -> FaultModel:
    return FaultModel(crash_prob=float(config["crash-prob"]),
                      offline_prob=float(config["offline-prob"]),
                      offline_rounds=int(config["offline-rounds"]),
                      steps_per_second=float(config["steps-per-second"]),
                      speed_jitter=float(config["speed-jitter"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training for one round; replies with the sparse update, or with an error when
    the simulated device is offline or crashes this round (its state stays as it was)."""
    config = msg.content["config"]
    device, server_round, seed = int(config["device"]), int(config["round"]), int(config["seed"])
    fault_model = _fault_model(config)
    fault = device_fault(fault_model, seed, server_round, device)
    if fault is not None:
        return Message(error=Error(code=SIMULATED_FAULT_CODE, reason=f"simulated {fault}"),
                       reply_to=msg)
    torch.set_num_threads(int(config["threads"]))     # the client's CPUs; more oversubscribe
    data = _dataset(config)
    dim, topk = int(config["dim"]), int(config["growth-topk"])
    item_table = slice_from_record(msg.content["item"], data.n_items, dim)
    hp = LocalTraining(local_epochs=int(config["local-epochs"]),
                       batch_size=int(config["batch-size"]), lr=float(config["lr"]),
                       l2=float(config["l2"]), negatives=int(config["negatives"]),
                       growth_topk=topk)
    update, user = train_device(item_table, _user_row(context, config, server_round - 1),
                                _items(data, "train", _own_user(context, config)), hp,
                                generator=generator_for(seed, server_round, device, "local-train"),
                                budget_bytes=int(config["budget-bytes"]) or None)
    context.state["user"] = user_state_record(user)
    if "state-dir" in config:
        persist_device_state(str(config["state-dir"]), device, server_round, user)
    sim_seconds = simulated_seconds(fault_model, update.steps, seed, server_round, device)
    content = RecordDict({"update": encode_update(update, dim=dim, topk=topk),
                          "reply": reply_metrics(update, device=device, server_round=server_round,
                                                 tier_index=int(config["tier-index"]),
                                                 sim_seconds=sim_seconds)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Rank every item with the device's own sparse model."""
    config = msg.content["config"]
    torch.set_num_threads(int(config["threads"]))
    data = _dataset(config)
    user_id, k = _own_user(context, config), int(config["topk"])
    item_table = slice_from_record(msg.content["item"], data.n_items, int(config["dim"]))
    user = _user_row(context, config, int(config["round"]))
    test_items = _items(data, "test", user_id)
    metrics = {f"recall@{k}": 0.0, f"ndcg@{k}": 0.0}
    if len(test_items):
        metrics = evaluate_device(item_table, user, _items(data, "train", user_id), test_items,
                                  k=k)
    reply = MetricRecord({**{key: float(value) for key, value in metrics.items()},
                          "model-bytes": model_bytes(item_table, user),
                          "n-test": len(test_items)})
    content = RecordDict({"metrics": reply})
    if bool(config.get("export-user", False)):
        content["user"] = arrays_record({"values": user.values})
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """``profile`` or one ``nmf`` step."""
    config = msg.content["config"]
    question = str(config["question"])
    device = int(context.node_config["partition-id"])
    if question == "profile":
        data = _dataset(config)
        user = _own_user(context, config)
        reply = MetricRecord({"device": device, "n-train": len(_items(data, "train", user)),
                              "n-test": len(_items(data, "test", user))})
        return Message(content=RecordDict({"profile": reply}), reply_to=msg)
    if question != "nmf":
        raise ValueError(f"unknown query {question!r}")
    data = _dataset(config)
    items = _items(data, "train", _own_user(context, config))
    seed, rank = int(config["seed"]), int(config["rank"])
    if "factors" in msg.content:                          # later iterations: what it needs of H
        factors = record_arrays(msg.content["factors"])
        h_items, gram_h = factors["h_items"], factors["gram_h"]          # (d, n_u), (d, d)
        w_user = record_arrays(context.state["nmf"])["w"]
    else:                                                 # first: H0 is seeded, make it here
        h = initial_nmf_items(seed, rank, data.n_items)                  # (d, n_items)
        h_items, gram_h = h[:, items], h @ h.T
        w_user = initial_nmf_row(seed, device, rank)
    if h_items.shape != (rank, len(items)):
        raise ValueError(f"h_items has shape {h_items.shape}, expected {(rank, len(items))}")
    w_user = nmf_user_step(w_user, h_items, gram_h)
    context.state["nmf"] = arrays_record({"w": w_user})
    content = RecordDict({"nmf": arrays_record({"w": w_user, "items": items.astype(np.int32)}),
                          "reply": MetricRecord({"device": device})})
    return Message(content=content, reply_to=msg)
