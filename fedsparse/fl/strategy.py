"""Flower glue of the server half: a message-API ``Strategy`` around
:class:`~fedsparse.federated.server.FleetServer`.

Each round it sends every SuperNode with sampled devices (a cohort; one device in a
deployment) one message with their tiers' sparse slices (once per tier) and the config naming
them, and turns each reply back into per-device outcomes for the server: a failed SuperNode
fails all its devices, a reply's ``errors`` record fails the devices it names, and its packed
``updates`` and ``replies`` go to the server to be checked device by device. Never Flower's
dense ``FedAvg`` aggregation, which would average index arrays. The byte ledger charges each
device its own records: its tier's slice and the config of a message to it alone down, the
pack of its update alone up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsparse.federated.server import DeviceOutcome, FleetServer
from fedsparse.fl.records import (config_record, device_key, message_bytes, record_arrays,
                                  slice_record)

logger = logging.getLogger(__name__)


class CohortRecords(Protocol):
    """Records about each device that a message carries for all the devices it addresses
    together (under secure summation, their mask peers: :class:`~fedsparse.fl.secure_rounds.
    MaskPeers`)."""

    def records(self, devices: list[int]) -> dict[str, ArrayRecord]:
        """The records of a message addressing ``devices``."""

    def own_bytes(self, device: int) -> int:
        """Bytes of those records in a message to ``device`` alone, with their keys."""


class SparseFedStrategy(Strategy):
    """Federated SparseRec's server half on Flower's message API.

    Parameters
    ----------
    server:
        The server half (global table, masks, ledger).
    node_devices:
        Flower node id -> the devices its SuperNode simulates (a cohort), covering the fleet.
    """

    def __init__(self, server: FleetServer, node_devices: dict[int, list[int]]) -> None:
        self.server = server
        self.node_devices = node_devices
        self.device_nodes = {device: node for node, devices in node_devices.items()
                             for device in devices}
        if sorted(self.device_nodes) != list(range(server.plan.n_devices)):
            raise ValueError(f"node_devices must cover devices 0..{server.plan.n_devices - 1} "
                             "once")
        self.state_dir = ""                            # devices persist their state here
        self._sent: dict[int, list[int]] = {}          # node -> devices of the last send
        self.sampled = 0                               # devices sent TRAIN this round

    def _messages(self, server_round: int, devices: list[int], message_type: str,
                  extra: dict[str, Any] | None = None,
                  records: CohortRecords | None = None) -> list[Message]:
        """One message per SuperNode with any of ``devices``: the tier slices its devices need
        (once per tier), the config naming them and ``records`` about them (their mask peers
        under secure summation). Each device is charged its own records: its tier's slice, the
        config and ``records`` of a message to it alone."""
        server = self.server
        slices: dict[int, ArrayRecord] = {}
        own_bytes: dict[int, int] = {}     # per tier: a ConfigRecord's bytes depend on its keys
                                           # and value types only, the same for every device
        by_node: dict[int, list[tuple[int, int]]] = {}
        for device in devices:
            tier = int(server.plan.device_tier[device])
            if tier not in slices:
                slices[tier] = slice_record(server.tier_table(tier))
                own = config_record({**server.device_config(server_round, [(device, tier)]),
                                     **(extra or {})})
                own_bytes[tier] = slices[tier].count_bytes() + own.count_bytes()
            server.charge_down(device, own_bytes[tier] + (
                0 if records is None else records.own_bytes(device)))
            by_node.setdefault(self.device_nodes[device], []).append((device, tier))
        self._sent = {}
        messages = []
        for node, pairs in sorted(by_node.items()):
            config = {**server.device_config(server_round, pairs), **(extra or {})}
            if self.state_dir:         # the simulation's own instruction: not protocol bytes
                config["state-dir"] = self.state_dir
            content = RecordDict({"config": config_record(config)})
            for tier in sorted({tier for _, tier in pairs}):
                content[device_key("item", tier)] = slices[tier]
            if records is not None:
                content.update(records.records([device for device, _ in pairs]))
            self._sent[node] = [device for device, _ in pairs]
            messages.append(Message(content=content, dst_node_id=node, message_type=message_type))
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid, records: CohortRecords | None = None
                        ) -> Iterable[Message]:
        """One TRAIN message per SuperNode with sampled devices, with their tiers' slices and
        ``records`` about them. ``arrays`` and ``config`` are not used: the global state
        lives in the server half."""
        devices = self.server.sample_devices(server_round)
        self.sampled = len(devices)
        return self._messages(server_round, devices, MessageType.TRAIN, records=records)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord]:
        """The replies as per-device outcomes, accepted by the server half; returns None (the
        global table stays in :attr:`server`) and the round's counts
        (:meth:`FleetServer.accept_round`; a reply from an unknown node counts as rejected)."""
        outcomes: dict[int, DeviceOutcome] = {}
        strangers = 0
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in self._sent:
                strangers += 1
                logger.warning("round %d: rejected a reply from unknown node %d", server_round,
                               node)
            elif reply.has_error():                    # the whole SuperNode failed
                logger.warning("round %d: devices %s failed: %s", server_round, self._sent[node],
                               reply.error.reason)
                outcomes.update({device: DeviceOutcome("failed") for device in self._sent[node]})
            else:
                outcomes.update(self._node_outcomes(server_round, node, reply.content))
        counts = self.server.accept_round(server_round, outcomes, self.sampled)
        counts["rejected"] += strangers
        return None, MetricRecord(counts)

    def secure_outcomes(self, server_round: int,
                        replies: Iterable[Message]) -> dict[int, DeviceOutcome]:
        """Per-device outcomes of a secure training round's replies (their errors and clear
        metrics; the updates are in the masked sums, which the engine opens): a failed
        SuperNode fails all its devices, a reply from an unknown node is ignored."""
        outcomes: dict[int, DeviceOutcome] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in self._sent:
                logger.warning("round %d: ignored a reply from unknown node %d", server_round,
                               node)
            elif reply.has_error():
                logger.warning("round %d: devices %s failed: %s", server_round, self._sent[node],
                               reply.error.reason)
                outcomes.update({device: DeviceOutcome("failed") for device in self._sent[node]})
            else:
                metrics = reply.content.metric_records.get("replies")
                outcomes.update(self.server.secure_outcomes(
                    server_round, self._sent[node], None if metrics is None else dict(metrics),
                    _errors(reply.content)))
        return outcomes

    def _node_outcomes(self, server_round: int, node: int,
                       content: RecordDict) -> dict[int, DeviceOutcome]:
        """A SuperNode's reply as the server half's per-device outcomes."""
        failures = _errors(content)
        updates, metrics = content.get("updates"), content.get("replies")
        if updates is None and metrics is None:
            return self.server.pack_outcomes(server_round, self._sent[node], None, failures)
        if isinstance(updates, ArrayRecord) and isinstance(metrics, MetricRecord):
            pack = (record_arrays(updates), dict(metrics))
        else:
            pack = ({}, {})                            # rejected by the server as malformed
        return self.server.pack_outcomes(server_round, self._sent[node], pack, failures,
                                         pack_bytes=message_bytes(content))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """One EVALUATE message to every SuperNode for all its devices; ``config`` entries
        (e.g. ``export-user``: reply with the user rows, for the results file) go along."""
        return self._messages(server_round, list(range(self.server.plan.n_devices)),
                              MessageType.EVALUATE, dict(config) if config else None)

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        """Each device's evaluation to the server half; the fleet mean Recall@K / NDCG@K over
        devices with test items, and per tier."""
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
                user = reply.content.get(device_key("user", device))
                self.server.record_evaluation(device, dict(metrics),
                                              None if user is None else user["values"].numpy())
        summary = self.server.evaluation_summary()
        return None if summary is None else MetricRecord(summary)

    def summary(self) -> None:
        """Log the fleet and the method."""
        self.server.summary()


def _errors(content: RecordDict) -> list[tuple[int, str, bool]]:
    """The (device, reason, simulated) failures a reply's ``errors`` record reports."""
    errors = content.get("errors")
    return ([] if errors is None else
            [(int(device), str(reason), bool(simulated)) for device, reason, simulated
             in zip(errors["devices"], errors["reasons"], errors["simulated"])])
