"""The server half of the federated protocol, engine-neutral (no Flower, no Ray).

:class:`FleetServer` keeps the global item table (dense on the server, which is not
memory-bound; zero outside the densest tier's mask), one nested mask per tier, the growth
scores the devices sent since the last mask update and the per-device ledger. It accepts
per-device outcomes, never an engine's messages: an engine (Flower's strategy,
:mod:`fedsparse.fl.strategy`) asks it which devices a round samples and what to send them,
and hands back each device's outcome (replied, failed, rejected, late), which it checks,
aggregates per entry in ascending device id and accounts; every ``fl.mask_interval`` rounds
it prunes and regrows the densest tier's mask and re-derives the others from it. A round with
fewer accepted updates than ``fl.min_success`` of its sampled devices is skipped.
:meth:`FleetServer.server_state` and :meth:`FleetServer.restore` carry its state through a
checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedsparse.config import ExperimentConfig
from fedsparse.federated.checkpoint import LEDGER_ARRAYS, ServerState
from fedsparse.federated.fleet import FleetPlan, fleet_identity
from fedsparse.federated.methods import fleet_method
from fedsparse.federated.protocol import (PAYLOAD_ARRAYS, Expected, RejectedUpdate,
                                          decode_update, own_bytes, secure_own_bytes,
                                          unpack_secure_metrics, unpack_updates)
from fedsparse.federated.secure_training import (TRAINING_STEP_BASE, open_tier_sums,
                                                 secure_vector_size)
from fedsparse.seeding import numpy_rng_for
from fedsparse.sparse import (SparseEmbeddingTable, cosine_update_fraction, is_update_step,
                              prefix_mask, update_count, update_mask)
from fedsparse.sparse.federated import (ServerStep, SparseUpdate, nested_tier_masks,
                                        sum_sparse_updates)

logger = logging.getLogger(__name__)


@dataclass
class DeviceLedger:
    """Per-device accounting over the run: bytes of the encoded records sent down and
    received up (every reply, late or in a skipped round too), of the updates applied the data
    of :data:`~fedsparse.fl.records.PAYLOAD_ARRAYS` (the rest is index and headers), messages
    sent to it, rounds whose update was applied, the largest ``train-bytes`` of those, its last
    evaluation and, after the final one, its user row."""

    up_bytes: np.ndarray
    up_payload_bytes: np.ndarray
    down_bytes: np.ndarray
    messages: np.ndarray
    rounds: np.ndarray
    max_train_bytes: np.ndarray
    evaluation: dict[int, dict[str, float]] = field(default_factory=dict)
    user_rows: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, n_devices: int) -> DeviceLedger:
        zeros = np.zeros(n_devices, dtype=np.int64)
        return cls(up_bytes=zeros.copy(), up_payload_bytes=zeros.copy(), down_bytes=zeros.copy(),
                   messages=zeros.copy(), rounds=zeros.copy(), max_train_bytes=zeros.copy())


@dataclass(frozen=True)
class OpenedSums:
    """A round's training sums under secure summation: tier -> its opened sum (float64, the
    layout of :mod:`fedsparse.federated.secure_training`) and the devices in them."""

    sums: dict[int, np.ndarray]
    devices: frozenset[int]


@dataclass(frozen=True)
class DeviceOutcome:
    """One device's part of a training reply: ``kind`` ``"failed"`` (it reported an error),
    ``"rejected"`` (malformed) or ``"replied"`` (checked and decoded: ``update`` and what it
    reported), with the bytes of its own records."""

    kind: str
    up_bytes: int = 0
    update: SparseUpdate | None = None
    train_bytes: int = 0
    payload_bytes: int = 0
    sim_seconds: float = 0.0
    loss: float = float("nan")


class FleetServer:
    """Federated SparseRec on the server side.

    Parameters
    ----------
    cfg:
        The experiment (``[fl]``, ``[sparse]``, ``seed``, model and data names).
    plan:
        The fleet: devices, tiers, densities.
    item_values:
        (n_items, d) initial global item table.
    top_mask:
        (n_items, d) bool initial mask of the densest tier.
    devices_per_node:
        The cohort size the engine's SuperNodes simulate (sent in every message).
    """

    def __init__(self, cfg: ExperimentConfig, plan: FleetPlan, item_values: np.ndarray,
                 top_mask: np.ndarray, devices_per_node: int = 1) -> None:
        self.cfg, self.plan = cfg, plan
        self.method = fleet_method(cfg.sparse.method)
        self.devices_per_node = devices_per_node
        self.n_items, self.dim = item_values.shape
        self.item = np.where(top_mask, item_values, 0.0).astype(np.float32)
        self.growth = np.zeros(item_values.shape)
        self.server_step = ServerStep(cfg.fl.server_optimizer, self.item.size, cfg.fl.server_lr,
                                      cfg.fl.server_eps)
        self.top_tier = int(np.argmax([tier.density for tier in plan.tiers]))
        self.masks = self._tier_masks(top_mask)
        self.ledger = DeviceLedger.empty(plan.n_devices)
        self.mask_updates = 0
        self.skipped_in_a_row = 0

    # ------------------------------------------------------------------ masks
    def _tier_masks(self, top_mask: np.ndarray) -> list[np.ndarray]:
        if self.method.initial_mask == "prefix":                    # fixed nested dimensions
            return [prefix_mask(self.n_items, self.dim, tier.prefix_width(self.dim))
                    for tier in self.plan.tiers]
        masks = nested_tier_masks(top_mask, self.item, self.growth,
                                  {tier.name: tier.density for tier in self.plan.tiers})
        return [masks[tier.name] for tier in self.plan.tiers]

    def tier_table(self, tier: int) -> SparseEmbeddingTable:
        """The global item table restricted to tier ``tier``'s mask, as a device holds it."""
        return SparseEmbeddingTable.from_dense(self.item, self.masks[tier])

    def is_mask_round(self, server_round: int) -> bool:
        """Whether the masks move after ``server_round``'s aggregation."""
        return self.method.grows and is_update_step(server_round, self.cfg.fl.mask_interval,
                                                    self._end_round())

    def _end_round(self) -> int:
        """Last round after which masks may move (``sparse.end_fraction`` of the rounds)."""
        return max(1, round(self.cfg.sparse.end_fraction * self.cfg.fl.rounds))

    def update_masks(self, server_round: int) -> int:
        """Prune the densest tier's smallest |w| and grow its best-scored inactive entries
        (cosine-decayed fraction), then re-derive every tier's mask; returns entries moved."""
        fraction = cosine_update_fraction(server_round,
                                          initial_fraction=self.cfg.sparse.initial_fraction,
                                          end_step=self._end_round())
        top = torch.from_numpy(self.masks[self.top_tier])
        update = update_mask(top, torch.from_numpy(np.abs(self.item)),
                             torch.from_numpy(self.growth.astype(np.float32)),
                             update_count(int(top.sum()), fraction))
        new_top = update.new_mask.numpy()
        self.item[~new_top] = 0.0                           # dropped entries; grown start at 0
        self.server_step.forget(~new_top)
        self.masks = self._tier_masks(new_top)
        self.growth[:] = 0.0
        self.mask_updates += 1
        logger.info("round %d: mask update %d moved %d entries (fraction %.3f)", server_round,
                    self.mask_updates, update.grown.numel(), fraction)
        return update.grown.numel()

    # ------------------------------------------------------------------ checkpoints
    def server_state(self, server_round: int, history: list[dict[str, Any]],
                     init_seconds: float) -> ServerState:
        """Everything needed to continue after ``server_round`` (for the checkpoint)."""
        return ServerState(
            round=server_round, item=self.item, growth=self.growth,
            optimizer=self.server_step.moments,
            masks={tier.name: mask for tier, mask in zip(self.plan.tiers, self.masks)},
            counters={"mask_updates": self.mask_updates,
                      "skipped_in_a_row": self.skipped_in_a_row,
                      "devices_per_node": self.devices_per_node},
            ledger={key: getattr(self.ledger, key) for key in LEDGER_ARRAYS},
            evaluation=self.ledger.evaluation, history=history, init_seconds=init_seconds)

    def restore(self, state: ServerState) -> None:
        """Continue from a checkpoint of this fleet (the inverse of :meth:`server_state`)."""
        self.item, self.growth = state.item, state.growth
        self.server_step.moments = dict(state.optimizer)
        self.masks = [state.masks[tier.name] for tier in self.plan.tiers]
        self.mask_updates = state.counters["mask_updates"]
        self.skipped_in_a_row = state.counters["skipped_in_a_row"]
        for key in LEDGER_ARRAYS:
            setattr(self.ledger, key, state.ledger[key])
        self.ledger.evaluation = dict(state.evaluation)

    # ------------------------------------------------------------------ sampling, messages
    def sample_devices(self, server_round: int) -> list[int]:
        """Devices of ``server_round``, ascending: all, or ``fl.clients_per_round`` drawn
        without replacement from the round's seeded stream."""
        n_devices, wanted = self.plan.n_devices, self.cfg.fl.clients_per_round
        if wanted == 0 or wanted >= n_devices:
            return list(range(n_devices))
        rng = numpy_rng_for(self.cfg.seed, server_round, 0, "sample-devices")
        return sorted(int(d) for d in rng.choice(n_devices, size=wanted, replace=False))

    def device_config(self, server_round: int, pairs: list[tuple[int, int]]) -> dict[str, Any]:
        """The config of a message to the devices of ``pairs`` (device, tier)."""
        fl, tiers = self.cfg.fl, range(len(self.plan.tiers))
        return {"round": server_round, "devices": [device for device, _ in pairs],
                "device-tiers": [tier for _, tier in pairs],
                "devices-per-node": self.devices_per_node,
                "tier-budget-bytes": [self.enforced_budget(tier) for tier in tiers],
                "tier-growth-topk": [self.growth_topk(tier) for tier in tiers],
                "tier-steps-per-second": [tier.steps_per_second for tier in self.plan.tiers],
                **fleet_identity(self.cfg), "dim": self.dim,
                "init-std": self.cfg.model.init_std, "local-epochs": fl.local_epochs,
                "batch-size": fl.batch_size, "lr": self.local_lr(server_round), "l2": fl.l2,
                "negatives": fl.negatives, "topk": self.cfg.train.topk,
                "threads": max(1, int(fl.client_cpus)),
                "crash-prob": fl.crash_prob, "offline-prob": fl.offline_prob,
                "offline-rounds": fl.offline_rounds, "speed-jitter": fl.speed_jitter,
                "secure": self.secure, "secure-step": TRAINING_STEP_BASE + server_round,
                "fraction-bits": fl.privacy.fraction_bits,
                "deadline-seconds": fl.deadline_seconds,
                "pseudo-items": fl.privacy.pseudo_items,
                **self._item_step(server_round)}

    def _item_step(self, server_round: int) -> dict[str, Any]:
        """Each tier's step on its item slice (the tier's optimizer and its SGD rate this
        round): no keys when every tier steps by Adam at the devices' ``lr`` (the ClientApp
        reads them absent as that, so such messages are as before the keys existed)."""
        if all(tier.item_optimizer == "adam" for tier in self.plan.tiers):
            return {}
        return {"tier-item-optimizer": [tier.item_optimizer for tier in self.plan.tiers],
                "tier-item-lr": [tier.item_lr * self.lr_factor(server_round)
                                 for tier in self.plan.tiers]}

    def lr_factor(self, server_round: int) -> float:
        """The devices' learning rates in ``server_round`` as a fraction of ``fl.lr`` (and
        ``fl.item_lr``): 1, or with ``fl.lr_schedule = "cosine"``
        ``(1 + cos(pi * (round - 1) / fl.rounds)) / 2``."""
        fl = self.cfg.fl
        if fl.lr_schedule == "constant":
            return 1.0
        return (1 + math.cos(math.pi * (server_round - 1) / fl.rounds)) / 2

    def local_lr(self, server_round: int) -> float:
        """The devices' Adam learning rate in ``server_round``: ``fl.lr`` times
        :meth:`lr_factor`."""
        return self.cfg.fl.lr * self.lr_factor(server_round)

    def growth_topk(self, tier: int) -> int:
        """Growth scores per touched row a device of ``tier`` sends: the tier's
        ``growth_topk``, else ``fl.growth_topk``; 0 for methods whose masks never grow (dense,
        static)."""
        return self.plan.tiers[tier].growth_topk if self.method.grows else 0

    def enforced_budget(self, tier: int) -> int:
        """The tier's budget in bytes, or 0 (none) for dense FedAvg, whose devices all hold
        the full table whatever their tier."""
        return self.plan.tiers[tier].budget_bytes if self.method.enforces_budget else 0

    def charge_down(self, device: int, own_bytes_down: int) -> None:
        """Count a message to ``device`` and the bytes of its own records in it."""
        self.ledger.down_bytes[device] += own_bytes_down
        self.ledger.messages[device] += 1

    # ------------------------------------------------------------------ replies
    def pack_outcomes(self, server_round: int, sent: list[int],
                      pack: tuple[dict[str, np.ndarray], dict[str, list]] | None,
                      errors: list[tuple[int, str, bool]], pack_bytes: int = 0
                      ) -> dict[int, DeviceOutcome]:
        """Each device's part of a SuperNode's training reply: the errors it reports (device,
        reason, simulated) and its pack of updates (:func:`unpack_updates`; None when it
        sent none; a pack of empty dicts is rejected as malformed), checked and decoded device
        by device. A malformed pack rejects all its devices, which share its ``pack_bytes``;
        devices of ``sent`` the reply does not name get no outcome."""
        outcomes = _failures(server_round, sent, errors)
        if pack is None:
            return outcomes
        pending = [device for device in sent if device not in outcomes]
        try:
            unpacked = unpack_updates(*pack, {device: self.growth_topk(
                int(self.plan.device_tier[device])) for device in pending})
        except RejectedUpdate as exc:
            logger.warning("round %d: rejected the updates of devices %s: %s", server_round,
                           pending, exc)
            share = pack_bytes // max(1, len(pending))
            return {**outcomes, **{device: DeviceOutcome("rejected", up_bytes=share)
                                   for device in pending}}
        for device, (arrays, metrics) in unpacked.items():
            outcomes[device] = self._device_outcome(server_round, device, arrays, metrics)
        return outcomes

    def _device_outcome(self, server_round: int, device: int, arrays: dict[str, np.ndarray],
                        metrics: dict[str, int | float]) -> DeviceOutcome:
        """One device's update, checked against what it was sent and decoded."""
        size = own_bytes(arrays, metrics)
        try:
            tier = int(self.plan.device_tier[device])
            decoded = decode_update(arrays, metrics, Expected(
                device=device, server_round=server_round, tier_index=tier,
                tier_mask=self.masks[tier], topk=self.growth_topk(tier)))
            train_bytes = int(metrics["train-bytes"])
            if 0 < self.enforced_budget(tier) < train_bytes:
                raise RejectedUpdate(f"train-bytes {train_bytes} over the tier budget")
        except RejectedUpdate as exc:
            logger.warning("round %d: rejected the update of device %d: %s", server_round,
                           device, exc)
            return DeviceOutcome("rejected", up_bytes=size)
        return DeviceOutcome("replied", up_bytes=size, update=decoded, train_bytes=train_bytes,
                             payload_bytes=sum(arrays[key].nbytes for key in PAYLOAD_ARRAYS),
                             sim_seconds=float(metrics["sim-seconds"]),
                             loss=float(metrics["loss"]))

    def secure_outcomes(self, server_round: int, sent: list[int],
                        metrics: Mapping[str, list] | None,
                        errors: list[tuple[int, str, bool]]) -> dict[int, DeviceOutcome]:
        """Each device's part of a SuperNode's training reply under secure summation: the
        errors it reports and the metrics it sent in the clear (its update is in its tier's
        masked sum); malformed metrics reject the SuperNode's devices."""
        outcomes = _failures(server_round, sent, errors)
        if metrics is None:
            return outcomes
        pending = [device for device in sent if device not in outcomes]
        try:
            listed = unpack_secure_metrics(metrics, pending, server_round)
        except RejectedUpdate as exc:
            logger.warning("round %d: rejected the replies of devices %s: %s", server_round,
                           pending, exc)
            return {**outcomes, **{device: DeviceOutcome("rejected") for device in pending}}
        for device, values in listed.items():
            outcomes[device] = DeviceOutcome(
                "replied", up_bytes=secure_own_bytes(self.secure_size, values),
                train_bytes=int(values["train-bytes"]), payload_bytes=8 * self.secure_size,
                sim_seconds=float(values["sim-seconds"]), loss=float(values["loss"]))
        return outcomes

    @property
    def secure(self) -> bool:
        """Whether training updates travel under secure summation."""
        return self.cfg.fl.privacy.training == "secure_sum"

    @property
    def secure_size(self) -> int:
        """Length of a device's masked training vector (any tier)."""
        return secure_vector_size(self.n_items, self.dim)

    def accept_round(self, server_round: int, outcomes: dict[int, DeviceOutcome],
                     sampled: int, opened: OpenedSums | None = None) -> dict[str, int | float]:
        """Account the round's device outcomes, aggregate the accepted updates and move the
        masks when it is time.

        Under secure summation the updates are the tiers' ``opened`` sums; a device that replied
        in time but is not in them (its tier's sum could not be opened, or its part of the mask
        graph was cut off by dropouts) counts as failed.

        Returns the round's counts: ``succeeded``, ``failed`` (crashed, offline, over budget,
        their SuperNode lost, left out of the opened sums), ``rejected`` (malformed), ``late``
        (past ``fl.deadline_seconds`` on the simulated clock), ``skipped`` (1 when fewer than
        ``fl.min_success`` of the ``sampled`` devices succeeded: nothing is applied),
        ``up-bytes``, ``loss`` (mean over accepted devices, in device order) and ``moved``
        (entries moved by a mask update).
        """
        accepted: list[tuple[int, SparseUpdate | None, int, int]] = []
        losses, counts = [], {"failed": 0, "rejected": 0, "late": 0}
        deadline, up_bytes = self.cfg.fl.deadline_seconds, 0
        for device in sorted(outcomes):
            outcome = outcomes[device]
            up_bytes += outcome.up_bytes
            self.ledger.up_bytes[device] += outcome.up_bytes
            if outcome.kind != "replied":
                counts[outcome.kind] += 1
            elif 0.0 < deadline < outcome.sim_seconds:
                counts["late"] += 1                    # arrived after the round closed
            elif opened is not None and device not in opened.devices:
                counts["failed"] += 1
            else:
                accepted.append((device, outcome.update, outcome.train_bytes,
                                 outcome.payload_bytes))
                losses.append(outcome.loss)
        required = math.ceil(round(self.cfg.fl.min_success * sampled, 9))
        skipped = len(accepted) < required
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        moved = 0
        if skipped:
            logger.warning("round %d skipped: %d of %d sampled devices succeeded (fl.min_success "
                           "%g)", server_round, len(accepted), sampled, self.cfg.fl.min_success)
        else:
            self._apply(accepted, opened)
            moved = self.update_masks(server_round) if self.is_mask_round(server_round) else 0
        return {"succeeded": len(accepted), **counts, "skipped": int(skipped),
                "up-bytes": up_bytes,
                "loss": float(np.mean(losses)) if losses else float("nan"), "moved": moved}

    def _apply(self, accepted: list[tuple[int, SparseUpdate | None, int, int]],
               opened: OpenedSums | None) -> None:
        """Aggregate the round's accepted updates (device, update, train bytes, payload bytes),
        or the opened sums, and count the devices' participation."""
        if not self.method.accumulates:
            self.growth[:] = 0.0                       # growth by the last round's scores only
        if accepted:
            weighted_delta, weight, growth = (
                open_tier_sums(opened.sums, self.masks) if opened is not None else
                sum_sparse_updates(self.item, [update for _, update, _, _ in accepted]))
            self.item = self.server_step(self.item, weighted_delta, weight)
            self.growth += growth
        for device, _, train_bytes, payload in accepted:
            self.ledger.rounds[device] += 1
            self.ledger.up_payload_bytes[device] += payload
            self.ledger.max_train_bytes[device] = max(self.ledger.max_train_bytes[device],
                                                      train_bytes)

    # ------------------------------------------------------------------ evaluation
    def record_evaluation(self, device: int, metrics: dict[str, float],
                          user_row: np.ndarray | None = None) -> None:
        """A device's evaluation (and, after the final one, its user row)."""
        self.ledger.evaluation[device] = {key: float(value) for key, value in metrics.items()}
        if user_row is not None:
            self.ledger.user_rows[device] = user_row

    def evaluation_summary(self) -> dict[str, float] | None:
        """Fleet mean Recall@K / NDCG@K over devices with test items, and per tier (None
        before any evaluation)."""
        k = self.cfg.train.topk
        evaluated = {device: self.ledger.evaluation[device]
                     for device in sorted(self.ledger.evaluation)
                     if self.ledger.evaluation[device]["n-test"] > 0}
        if not evaluated:
            return None
        metrics: dict[str, float] = {}
        for name in (f"recall@{k}", f"ndcg@{k}"):
            metrics[name] = float(np.mean([result[name] for result in evaluated.values()]))
            for index, tier in enumerate(self.plan.tiers):
                values = [result[name] for device, result in evaluated.items()
                          if self.plan.device_tier[device] == index]
                metrics[f"{tier.name}/{name}"] = float(np.mean(values)) if values else float("nan")
        return metrics

    def summary(self) -> None:
        """Log the fleet and the method."""
        logger.info("federated %s: %d devices, tiers %s", self.cfg.sparse.method,
                    self.plan.n_devices, ", ".join(f"{t.name} (density {t.density:.3f})"
                                                   for t in self.plan.tiers))


def _failures(server_round: int, sent: list[int],
              errors: list[tuple[int, str, bool]]) -> dict[int, DeviceOutcome]:
    """A ``"failed"`` outcome for each device of ``sent`` a reply reports an error for
    (device, reason, simulated), logged (simulated faults at DEBUG)."""
    outcomes = {}
    for device, reason, simulated in errors:
        if device in sent:
            logger.log(logging.DEBUG if simulated else logging.WARNING,
                       "round %d: device %d failed: %s", server_round, device, reason)
            outcomes[device] = DeviceOutcome("failed")
    return outcomes
