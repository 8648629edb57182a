"""The device half of the federated protocol, for a cohort of devices (one in a deployment).

Engine-neutral: the engine (Flower's ClientApp, :mod:`fedsparse.fl.client_app`) turns its
messages into these calls and their results back into records. A cohort is the devices one
SuperNode simulates (:func:`~fedsparse.federated.fleet.cohort_of`); their private state (user
rows with Adam state) is one :class:`CohortState`, kept by the engine between rounds
and, in a simulation, in state files (:mod:`fedsparse.federated.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from fedsparse.data import InteractionData
from fedsparse.federated.cohort import DeviceTask, UserRefit, refit_user_rows, train_cohort
from fedsparse.federated.faults import FaultModel, device_fault, simulated_seconds
from fedsparse.federated.protocol import encode_update, reply_metrics
from fedsparse.federated.pseudo_items import add_pseudo_items
from fedsparse.federated.secure_training import TierLayout, sparse_contribution
from fedsparse.seeding import generator_for
from fedsparse.sparse import SparseEmbeddingTable
from fedsparse.train.device import (DeviceUpdate, LocalTraining, UserRow, model_bytes,
                                    rank_with_items)


@dataclass
class CohortState:
    """The private state of a cohort's devices, stacked: row ``i`` is device ``devices[i]``.

    Attributes
    ----------
    devices : np.ndarray
        (m,) int64 device ids, ascending.
    values, exp_avg, exp_avg_sq : np.ndarray
        (m, d) float32 user rows and their Adam moments.
    step : np.ndarray
        (m,) int64 Adam steps taken.
    """

    devices: np.ndarray
    values: np.ndarray
    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    step: np.ndarray

    @classmethod
    def initial(cls, devices: range | list[int], seed: int, dim: int,
                init_std: float) -> CohortState:
        """Every device's seeded initial row (its own ``user-init`` stream), zero Adam state."""
        rows = [UserRow.initial(dim, init_std, generator_for(seed, 0, device, "user-init"))
                for device in devices]
        return cls(devices=np.asarray(list(devices), dtype=np.int64),
                   values=np.stack([row.values for row in rows]),
                   exp_avg=np.zeros((len(rows), dim), np.float32),
                   exp_avg_sq=np.zeros((len(rows), dim), np.float32),
                   step=np.zeros(len(rows), np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        return {field.name: getattr(self, field.name) for field in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> CohortState:
        return cls(**{field.name: arrays[field.name] for field in fields(cls)})

    def _slot(self, device: int) -> int:
        return int(np.searchsorted(self.devices, device))

    def row(self, device: int) -> UserRow:
        """Device ``device``'s user row and Adam state."""
        i = self._slot(device)
        return UserRow(values=self.values[i].copy(), exp_avg=self.exp_avg[i].copy(),
                       exp_avg_sq=self.exp_avg_sq[i].copy(), step=int(self.step[i]))

    def set_row(self, device: int, row: UserRow) -> None:
        i = self._slot(device)
        self.values[i], self.exp_avg[i] = row.values, row.exp_avg
        self.exp_avg_sq[i], self.step[i] = row.exp_avg_sq, row.step


@dataclass(frozen=True)
class TrainRound:
    """What a cohort's devices need for one training round (from the server's message). The
    ``tier_*`` lists are per tier index; with ``tier_item_optimizer`` empty every tier steps
    its item slice by ``hp``'s optimizer and rate."""

    server_round: int
    seed: int
    hp: LocalTraining
    tier_budget_bytes: list[int]
    tier_growth_topk: list[int]
    tier_steps_per_second: list[float]
    faults: FaultModel
    tier_item_optimizer: list[str] = field(default_factory=list)
    tier_item_lr: list[float] = field(default_factory=list)
    secure: bool = False
    deadline_seconds: float = 0.0
    pseudo_items: float = 0.0


@dataclass(frozen=True)
class DeviceReply:
    """One device's outcome of a round: its update's arrays and metrics, or an error. Under
    secure summation (``TrainRound.secure``) its update is ``contribution`` instead (positions
    and values in its tier's layout, :func:`~fedsparse.federated.secure_training.
    sparse_contribution`; None when it finished past the deadline and so sends none), and its
    metrics leave out ``num-examples``, which travels inside the sum."""

    arrays: dict[str, np.ndarray] | None = None
    metrics: dict[str, int | float] | None = None
    error: str = ""
    simulated_fault: bool = False
    contribution: tuple[np.ndarray, np.ndarray] | None = None


def items_of(data: InteractionData, split: str, user: int) -> np.ndarray:
    """(n,) int64 item ids of ``user`` in the ``"train"`` or ``"test"`` matrix."""
    matrix = data.train if split == "train" else data.test
    return matrix.indices[matrix.indptr[user]:matrix.indptr[user + 1]].astype(np.int64)


def _train_by_item_step(tasks: list[DeviceTask]) -> list[tuple[DeviceUpdate, UserRow] | str]:
    """:func:`train_cohort` on the tasks of each item step (a cohort trains one), the results
    in the order of ``tasks``."""
    groups: dict[tuple[str, float], list[int]] = {}
    for index, task in enumerate(tasks):
        groups.setdefault((task.hp.item_optimizer, task.hp.item_lr), []).append(index)
    results: list[tuple[DeviceUpdate, UserRow] | str] = [""] * len(tasks)
    for members in groups.values():
        for index, result in zip(members, train_cohort([tasks[i] for i in members])):
            results[index] = result
    return results


def train_devices(data: InteractionData, users: np.ndarray, state: CohortState,
                  sampled: list[tuple[int, int]], tables: dict[int, SparseEmbeddingTable],
                  spec: TrainRound) -> dict[int, DeviceReply]:
    """One training round of the ``sampled`` (device, tier) pairs of a cohort, together.

    A device that is offline or crashes this round (its seeded fault draw) replies with an
    error and keeps its state; the others train (:func:`train_cohort`), update their rows in
    ``state`` and reply with their encoded update. ``users[device]`` is its user id,
    ``tables[tier]`` the tier's slice as received.
    """
    replies: dict[int, DeviceReply] = {}
    tasks, task_tiers = [], []
    for device, tier in sampled:
        faults = replace(spec.faults, steps_per_second=spec.tier_steps_per_second[tier])
        fault = device_fault(faults, spec.seed, spec.server_round, device)
        if fault is not None:
            replies[device] = DeviceReply(error=f"simulated {fault}", simulated_fault=True)
            continue
        hp = replace(spec.hp, growth_topk=spec.tier_growth_topk[tier])
        if spec.tier_item_optimizer:                     # else every tier steps by hp's
            hp = replace(hp, item_optimizer=spec.tier_item_optimizer[tier],
                         item_lr=spec.tier_item_lr[tier])
        tasks.append(DeviceTask(device=device, item_table=tables[tier], user=state.row(device),
                                positives=items_of(data, "train", int(users[device])), hp=hp,
                                generator=generator_for(spec.seed, spec.server_round, device,
                                                        "local-train"),
                                budget_bytes=spec.tier_budget_bytes[tier] or None))
        task_tiers.append((tier, faults))
    layouts: dict[int, TierLayout] = {}
    for task, (tier, faults), result in zip(tasks, task_tiers, _train_by_item_step(tasks)):
        if isinstance(result, str):
            replies[task.device] = DeviceReply(error=result)
            continue
        update, row = result
        state.set_row(task.device, row)
        seconds = simulated_seconds(faults, update.steps, spec.seed, spec.server_round,
                                    task.device)
        metrics = reply_metrics(update, device=task.device, server_round=spec.server_round,
                                tier_index=tier, sim_seconds=seconds)
        if spec.secure:
            late = 0.0 < spec.deadline_seconds < seconds
            if tier not in layouts:
                layouts[tier] = TierLayout.of(task.item_table)
            contribution = sparse_contribution(update, layouts[tier], task.item_table.dim)
            if not np.all(np.isfinite(contribution[1])):     # the server cannot check it
                replies[task.device] = DeviceReply(error="update not finite")
                continue
            replies[task.device] = DeviceReply(
                metrics={key: value for key, value in metrics.items() if key != "num-examples"},
                contribution=None if late else contribution)
        else:
            if spec.pseudo_items > 0:
                update = add_pseudo_items(update, task.item_table, task.positives,
                                          spec.pseudo_items, generator_for(
                                              spec.seed, spec.server_round, task.device,
                                              "pseudo-items"))
            replies[task.device] = DeviceReply(
                arrays=encode_update(update, dim=task.item_table.dim, topk=task.hp.growth_topk),
                metrics=metrics)
    return replies


def evaluate_devices(data: InteractionData, users: np.ndarray, state: CohortState,
                     devices: list[tuple[int, int]], tables: dict[int, SparseEmbeddingTable],
                     k: int, refit: UserRefit | None = None, seed: int = 0,
                     server_round: int = 0) -> dict[int, dict[str, float | int]]:
    """Each (device, tier) ranks all items with its own sparse model: Recall@K, NDCG@K, its
    measured model bytes and how many test items it has.

    With ``refit``, a device first refits a copy of its user row to its training interactions
    against its tier's slice (:func:`~fedsparse.federated.cohort.refit_user_rows`, negatives
    from its ``refit`` stream of ``server_round``) and ranks with that; its state is unchanged.
    """
    rows = {device: state.row(device) for device, _ in devices}
    results = {}
    with torch.no_grad():
        dense = {tier: table.to_dense() for tier, table in tables.items()}       # (n_items, d)
        if refit is not None:
            for tier in dense:
                members = [device for device, device_tier in devices if device_tier == tier]
                refit_rows = refit_user_rows(
                    dense[tier], np.stack([rows[device].values for device in members]),
                    [items_of(data, "train", int(users[device])) for device in members], refit,
                    [generator_for(seed, server_round, device, "refit") for device in members])
                rows.update({device: replace(rows[device], values=values)
                             for device, values in zip(members, refit_rows)})
        for device, tier in devices:
            user_id, row = int(users[device]), rows[device]
            test_items = items_of(data, "test", user_id)
            metrics = {f"recall@{k}": 0.0, f"ndcg@{k}": 0.0}
            if len(test_items):
                metrics = rank_with_items(dense[tier], row, items_of(data, "train", user_id),
                                          test_items, k=k)
            results[device] = {**{key: float(value) for key, value in metrics.items()},
                               "model-bytes": model_bytes(tables[tier], row),
                               "n-test": len(test_items)}
    return results
