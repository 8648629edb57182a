"""Records of the protocol: slices and updates round-trip; malformed replies are rejected;
failed, late and too few replies."""

import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import (Array, Context, Error, Message, MessageType, MetricRecord, RecordDict)

from fedsparse.data import load_dataset
from fedsparse.federated.devices import CohortState
from fedsparse.federated.fleet import plan_fleet
from fedsparse.federated.protocol import (Expected, decode_update, encode_update, pack_updates,
                                          reply_metrics, unpack_updates)
from fedsparse.federated.server import FleetServer
from fedsparse.fl.client_app import evaluate, train
from fedsparse.fl.records import (PEERS_RECORD, arrays_record, own_peers_bytes, peers_record,
                                  record_arrays, record_peers, slice_from_record, slice_record)
from fedsparse.fl.strategy import SparseFedStrategy
from fedsparse.seeding import generator_for
from fedsparse.sparse import SparseEmbeddingTable
from fedsparse.sparse.masks import random_mask
from fedsparse.train.device import DeviceUpdate


@pytest.mark.parametrize("density", [0.1, 0.9])            # csr and bitmap layouts
def test_slice_round_trips(density):
    mask = random_mask(30, 16, density, generator_for(0, 0, 0, "m"))
    table = SparseEmbeddingTable.from_dense(torch.randn(30, 16), mask)
    back = slice_from_record(slice_record(table), 30, 16)
    assert back.index_layout == table.index_layout
    assert torch.equal(back.to_dense(), table.to_dense()) and torch.equal(back.mask(), table.mask())


def test_slice_that_does_not_fit_is_refused():
    table = SparseEmbeddingTable.from_dense(torch.randn(30, 16),
                                            random_mask(30, 16, 0.2, generator_for(0, 0, 0, "m")))
    record = slice_record(table)
    record["row_counts"] = Array(np.zeros(30, np.uint8))
    with pytest.raises(ValueError, match="row_counts"):
        slice_from_record(record, 30, 16)


def test_a_cohorts_peers_travel_in_one_record_and_each_device_is_charged_its_own():
    """Three devices' mask peers (one without any) round-trip through one record; what one
    device is charged is the bytes of the record a message to it alone carries."""
    public = {peer: bytes([peer]) * 32 for peer in range(10)}
    peers = {4: [1, 7, 9], 2: [3], 6: []}
    back = record_peers(peers_record(peers, public))
    assert back == {device: {peer: public[peer] for peer in linked}
                    for device, linked in peers.items()}
    assert list(back) == [2, 4, 6]
    for device, linked in peers.items():
        alone = peers_record({device: linked}, public)
        assert own_peers_bytes(len(linked)) == alone.count_bytes() + len(PEERS_RECORD)


def test_update_round_trips():
    dim, topk = 4, 2
    mask = np.zeros((5, dim), bool)
    mask[[1, 3]] = [True, False, True, False]
    entries = np.array([4, 6, 12, 14])
    update = DeviceUpdate(entries=entries, values=np.array([1, 2, 3, 4], np.float32),
                          grow_entries=np.array([5, 13, 15]),
                          grow_scores=np.array([0.5, 0.25, 2.0], np.float32),
                          examples=6, loss=0.5, train_bytes=100, steps=2)
    arrays = record_arrays(arrays_record(encode_update(update, dim=dim, topk=topk)))
    metrics = dict(MetricRecord(reply_metrics(update, device=3, server_round=2, tier_index=0,
                                              sim_seconds=0.02)))
    decoded = decode_update(arrays, metrics, Expected(device=3, server_round=2, tier_index=0,
                                                      tier_mask=mask, topk=topk))
    assert decoded.weight == 6 and decoded.device == 3
    assert decoded.entries.tolist() == entries.tolist()
    assert decoded.values.tolist() == [1, 2, 3, 4]
    assert decoded.grow_entries.tolist() == [5, 13, 15]
    np.testing.assert_allclose(decoded.grow_scores, [0.5, 0.25, 2.0], atol=2.0 / 510)


# ---------------------------------------------------------------- malformed replies

def _set(key, value):
    def mutate(arrays, metrics):
        arrays[key] = value(arrays[key]) if callable(value) else value
    return mutate


def _metric(key, value):
    def mutate(arrays, metrics):
        metrics[key] = value(metrics[key]) if callable(value) else value
    return mutate


def _drop(key):
    def mutate(arrays, metrics):
        (arrays if key in arrays else metrics).pop(key)
    return mutate


def _poison(position, value):
    def mutate(arrays, metrics):
        values = arrays["values"].copy()
        values[position] = value
        arrays["values"] = values
    return mutate


def _repeat_row(arrays, metrics):
    rows = arrays["rows"].copy()
    rows[1] = rows[0]
    arrays["rows"] = rows


MALFORMED = {
    "wrong dtype": (_set("values", lambda v: v.astype(np.float64)), "dtype"),
    "wrong shape": (_set("grow_cols", lambda c: c[:, :1].copy()), "shape"),
    "wrong rank": (_set("rows", lambda r: r.reshape(-1, 1)), "1-D"),
    "index out of range": (_set("rows", lambda r: np.append(r[:-1], 10_000).astype(np.int32)),
                           "out of range"),
    "negative index": (_set("rows", lambda r: np.append(-1, r[1:]).astype(np.int32)),
                       "out of range"),
    "duplicate index": (_repeat_row, "ascending and distinct"),
    "too few values": (_set("values", lambda v: v[:-1].copy()), "values, the tier mask has"),
    "NaN": (_poison(0, np.nan), "NaN or Inf"),
    "Inf": (_poison(1, np.inf), "NaN or Inf"),
    "huge values": (_poison(0, 1e9), "above"),
    "NaN growth scale": (_set("grow_scale", np.array([np.nan], np.float32)), "NaN or Inf"),
    "missing key": (_drop("grow_scores"), "missing array 'grow_scores'"),
    "extra key": (_set("extra", np.zeros(3, np.float32)), "unexpected array 'extra'"),
    "missing metric": (_drop("num-examples"), "missing metric 'num-examples'"),
    "wrong tier": (_metric("tier-index", lambda t: t + 1), "tier-index"),
    "replayed round": (_metric("round", lambda r: r - 1), "round"),
    "another device": (_metric("device", lambda d: d + 1), "device"),
    "zero weight": (_metric("num-examples", 0), "not positive"),
}


@pytest.fixture()
def trained_round(server_identity, fleet_config, fleet_data):
    """A strategy after sending round 1, and the honest replies of its devices."""
    cfg = fleet_config("sparse.method=sparserec_no_nmf", "fl.speed_jitter=0.5",
                       "fl.privacy.training=plain")
    data = load_dataset(cfg.data.name)
    plan = plan_fleet(cfg, data)
    top = random_mask(data.n_items, cfg.model.dim, max(t.density for t in plan.tiers),
                      generator_for(0, 0, 0, "mask-init"))
    values = np.random.default_rng(0).normal(scale=0.1, size=top.shape).astype(np.float32)
    nodes = {100 + device: [device] for device in range(plan.n_devices)}

    def new_strategy():
        return SparseFedStrategy(FleetServer(cfg, plan, values, top), nodes)

    strategy = new_strategy()
    messages = list(strategy.configure_train(1, None, None, None))
    replies = []
    for message in messages:
        device = nodes[message.metadata.dst_node_id][0]
        context = Context(run_id=1, node_id=message.metadata.dst_node_id,
                          node_config={"partition-id": device, "num-partitions": plan.n_devices},
                          state=RecordDict(), run_config={})
        replies.append(train(message, context))
    return new_strategy, strategy, messages, replies


def _tamper(reply, mutate):
    """The reply with its one device's arrays and metrics changed by ``mutate``, repacked."""
    device = reply.metadata.src_node_id - 100
    packed = record_arrays(reply.content["updates"])
    [(arrays, metrics)] = unpack_updates(packed, dict(reply.content["replies"]),
                                         {device: 2}).values()     # the fleet's fl.growth_topk
    mutate(arrays, metrics)
    arrays, metrics = pack_updates({device: (arrays, metrics)})
    sent = Message(content=RecordDict({}), dst_node_id=reply.metadata.src_node_id,
                   message_type=MessageType.TRAIN)
    return Message(content=RecordDict({"updates": arrays_record(arrays),
                                       "replies": MetricRecord(metrics)}), reply_to=sent)


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_update_is_rejected_and_the_round_goes_on_without_it(kind, trained_round,
                                                                     caplog):
    new_strategy, strategy, _, replies = trained_round
    mutate, reason = MALFORMED[kind]
    bad = 3
    tampered = [*replies[:bad], _tamper(replies[bad], mutate), *replies[bad + 1:]]
    with caplog.at_level("WARNING"):
        _, counts = strategy.aggregate_train(1, tampered)
    assert counts["rejected"] == 1 and counts["succeeded"] == len(replies) - 1
    assert reason in caplog.text

    dropped_out = new_strategy()
    list(dropped_out.configure_train(1, None, None, None))
    dropped_out.aggregate_train(1, replies[:bad] + replies[bad + 1:])
    assert np.array_equal(strategy.server.item, dropped_out.server.item)
    assert all(np.array_equal(a, b)
               for a, b in zip(strategy.server.masks, dropped_out.server.masks))


def test_aggregation_ignores_reply_order(trained_round):
    new_strategy, strategy, _, replies = trained_round
    strategy.aggregate_train(1, replies)
    reordered = new_strategy()
    list(reordered.configure_train(1, None, None, None))
    reordered.aggregate_train(1, replies[::-1])
    assert np.array_equal(strategy.server.item, reordered.server.item)
    assert all(np.array_equal(a, b) for a, b in zip(strategy.server.masks, reordered.server.masks))


def test_devices_of_a_fleet_on_the_most_interacted_items_train_on_them(server_identity,
                                                                       fleet_config):
    cfg = fleet_config("sparse.method=sparserec_no_nmf", "data.max_items=25",
                       "fl.privacy.training=plain")
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    plan = plan_fleet(cfg, data)
    top = random_mask(data.n_items, cfg.model.dim, max(t.density for t in plan.tiers),
                      generator_for(0, 0, 0, "mask-init"))
    nodes = {100 + device: [device] for device in range(plan.n_devices)}
    server = FleetServer(cfg, plan, np.zeros(top.shape, np.float32), top)
    strategy = SparseFedStrategy(server, nodes)
    replies = []
    for message in strategy.configure_train(1, None, None, None):
        device = nodes[message.metadata.dst_node_id][0]
        assert message.content["config"]["max-items"] == 25
        context = Context(run_id=1, node_id=message.metadata.dst_node_id,
                          node_config={"partition-id": device}, state=RecordDict(), run_config={})
        replies.append(train(message, context))
    _, counts = strategy.aggregate_train(1, replies)
    assert counts["succeeded"] == plan.n_devices and counts["rejected"] == 0
    assert strategy.server.item.shape == (25, cfg.model.dim) and strategy.server.item.any()


def test_error_reply_counts_as_failed(trained_round, server_identity):
    _, strategy, messages, replies = trained_round
    failed = Message(error=Error(code=0, reason="device crashed"), reply_to=messages[0])
    _, counts = strategy.aggregate_train(1, [failed, *replies[1:]])
    assert counts["failed"] == 1 and counts["rejected"] == 0


def test_device_evaluates_with_its_own_slice(trained_round):
    strategy = trained_round[1]
    message = next(iter(strategy.configure_evaluate(1, None, None, None)))
    context = Context(run_id=1, node_id=message.metadata.dst_node_id,
                      node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    reply = evaluate(message, context)
    metrics = reply.content["metrics.0"]
    assert 0.0 <= metrics["recall@20"] <= 1.0 and metrics["n-test"] == 3
    tier = strategy.server.plan.tiers[strategy.server.plan.device_tier[0]]
    assert 0 < metrics["model-bytes"] <= tier.budget_bytes


def _with_fleet(strategy, **changes):
    strategy.server.cfg = dataclasses.replace(strategy.server.cfg,
                                       fl=dataclasses.replace(strategy.server.cfg.fl, **changes))


def _sim_seconds(reply):
    return float(reply.content["replies"]["sim-seconds"][0])


def test_replies_past_the_deadline_count_as_late(trained_round):
    new_strategy, strategy, _, replies = trained_round
    seconds = sorted(_sim_seconds(reply) for reply in replies)
    deadline = seconds[len(seconds) // 2]
    _with_fleet(strategy, deadline_seconds=deadline)
    _, counts = strategy.aggregate_train(1, replies)
    late = sum(s > deadline for s in seconds)
    assert late > 0 and counts["late"] == late and counts["succeeded"] == len(replies) - late

    on_time = [reply for reply in replies if _sim_seconds(reply) <= deadline]
    without_late = new_strategy()
    list(without_late.configure_train(1, None, None, None))
    without_late.aggregate_train(1, on_time)
    assert np.array_equal(strategy.server.item, without_late.server.item)


def test_a_round_with_too_few_successes_is_skipped(trained_round, server_identity):
    _, strategy, messages, replies = trained_round
    before = strategy.server.item.copy()
    crashed = [Message(error=Error(code=0, reason="SuperNode lost"), reply_to=message)
               for message in messages[:20]]
    _with_fleet(strategy, min_success=0.5)
    _, counts = strategy.aggregate_train(1, [*crashed, *replies[20:]])
    assert counts["failed"] == 20 and counts["succeeded"] == 4 and counts["skipped"] == 1
    assert np.array_equal(strategy.server.item, before) and strategy.server.skipped_in_a_row == 1
    assert not strategy.server.ledger.rounds.any()


def test_a_crashing_device_replies_with_an_error_and_keeps_its_state(fleet_config, server_identity,
                                                                     fleet_data):
    cfg = fleet_config("sparse.method=sparserec_no_nmf", "fl.crash_prob=0.5",
                       "fl.privacy.training=plain")
    plan = plan_fleet(cfg, fleet_data)
    top = random_mask(fleet_data.n_items, cfg.model.dim, max(t.density for t in plan.tiers),
                      generator_for(0, 0, 0, "mask-init"))
    strategy = SparseFedStrategy(FleetServer(cfg, plan, np.zeros(top.shape, np.float32), top),
                                 {100 + d: [d] for d in range(plan.n_devices)})
    outcomes = []
    for message in strategy.configure_train(1, None, None, None):
        device = message.metadata.dst_node_id - 100
        context = Context(run_id=1, node_id=message.metadata.dst_node_id,
                          node_config={"partition-id": device}, state=RecordDict(),
                          run_config={})
        reply = train(message, context)
        crashed = "errors" in reply.content
        outcomes.append(crashed)
        if crashed:
            assert list(reply.content["errors"]["devices"]) == [device]
            assert reply.content["errors"]["simulated"] == [True]
            assert "updates" not in reply.content
            kept = CohortState.from_arrays(record_arrays(context.state["cohort"]))
            fresh = CohortState.initial([device], cfg.seed, cfg.model.dim, cfg.model.init_std)
            assert np.array_equal(kept.values, fresh.values) and kept.step[0] == 0
    assert 0 < sum(outcomes) < len(outcomes)
