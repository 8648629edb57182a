"""Flower glue of secure summation (:mod:`fedsparse.federated.secure_sum`): the round trips of
federated NMF (:mod:`fedsparse.federated.nmf`) and of a secure training round
(:mod:`fedsparse.federated.secure_training`).

Every phase runs the same stages: the devices send fresh public keys (QUERY
``secure-keys``); the server pairs them in a seeded mask graph and sends each its peers' keys
with the work; the devices reply with masked vectors, summed per SuperNode (per tier in
training); the server takes back the vectors of survivors cut off from every large enough group
(``nmf-resend``/``train-resend``), asks the neighbours of dropped devices for those pairs'
secrets (``secure-reveal``) and opens the sums. A deployed device (one per SuperNode) runs the
same stages; the bytes charged to each device are those of its own records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from flwr.app import ArrayRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from tqdm.auto import tqdm

from fedsparse.config import ExperimentConfig
from fedsparse.errors import FedsparseError
from fedsparse.federated.fleet import fleet_identity
from fedsparse.federated.nmf import (Unmasking, contribution_size, nmf_server_step,
                                     plan_unmasking)
from fedsparse.federated.secure_sum import dangling_masks, decode_fixed, mask_graph
from fedsparse.federated.secure_training import TRAINING_STEP_BASE
from fedsparse.federated.server import OpenedSums
from fedsparse.fl.records import (KEY_RECORD, PEERS_RECORD, arrays_record, config_record,
                                  device_key, keys_record, named_record_bytes, own_key_bytes,
                                  own_peers_bytes, peers_record, record_arrays, record_keys)
from fedsparse.fl.strategy import SparseFedStrategy
from fedsparse.seeding import numpy_rng_for
from fedsparse.sparse.federated import initial_nmf_items

logger = logging.getLogger(__name__)

#: Seconds to wait for one round's (or query's) replies.
ROUND_TIMEOUT_SECONDS = 3600.0


def query_all(grid: Grid, nodes: list[int], contents: list[RecordDict]) -> list[Message]:
    """One QUERY per node; every node must answer without an error."""
    messages = [Message(content=content, dst_node_id=node, message_type=MessageType.QUERY)
                for node, content in zip(nodes, contents)]
    replies = list(grid.send_and_receive(messages, timeout=ROUND_TIMEOUT_SECONDS))
    errors = [reply.error.reason for reply in replies if reply.has_error()]
    if errors or len(replies) != len(messages):
        raise FedsparseError(f"query failed on {len(messages) - len(replies) + len(errors)} "
                             f"devices: {errors[:1]}")
    return replies


def _content(config: dict, question: str, devices: list[int],
             records: dict[str, ArrayRecord] | None = None) -> RecordDict:
    return RecordDict({"config": config_record({**config, "question": question,
                                                "devices": devices}), **(records or {})})


def by_node(node_devices: dict[int, list[int]], devices: list[int]) -> dict[int, list[int]]:
    """Node -> those of ``devices`` it simulates (nodes with none left out)."""
    wanted = set(devices)
    grouped = {node: [device for device in simulated if device in wanted]
               for node, simulated in sorted(node_devices.items())}
    return {node: chosen for node, chosen in grouped.items() if chosen}


def collect_public_keys(grid: Grid, addressed: dict[int, list[int]],
                        config: dict) -> tuple[dict[int, bytes], dict[int, int]]:
    """Every addressed device's fresh public key (a device that does not answer, offline, is
    left out), and the bytes of each one's key record."""
    replies = query_all(grid, list(addressed), [_content(config, "secure-keys", devices)
                                                for devices in addressed.values()])
    public: dict[int, bytes] = {}
    for reply in replies:
        record = reply.content.array_records.get(KEY_RECORD)
        if record is not None:
            asked = set(addressed[int(reply.metadata.src_node_id)])
            public.update({device: key for device, key in record_keys(record).items()
                           if device in asked})
    return public, {device: own_key_bytes() for device in public}


def masked_sums(replies: list[Message], size: int,
                prefix: str) -> dict[str, tuple[np.ndarray, set[int]]]:
    """The replies' masked sums (records ``prefix`` or ``prefix.<tier>``) added up per record
    name (mod 2^64), with the devices in each."""
    sums: dict[str, tuple[np.ndarray, set[int]]] = {}
    for reply in replies:
        records = reply.content.array_records                  # a view built on each access
        for key, record in records.items():
            if key != prefix and not key.startswith(prefix + "."):
                continue
            arrays = record_arrays(record)
            masked = arrays.get("masked")
            if masked is None or masked.shape != (size,) or masked.dtype != np.uint64:
                raise FedsparseError(f"secure sum: malformed {key} from node "
                                     f"{reply.metadata.src_node_id}")
            total, sent = sums.setdefault(key, (np.zeros(size, np.uint64), set()))
            total += masked
            sent.update(int(device) for device in arrays["devices"])
    return sums


@dataclass(frozen=True)
class MaskPeers:
    """Devices' peers in the mask graph and the devices' public keys: what a message tells
    the devices it addresses about their peers (:class:`~fedsparse.fl.strategy.
    CohortRecords`)."""

    peers: dict[int, list[int]]
    public: dict[int, bytes]

    def records(self, devices: list[int]) -> dict[str, ArrayRecord]:
        """The ``devices``' peers with their public keys, as they get them (a device outside
        the graph, which sent no key, has none)."""
        return {PEERS_RECORD: peers_record({device: self.peers[device] for device in devices
                                            if device in self.peers}, self.public)}

    def own_bytes(self, device: int) -> int:
        """Bytes of the peers record of a message to ``device`` alone (0 outside the
        graph)."""
        return own_peers_bytes(len(self.peers[device])) if device in self.peers else 0


@dataclass(frozen=True)
class SecureGroup(MaskPeers):
    """Devices whose masked vectors add up to one sum: the mask graph, their public keys,
    and the name of their sums' records."""

    record: str


def open_sum(grid: Grid, node_devices: dict[int, list[int]], config: dict, group: SecureGroup,
             masked: tuple[np.ndarray, set[int]], *, step: int, min_aggregate: int,
             resend: Callable[[list[int]], RecordDict]
             ) -> tuple[np.ndarray | None, Unmasking, dict[int, int]]:
    """Open one group's sum of masked vectors (``masked``: total and the devices in it).

    Survivors cut off into components smaller than ``min_aggregate`` are asked for their
    vectors again (``resend(devices)`` builds such a query) and taken back out; the neighbours
    of dropped devices reveal those pairs' secrets. Returns the opened sum (uint64; None when
    no component is large enough), the plan, and the bytes each device sent for it beyond its
    vector.
    """
    total, sent = masked[0].copy(), masked[1]
    size = total.size
    plan = plan_unmasking(group.peers, sent, min_aggregate)
    extra: dict[int, int] = {}
    if not plan.components:
        return None, plan, extra
    if plan.excluded:
        resent = by_node(node_devices, plan.excluded)
        replies = query_all(grid, list(resent), [resend(devices) for devices in resent.values()])
        taken = masked_sums(replies, size, group.record)
        total -= taken[group.record][0]
        for device in plan.excluded:
            extra[device] = extra.get(device, 0) + 8 * size
    revealed: dict[tuple[int, int], bytes] = {}
    if plan.reveal:
        asked = by_node(node_devices, list(plan.reveal))
        contents = [_content(config, "secure-reveal", devices, {
            device_key("dropped", device): keys_record(
                {peer: group.public[peer] for peer in plan.reveal[device]},
                component=np.array([plan.component_size(device)], np.int64))
            for device in devices}) for devices in asked.values()]
        for reply in query_all(grid, list(asked), contents):
            records = reply.content.array_records              # a view built on each access
            for device in asked[int(reply.metadata.src_node_id)]:
                key = device_key("reveal", device)
                record = records.get(key)
                if record is None:
                    raise FedsparseError(f"secure sum: no reveal from device {device}")
                revealed.update({(device, peer): secret
                                 for peer, secret in record_keys(record).items()})
                extra[device] = extra.get(device, 0) + named_record_bytes(key, record)
    return total - dangling_masks(revealed, step, size), plan, extra


def _masked_record_bytes(record: str, size: int) -> int:
    """Bytes of one device's own masked-vector record (its key and arrays)."""
    return named_record_bytes(record, arrays_record({"masked": np.zeros(size, np.uint64),
                                                     "devices": np.zeros(1, np.int64)}))


def federated_nmf(grid: Grid, node_devices: dict[int, list[int]], cfg: ExperimentConfig,
                  n_items: int, devices_per_node: int
                  ) -> tuple[np.ndarray, np.ndarray, list[dict[str, float]]]:
    """``fl.nmf_rounds`` multiplicative-update iterations with every device (or a fresh
    seeded sample of ``fl.nmf_devices`` in each), under secure summation.

    First every device sends a fresh public key. In each iteration the server pairs the
    iteration's devices in the mask graph (``fl.privacy.mask_neighbours``; one graph for every
    iteration when all take part). Each gets H (the first iteration none: devices make the
    seeded H0 themselves) and its peers' public keys, updates its own row W_u and sends its
    masked W_u^T R_u and W_u^T W_u; the server opens the sum of the devices that sent and
    updates H (a sample's sums give the same multiplicative step up to sampling: both
    statistics scale alike).

    Returns
    -------
    tuple
        H (d, n_items), the last summed W^T W (d, d), and one row per iteration: devices that
        sent, dropped, were left out and summed, and the bytes up and down per device.

    Raises
    ------
    FedsparseError
        An iteration in which no ``fl.privacy.min_aggregate`` connected devices sent.
    """
    dim, privacy = cfg.model.dim, cfg.fl.privacy
    base = {**fleet_identity(cfg), "rank": dim, "devices-per-node": devices_per_node,
            "fraction-bits": privacy.fraction_bits, "crash-prob": cfg.fl.crash_prob,
            "min-aggregate": privacy.min_aggregate}
    public, key_bytes = collect_public_keys(grid, dict(sorted(node_devices.items())), base)
    sample = cfg.fl.nmf_devices if 0 < cfg.fl.nmf_devices < len(public) else 0

    def group_of(step: int) -> SecureGroup:
        """The iteration's devices and their mask graph."""
        devices = sorted(public)
        if sample:
            chosen = numpy_rng_for(cfg.seed, step, 0, "nmf-sample").choice(
                len(devices), size=sample, replace=False)
            devices = [devices[index] for index in np.sort(chosen)]
        graph = numpy_rng_for(cfg.seed, step if sample else 0, 0, "secure-sum-graph")
        return SecureGroup(peers=mask_graph(devices, privacy.mask_neighbours, graph),
                           public=public, record="nmf")

    h, gram = initial_nmf_items(cfg.seed, dim, n_items), np.zeros((dim, dim))
    size, history = contribution_size(dim, n_items), []
    for step in tqdm(range(1, cfg.fl.nmf_rounds + 1), desc="federated NMF", unit="iter",
                     leave=False):
        group = group_of(step)
        down = {"h": arrays_record({"h": h})} if step > 1 else {}

        def work(question: str, devices: list[int]) -> RecordDict:
            return _content({**base, "step": step}, question, devices,
                            {**down, **group.records(devices)})

        addressed = by_node(node_devices, list(group.peers))
        replies = query_all(grid, list(addressed), [work("nmf", devices)
                                                    for devices in addressed.values()])
        masked = masked_sums(replies, size, "nmf").get("nmf", (np.zeros(size, np.uint64), set()))
        opened, plan, extra = open_sum(grid, node_devices, base, group, masked, step=step,
                                       min_aggregate=privacy.min_aggregate,
                                       resend=lambda devices: work("nmf-resend", devices))
        if opened is None:
            raise FedsparseError(f"federated NMF iteration {step}: no {privacy.min_aggregate} "
                                 f"connected devices sent (fl.privacy.min_aggregate); "
                                 f"{len(masked[1])} of {len(group.peers)} did")
        h, gram = nmf_server_step(h, decode_fixed(opened, privacy.fraction_bits))
        sent = len(masked[1])
        history.append({
            "iteration": step, "sent": sent, "dropped": len(group.peers) - sent,
            "left-out": len(plan.excluded), "summed": sum(map(len, plan.components)),
            "up-bytes-per-device": (float(np.mean(list(key_bytes.values()))) if step == 1 else 0)
            + _masked_record_bytes("nmf", size) + sum(extra.values()) / max(sent, 1),
            "down-bytes-per-device": float(np.mean([group.own_bytes(device)
                                                    for device in group.peers]))
            + sum(named_record_bytes(key, record) for key, record in down.items())})
        logger.debug("federated NMF iteration %d: |H| %.4g", step, np.linalg.norm(h))
    return h, gram, history


def secure_train_round(strategy: SparseFedStrategy, grid: Grid, server_round: int) -> dict:
    """One training round under secure summation: keys, training with each device's peers,
    then each tier's sum opened and handed to the server half with the per-device outcomes.
    Returns the round's counts (:meth:`~fedsparse.federated.server.FleetServer.accept_round`)
    with ``sampled``."""
    server, cfg = strategy.server, strategy.server.cfg
    privacy, step = cfg.fl.privacy, TRAINING_STEP_BASE + server_round
    devices = server.sample_devices(server_round)
    base = {**fleet_identity(cfg), "devices-per-node": server.devices_per_node,
            "round": server_round, "offline-prob": cfg.fl.offline_prob,
            "offline-rounds": cfg.fl.offline_rounds, "min-aggregate": privacy.min_aggregate}
    public, key_bytes = collect_public_keys(grid, by_node(strategy.node_devices, devices), base)
    tiers = sorted({int(server.plan.device_tier[device]) for device in public})
    groups = {tier: SecureGroup(
        peers=mask_graph([d for d in sorted(public) if server.plan.device_tier[d] == tier],
                         privacy.mask_neighbours,
                         numpy_rng_for(cfg.seed, server_round, tier, "secure-sum-graph")),
        public=public, record=device_key("secure", tier)) for tier in tiers}
    peers = MaskPeers(peers={device: linked for group in groups.values()
                             for device, linked in group.peers.items()}, public=public)
    messages = strategy.configure_train(server_round, None, None, grid, records=peers)
    replies = list(grid.send_and_receive(messages, timeout=ROUND_TIMEOUT_SECONDS))
    outcomes = strategy.secure_outcomes(server_round, replies)
    sums = masked_sums([reply for reply in replies if not reply.has_error()],
                       server.secure_size, "secure")
    opened, in_sums, extra = {}, set(), dict(key_bytes)
    for tier, group in groups.items():
        masked = sums.get(group.record, (np.zeros(server.secure_size, np.uint64), set()))
        train_config = server.device_config(server_round, [])
        total, plan, more = open_sum(
            grid, strategy.node_devices, base, group, masked, step=step,
            min_aggregate=privacy.min_aggregate,
            resend=lambda chosen: _content({**train_config, **base}, "train-resend", chosen,
                                           peers.records(chosen)))
        for device, count in more.items():
            extra[device] = extra.get(device, 0) + count
        if total is None:
            logger.warning("round %d: tier %s's sum not opened: %d devices sent, fewer than "
                           "fl.privacy.min_aggregate connected", server_round,
                           server.plan.tiers[tier].name, len(masked[1]))
            continue
        opened[tier] = decode_fixed(total, privacy.fraction_bits)
        in_sums.update(device for component in plan.components for device in component)
    for device, count in extra.items():
        if device in outcomes:
            outcomes[device] = replace(outcomes[device],
                                       up_bytes=outcomes[device].up_bytes + count)
        else:
            server.ledger.up_bytes[device] += count
    counts = server.accept_round(server_round, outcomes, len(devices),
                                 OpenedSums(sums=opened, devices=frozenset(in_sums)))
    return {"sampled": len(devices), **counts}
