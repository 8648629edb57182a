"""The server strategy of federated SparseRec, on Flower's message-API ``Strategy``.

It keeps the global item table (dense on the server, which is not memory-bound; zero outside
the densest tier's mask), one nested mask per tier and the growth scores the devices sent since
the last mask update. Each round it sends every SuperNode with sampled devices (a cohort; one
device in a deployment) their tiers' sparse slices, decodes and checks each device's part of
the replies on its own (malformed ones are rejected with a logged reason and counted),
aggregates the accepted ones per entry in ascending device id (never through Flower's dense
``FedAvg`` aggregation, which would average index arrays), and every ``fl.mask_interval``
rounds prunes and regrows the densest tier's mask and re-derives the others from it. Devices
that report an error (crashed, offline, over budget) or whose SuperNode failed count as
failed, replies past ``fl.deadline_seconds`` on the simulated clock as late; a round with
fewer accepted updates than ``fl.min_success`` of its sampled devices is skipped.
:meth:`SparseFedStrategy.server_state` and :meth:`SparseFedStrategy.restore` carry its state
through a checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsparse.config import ExperimentConfig
from fedsparse.federated.checkpoint import LEDGER_ARRAYS, ServerState
from fedsparse.federated.fleet import FleetPlan, fleet_identity
from fedsparse.federated.methods import fleet_method
from fedsparse.federated.protocol import (PAYLOAD_ARRAYS, Expected, RejectedUpdate,
                                          decode_update, own_bytes, unpack_updates)
from fedsparse.fl.records import (config_record, device_key, message_bytes, record_arrays,
                                  slice_record)
from fedsparse.seeding import numpy_rng_for
from fedsparse.sparse import (SparseEmbeddingTable, cosine_update_fraction, is_update_step,
                              update_count, update_mask)
from fedsparse.sparse.federated import (SparseUpdate, aggregate_sparse_updates,
                                        nested_tier_masks)

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


class SparseFedStrategy(Strategy):
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
    node_devices:
        Flower node id -> the devices its SuperNode simulates (a cohort), covering the fleet.
    devices_per_node:
        The cohort size the SuperNodes were started with (sent in every message).
    """

    def __init__(self, cfg: ExperimentConfig, plan: FleetPlan, item_values: np.ndarray,
                 top_mask: np.ndarray, node_devices: dict[int, list[int]],
                 devices_per_node: int = 1) -> None:
        self.cfg, self.plan = cfg, plan
        self.method = fleet_method(cfg.sparse.method)
        self.devices_per_node = devices_per_node
        self.n_items, self.dim = item_values.shape
        self.item = np.where(top_mask, item_values, 0.0).astype(np.float32)
        self.growth = np.zeros(item_values.shape)
        self.top_tier = int(np.argmax([tier.density for tier in plan.tiers]))
        self.masks = self._tier_masks(top_mask)
        self.device_nodes = {device: node for node, devices in node_devices.items()
                             for device in devices}
        if sorted(self.device_nodes) != list(range(plan.n_devices)):
            raise ValueError(f"node_devices must cover devices 0..{plan.n_devices - 1} once")
        self.ledger = DeviceLedger.empty(plan.n_devices)
        self.mask_updates = 0
        self.skipped_in_a_row = 0
        self.state_dir = ""                            # devices persist their state here
        self._sent: dict[int, list[int]] = {}          # node -> devices of the last send
        self.sampled = 0                               # devices sent TRAIN this round

    # ------------------------------------------------------------------ masks
    def _tier_masks(self, top_mask: np.ndarray) -> list[np.ndarray]:
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
            masks={tier.name: mask for tier, mask in zip(self.plan.tiers, self.masks)},
            counters={"mask_updates": self.mask_updates,
                      "skipped_in_a_row": self.skipped_in_a_row,
                      "devices_per_node": self.devices_per_node},
            ledger={key: getattr(self.ledger, key) for key in LEDGER_ARRAYS},
            evaluation=self.ledger.evaluation, history=history, init_seconds=init_seconds)

    def restore(self, state: ServerState) -> None:
        """Continue from a checkpoint of this fleet (the inverse of :meth:`server_state`)."""
        self.item, self.growth = state.item, state.growth
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

    def _config(self, server_round: int, pairs: list[tuple[int, int]]) -> dict[str, Any]:
        """The ``"config"`` record of a message to the devices of ``pairs`` (device, tier)."""
        fl, tiers = self.cfg.fl, range(len(self.plan.tiers))
        return {"round": server_round, "devices": [device for device, _ in pairs],
                "device-tiers": [tier for _, tier in pairs],
                "devices-per-node": self.devices_per_node,
                "tier-budget-bytes": [self._enforced_budget(tier) for tier in tiers],
                "tier-growth-topk": [self.growth_topk(tier) for tier in tiers],
                "tier-steps-per-second": [tier.steps_per_second for tier in self.plan.tiers],
                **fleet_identity(self.cfg), "dim": self.dim,
                "init-std": self.cfg.model.init_std, "local-epochs": fl.local_epochs,
                "batch-size": fl.batch_size, "lr": fl.lr, "l2": fl.l2,
                "negatives": fl.negatives, "topk": self.cfg.train.topk,
                "threads": max(1, int(fl.client_cpus)),
                "crash-prob": fl.crash_prob, "offline-prob": fl.offline_prob,
                "offline-rounds": fl.offline_rounds, "speed-jitter": fl.speed_jitter}

    def growth_topk(self, tier: int) -> int:
        """Growth scores per touched row a device of ``tier`` sends: the tier's
        ``growth_topk``, else ``fl.growth_topk``; 0 for methods whose masks never grow (dense,
        static)."""
        return self.plan.tiers[tier].growth_topk if self.method.grows else 0

    def _enforced_budget(self, tier: int) -> int:
        """The tier's budget in bytes, or 0 (none) for dense FedAvg, whose devices all hold
        the full table whatever their tier."""
        return self.plan.tiers[tier].budget_bytes if self.method.enforces_budget else 0

    def _messages(self, server_round: int, devices: list[int], message_type: str,
                  extra: dict[str, Any] | None = None) -> list[Message]:
        """One message per SuperNode with any of ``devices``: the tier slices its devices need
        (once per tier) and the config naming them. Each device's ledger counts its own
        records: its tier's slice and the config of a message to it alone."""
        slices: dict[int, ArrayRecord] = {}
        own_bytes: dict[int, int] = {}     # per tier: a ConfigRecord's bytes depend on its keys
                                           # and value types only, the same for every device
        by_node: dict[int, list[tuple[int, int]]] = {}
        for device in devices:
            tier = int(self.plan.device_tier[device])
            if tier not in slices:
                slices[tier] = slice_record(self.tier_table(tier))
                own = config_record({**self._config(server_round, [(device, tier)]),
                                     **(extra or {})})
                own_bytes[tier] = slices[tier].count_bytes() + own.count_bytes()
            self.ledger.down_bytes[device] += own_bytes[tier]
            self.ledger.messages[device] += 1
            by_node.setdefault(self.device_nodes[device], []).append((device, tier))
        self._sent = {}
        messages = []
        for node, pairs in sorted(by_node.items()):
            config = {**self._config(server_round, pairs), **(extra or {})}
            if self.state_dir:         # the simulation's own instruction: not protocol bytes
                config["state-dir"] = self.state_dir
            content = RecordDict({"config": config_record(config)})
            for tier in sorted({tier for _, tier in pairs}):
                content[device_key("item", tier)] = slices[tier]
            self._sent[node] = [device for device, _ in pairs]
            messages.append(Message(content=content, dst_node_id=node, message_type=message_type))
        return messages

    # ------------------------------------------------------------------ Strategy interface
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One TRAIN message per SuperNode with sampled devices, with their tiers' slices.
        ``arrays`` and ``config`` are not used: the global state lives in the strategy."""
        devices = self.sample_devices(server_round)
        self.sampled = len(devices)
        return self._messages(server_round, devices, MessageType.TRAIN)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord]:
        """Check, decode and aggregate the round's replies; move the masks when it is time.

        Returns None (the global table stays in the strategy: ``item``, ``masks``) and the
        round's counts: replies ``succeeded``, ``failed`` (error replies: crashed, offline),
        ``rejected`` (malformed), ``late`` (past ``fl.deadline_seconds`` on the simulated
        clock), ``skipped`` (1 when fewer than ``fl.min_success`` of the sampled devices
        succeeded: nothing is applied), ``up-bytes``, ``loss`` (mean over accepted devices)
        and ``moved`` (entries moved by a mask update).
        """
        accepted: list[tuple[SparseUpdate, int, int]] = []
        losses, failed, rejected, late, up_bytes = [], 0, 0, 0, 0
        deadline = self.cfg.fl.deadline_seconds
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in self._sent:
                rejected += 1
                logger.warning("round %d: rejected a reply from unknown node %d", server_round,
                               node)
                continue
            if reply.has_error():                      # the whole SuperNode failed
                failed += len(self._sent[node])
                logger.warning("round %d: devices %s failed: %s", server_round, self._sent[node],
                               reply.error.reason)
                continue
            for device, outcome in self._node_outcomes(server_round, node, reply.content).items():
                up_bytes += outcome.up_bytes
                self.ledger.up_bytes[device] += outcome.up_bytes
                if outcome.kind == "failed":
                    failed += 1
                elif outcome.kind == "rejected":
                    rejected += 1
                elif 0.0 < deadline < outcome.sim_seconds:
                    late += 1                          # arrived after the round closed
                else:
                    accepted.append((outcome.update, outcome.train_bytes, outcome.payload_bytes))
                    losses.append((device, outcome.loss))
        required = math.ceil(round(self.cfg.fl.min_success * self.sampled, 9))
        skipped = len(accepted) < required
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        moved = 0
        if skipped:
            logger.warning("round %d skipped: %d of %d sampled devices succeeded (fl.min_success "
                           "%g)", server_round, len(accepted), self.sampled,
                           self.cfg.fl.min_success)
        else:
            self._apply(accepted)
            moved = self.update_masks(server_round) if self.is_mask_round(server_round) else 0
        metrics = MetricRecord({"succeeded": len(accepted), "failed": failed,
                                "rejected": rejected, "late": late, "skipped": int(skipped),
                                "up-bytes": up_bytes,
                                "loss": (float(np.mean([loss for _, loss in sorted(losses)]))
                                         if losses else float("nan")),
                                "moved": moved})
        return None, metrics

    def _node_outcomes(self, server_round: int, node: int,
                       content: RecordDict) -> dict[int, DeviceOutcome]:
        """Each device's part of a SuperNode's training reply (devices it was sent and that
        the reply names), checked and decoded device by device. A malformed pack rejects all
        its devices, which share its bytes."""
        sent = self._sent[node]
        outcomes = {}
        errors = content.get("errors")
        if errors is not None:
            for device, reason, simulated in zip(errors["devices"], errors["reasons"],
                                                 errors["simulated"]):
                if int(device) in sent:
                    logger.log(logging.DEBUG if simulated else logging.WARNING,
                               "round %d: device %d failed: %s", server_round, device, reason)
                    outcomes[int(device)] = DeviceOutcome("failed")
        if "updates" not in content and "replies" not in content:
            return outcomes
        try:
            updates, replies = content.get("updates"), content.get("replies")
            if not isinstance(updates, ArrayRecord) or not isinstance(replies, MetricRecord):
                raise RejectedUpdate("updates or replies missing, or of the wrong kind")
            topk = {device: self.growth_topk(int(self.plan.device_tier[device]))
                    for device in sent if device not in outcomes}
            unpacked = unpack_updates(record_arrays(updates), dict(replies), topk)
        except RejectedUpdate as exc:
            pending = [device for device in sent if device not in outcomes]
            logger.warning("round %d: rejected the updates of devices %s: %s", server_round,
                           pending, exc)
            share = message_bytes(content) // max(1, len(pending))
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
            if 0 < self._enforced_budget(tier) < train_bytes:
                raise RejectedUpdate(f"train-bytes {train_bytes} over the tier budget")
        except RejectedUpdate as exc:
            logger.warning("round %d: rejected the update of device %d: %s", server_round,
                           device, exc)
            return DeviceOutcome("rejected", up_bytes=size)
        return DeviceOutcome("replied", up_bytes=size, update=decoded, train_bytes=train_bytes,
                             payload_bytes=sum(arrays[key].nbytes for key in PAYLOAD_ARRAYS),
                             sim_seconds=float(metrics["sim-seconds"]),
                             loss=float(metrics["loss"]))

    def _apply(self, accepted: list[tuple[SparseUpdate, int, int]]) -> None:
        """Aggregate the round's accepted updates (update, train bytes, payload bytes) and count
        the devices' participation."""
        if not self.method.accumulates:
            self.growth[:] = 0.0                       # growth by the last round's scores only
        if accepted:
            self.item, round_growth = aggregate_sparse_updates(
                self.item, [update for update, _, _ in accepted], server_lr=self.cfg.fl.server_lr)
            self.growth += round_growth
        for update, train_bytes, payload in accepted:
            self.ledger.rounds[update.device] += 1
            self.ledger.up_payload_bytes[update.device] += payload
            self.ledger.max_train_bytes[update.device] = max(
                self.ledger.max_train_bytes[update.device], train_bytes)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """One EVALUATE message to every device with its tier's slice; ``config`` entries
        (e.g. ``export-user``: reply with the user row, for the results file) go along."""
        return self._messages(server_round, list(range(self.plan.n_devices)),
                              MessageType.EVALUATE, dict(config) if config else None)

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        """Fleet mean Recall@K / NDCG@K over devices with test items, and per tier."""
        k = self.cfg.train.topk
        for reply in replies:
            devices = self._sent.get(reply.metadata.src_node_id, [])
            if reply.has_error() or not devices:
                logger.warning("round %d: no evaluation from devices %s: %s", server_round,
                               devices, reply.error.reason if reply.has_error() else
                               "unknown node")
                continue
            for device in devices:
                metrics = reply.content.get(device_key("metrics", device))
                if metrics is None:
                    logger.warning("round %d: no evaluation from device %d", server_round, device)
                    continue
                self.ledger.evaluation[device] = {key: float(value)
                                                  for key, value in metrics.items()}
                user = reply.content.get(device_key("user", device))
                if user is not None:
                    self.ledger.user_rows[device] = user["values"].numpy()
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
        return MetricRecord(metrics)

    def summary(self) -> None:
        """Log the fleet and the method."""
        logger.info("federated %s: %d devices, tiers %s", self.cfg.sparse.method,
                    self.plan.n_devices, ", ".join(f"{t.name} (density {t.density:.3f})"
                                                   for t in self.plan.tiers))
