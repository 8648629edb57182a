"""The ServerApp: profile the fleet, initialise the masks (federated NMF or random), run the
rounds (:func:`~fedsparse.federated.rounds.run_rounds`) of the server half
(:class:`~fedsparse.federated.server.FleetServer`) through its Flower strategy
(:class:`~fedsparse.fl.strategy.SparseFedStrategy`), evaluate every device and write the
results directory.

In a simulation the server checkpoints its state after every round and the devices theirs, so
a killed run continues exactly (:mod:`fedsparse.federated.checkpoint`). Two entry points run
the same :func:`run_fleet`: :func:`build_server_app` (config passed by closure, for
``fedsparse simulate``, whose Flower path leaves ``context.run_config`` empty) and the
module-level ``app`` for ``flwr run`` and deployments, which reads ``config`` (a TOML path),
``overrides`` (``key=value`` pairs separated by ``;``) and ``out`` from the run config.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedsparse.config import ExperimentConfig, config_toml, load_config
from fedsparse.data import InteractionData, load_dataset
from fedsparse.errors import FedsparseError
from fedsparse.federated.checkpoint import (ServerState, restore_cohort_state,
                                            save_server_state)
from fedsparse.federated.devices import CohortState
from fedsparse.federated.fleet import FleetPlan, fleet_identity, plan_fleet, supernode_count
from fedsparse.federated.methods import fleet_method
from fedsparse.federated.rounds import run_rounds
from fedsparse.federated.server import FleetServer
from fedsparse.fl.records import config_record
from fedsparse.fl.secure_rounds import (ROUND_TIMEOUT_SECONDS, federated_nmf, query_all,
                                        secure_train_round)
from fedsparse.fl.strategy import SparseFedStrategy
from fedsparse.report.fleet import FleetRun, write_fleet_run
from fedsparse.report.results import write_atomically
from fedsparse.seeding import generator_for, numpy_rng_for
from fedsparse.sparse.federated import nmf_item_scores
from fedsparse.sparse.masks import prefix_mask, random_mask, top_fraction_mask

logger = logging.getLogger(__name__)

#: Sees each (message sent, reply) pair of a run.
Observer = Callable[[Message, Message], None]
#: Seconds to wait for all SuperNodes to register.
NODE_WAIT_SECONDS = 120.0
#: Devices evaluated per round trip: bounds the slices in flight (a dense Gowalla slice is 10 MB).
EVALUATION_BATCH = 256


class ObservedGrid:
    """A ``Grid`` that hands every reply it receives, with the message it answers, to
    ``observer`` before returning it: what a curious server keeps (the privacy benchmark,
    the leak-scan test)."""

    def __init__(self, grid: Grid, observer: Observer) -> None:
        self.grid, self.observer = grid, observer

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        sent = {message.metadata.dst_node_id: message for message in messages}
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            self.observer(sent[reply.metadata.src_node_id], reply)
        return replies


def wait_for_nodes(grid: Grid, expected: int, timeout: float = NODE_WAIT_SECONDS) -> list[int]:
    """Node ids (Python ints) once ``expected`` nodes have registered.

    Raises
    ------
    FedsparseError
        When they have not within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        nodes = [int(node) for node in grid.get_node_ids()]
        if len(nodes) >= expected:
            return sorted(nodes)
        if time.monotonic() > deadline:
            raise FedsparseError(f"only {len(nodes)} of {expected} devices registered within "
                                 f"{timeout:.0f} s")
        time.sleep(0.2)


def profile_devices(grid: Grid, nodes: list[int], cfg: ExperimentConfig, plan: FleetPlan,
                    devices_per_node: int) -> dict[int, list[int]]:
    """Ask every node which devices (its cohort) it simulates; returns node id -> devices."""
    question = {"question": "profile", **fleet_identity(cfg),
                "devices-per-node": devices_per_node}
    replies = query_all(grid, nodes, [RecordDict({"config": config_record(question)})
                                       for _ in nodes])
    node_devices = {int(reply.metadata.src_node_id): [int(device) for device in
                                                      reply.content["profile"]["devices"]]
                    for reply in replies}
    if sorted(d for devices in node_devices.values() for d in devices) != \
            list(range(plan.n_devices)):
        raise FedsparseError(f"the {len(nodes)} nodes are not devices 0..{plan.n_devices - 1} "
                             "once each (check each SuperNode's partition-id)")
    return node_devices


def initial_top_mask(grid: Grid, node_devices: dict[int, list[int]], cfg: ExperimentConfig,
                     plan: FleetPlan, n_items: int, devices_per_node: int
                     ) -> tuple[np.ndarray, list[dict[str, float]]]:
    """The densest tier's first mask: all entries (dense), its leading dimensions (nested
    dimensions), uniform random, or by federated NMF scores (``sparse.method``'s
    ``initial_mask``); and federated NMF's iteration rows (none without it)."""
    dim, density = cfg.model.dim, max(tier.density for tier in plan.tiers)
    initial = fleet_method(cfg.sparse.method).initial_mask
    if initial == "full" or density >= 1.0:
        return np.ones((n_items, dim), dtype=bool), []
    if initial == "prefix":
        return prefix_mask(n_items, dim, max(tier.prefix_width(dim) for tier in plan.tiers)), []
    if initial == "random":
        return random_mask(n_items, dim, density,
                           generator_for(cfg.seed, 0, 0, "mask-init")), []
    h, gram, history = federated_nmf(grid, node_devices, cfg, n_items, devices_per_node)
    ties = numpy_rng_for(cfg.seed, 0, 0, "nmf-mask-ties").random((n_items, dim))
    return top_fraction_mask(nmf_item_scores(h, gram), density, tie_break=ties), history


def _evaluate(strategy: SparseFedStrategy, grid: Grid, server_round: int, *,
              export_user: bool) -> dict[str, float]:
    """Every device ranks all items (after ``fl.refit_steps`` refit steps of its user row),
    ``EVALUATION_BATCH`` devices per round trip; with ``export_user`` they also send their user
    rows."""
    fl = strategy.server.cfg.fl
    config = config_record({"export-user": export_user, "refit-steps": fl.refit_steps,
                            "refit-lr": fl.refit_lr})
    messages = list(strategy.configure_evaluate(server_round, None, config, grid))
    replies = []
    for start in range(0, len(messages), EVALUATION_BATCH):
        replies += grid.send_and_receive(messages[start:start + EVALUATION_BATCH],
                                         timeout=ROUND_TIMEOUT_SECONDS)
    metrics = strategy.aggregate_evaluate(server_round, replies)
    return {} if metrics is None else {key: float(value) for key, value in metrics.items()}


def checkpoint_path(out_dir: Path) -> Path:
    """Where the server's checkpoint of a run in ``out_dir`` lives."""
    return out_dir / "checkpoint" / "server.npz"


def device_state_path(out_dir: Path) -> Path:
    """Where the simulated devices of a run in ``out_dir`` keep their state files."""
    return (out_dir / "checkpoint" / "devices").resolve()


def _start(grid: Grid, cfg: ExperimentConfig, data: InteractionData, plan: FleetPlan,
           node_devices: dict[int, list[int]],
           devices_per_node: int, out_dir: Path) -> tuple[FleetServer, float]:
    """A fresh server half: initial masks (federated NMF, whose iterations go to
    ``nmf_history.csv``, or random) and seeded item values."""
    start = time.perf_counter()
    top_mask, nmf_history = initial_top_mask(grid, node_devices, cfg, plan, data.n_items,
                                             devices_per_node)
    if nmf_history:
        write_atomically(out_dir / "nmf_history.csv",
                         pd.DataFrame(nmf_history).to_csv(index=False))
    init_seconds = time.perf_counter() - start
    values = (torch.randn(data.n_items, cfg.model.dim, generator=generator_for(cfg.seed, 0, 0,
                                                                                "item-init"))
              * cfg.model.init_std).numpy()
    return FleetServer(cfg, plan, values, top_mask, devices_per_node), init_seconds


class _FlowerRounds:
    """The round loop's engine on a Flower ``Grid``
    (:class:`~fedsparse.federated.rounds.RoundEngine`)."""

    def __init__(self, strategy: SparseFedStrategy, grid: Grid, *, export_user: bool) -> None:
        self.strategy, self.grid, self.export_user = strategy, grid, export_user

    def train_round(self, server_round: int) -> dict:
        if self.strategy.server.secure:
            return secure_train_round(self.strategy, self.grid, server_round)
        messages = list(self.strategy.configure_train(server_round, None, None, self.grid))
        replies = self.grid.send_and_receive(messages, timeout=ROUND_TIMEOUT_SECONDS)
        _, counts = self.strategy.aggregate_train(server_round, replies)
        return {"sampled": self.strategy.sampled, **{key: counts[key] for key in counts}}

    def evaluate(self, server_round: int, *, final: bool) -> dict[str, float]:
        return _evaluate(self.strategy, self.grid, server_round,
                         export_user=final and self.export_user)


def run_fleet(grid: Grid, cfg: ExperimentConfig, data: InteractionData, plan: FleetPlan,
              out_dir: Path, *, devices_per_node: int, resume_from: ServerState | None = None,
              device_state_dir: Path | None = None,
              observer: Observer | None = None) -> FleetRun:
    """The whole federated run of ``plan`` (``cfg`` on ``data``) on ``grid``; writes and returns
    the results.

    In a simulation (``device_state_dir`` given) the server writes its state to
    :func:`checkpoint_path` after every round but the last (the results are the last state),
    atomically, and the devices keep theirs under ``device_state_dir``; ``resume_from`` (a
    checkpoint the launcher has loaded and checked) continues after its round. Under ``flwr
    run`` and ``fedsparse deploy-local`` nothing is checkpointed (devices keep their state in
    their SuperNodes for the run only). Each SuperNode simulates ``devices_per_node`` devices
    (the last one may have fewer). ``observer``, if given, sees every reply the server gets.

    Raises
    ------
    RunStopped
        ``fl.max_skipped_rounds`` rounds in a row had too few successful devices.
    """
    torch.set_num_threads(1)
    if observer is not None:
        grid = ObservedGrid(grid, observer)
    config_text, saved = config_toml(cfg), checkpoint_path(out_dir)
    write_atomically(out_dir / "config.toml", config_text)     # on resume: the same text
    if resume_from is None and device_state_dir is not None and device_state_dir.exists():
        shutil.rmtree(device_state_dir)             # an attempt killed before its first checkpoint
    nodes = wait_for_nodes(grid, supernode_count(plan.n_devices, devices_per_node))
    node_devices = profile_devices(grid, nodes, cfg, plan, devices_per_node)
    if resume_from is None:
        server, init_seconds = _start(grid, cfg, data, plan, node_devices, devices_per_node,
                                      out_dir)
        history: list[dict] = []
        done = 0
    else:
        server = FleetServer(cfg, plan, resume_from.item,
                             resume_from.masks[plan.tiers[-1].name], devices_per_node)
        server.restore(resume_from)
        init_seconds, history, done = (resume_from.init_seconds, resume_from.history,
                                       resume_from.round)
        logger.info("resuming %s after round %d of %d", out_dir, done, cfg.fl.rounds)
    strategy = SparseFedStrategy(server, node_devices)
    strategy.state_dir = str(device_state_dir or "")
    strategy.summary()

    def checkpoint(server_round: int, rows: list[dict]) -> None:
        save_server_state(saved, server.server_state(server_round, rows, init_seconds),
                          config_text)

    export_user = device_state_dir is None and cfg.fl.privacy.export_user_rows
    history = run_rounds(server, _FlowerRounds(strategy, grid, export_user=export_user), cfg,
                         done=done, history=history,
                         checkpoint=checkpoint if device_state_dir is not None else None)
    if device_state_dir is not None:
        _read_user_rows(server, cfg, node_devices, device_state_dir)
    run = FleetRun(cfg=cfg, plan=plan, data=data, item=server.item, masks=server.masks,
                   ledger=server.ledger, history=pd.DataFrame(history),
                   init_seconds=init_seconds, devices_per_node=devices_per_node)
    write_fleet_run(out_dir, run)
    return run


def _read_user_rows(server: FleetServer, cfg: ExperimentConfig,
                    node_devices: dict[int, list[int]], device_state_dir: Path) -> None:
    """The simulated devices' final user rows, for ``model.npz``, from their state files (the
    devices' own storage; no message carries them): a cohort that never trained keeps its
    seeded rows."""
    for devices in node_devices.values():
        saved = restore_cohort_state(str(device_state_dir), np.array(devices, np.int64),
                                     cfg.fl.rounds)
        state = (CohortState.from_arrays(saved) if saved is not None else
                 CohortState.initial(devices, cfg.seed, cfg.model.dim, cfg.model.init_std))
        for device in devices:
            server.ledger.user_rows[device] = state.row(device).values


def build_server_app(cfg: ExperimentConfig, data: InteractionData, plan: FleetPlan,
                     out_dir: Path, *, devices_per_node: int,
                     resume_from: ServerState | None = None,
                     errors: list[FedsparseError] | None = None,
                     observer: Observer | None = None) -> ServerApp:
    """A ServerApp running ``plan`` into ``out_dir`` (config, data and plan by closure: the
    launcher has already loaded and checked them). A :class:`FedsparseError` of the run is
    appended to ``errors``, for the launcher to report once Flower has stopped."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_fleet(grid, cfg, data, plan, out_dir, devices_per_node=devices_per_node,
                      resume_from=resume_from, device_state_dir=device_state_path(out_dir),
                      observer=observer)
        except FedsparseError as exc:
            if errors is None:
                raise
            errors.append(exc)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run`` entry: config path, overrides and results directory from the run config."""
    run_config = context.run_config
    overrides = [item for item in str(run_config.get("overrides", "")).split(";") if item]
    cfg = load_config(str(run_config["config"]), overrides, fleet=True)
    out = str(run_config.get("out", "")) or f"runs/{cfg.name}-flwr-run"
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    run_fleet(grid, cfg, data, plan_fleet(cfg, data), Path(out),
              devices_per_node=cfg.fl.devices_per_node or 1)   # auto: one device per SuperNode

