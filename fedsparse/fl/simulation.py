"""``fedsparse simulate``: the fleet on Flower's simulation engine (Ray backend).

Flower's programmatic entry point is wrapped in :func:`run_flower_simulation` alone, so a change
of Flower's API touches one function. The config is checked completely (including every tier's
budget) before Flower or Ray start.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from fedsparse.config import ExperimentConfig, config_toml
from fedsparse.data import load_dataset
from fedsparse.errors import ConfigError, FedsparseError, RunStopped
from fedsparse.fl.client_app import app as client_app
from fedsparse.federated.fleet import plan_fleet, resolve_devices_per_node, supernode_count
from fedsparse.federated.checkpoint import ServerState, first_difference, load_server_state
from fedsparse.report.results import reference_config, train_reference
from fedsparse.fl.server_app import (Observer, build_server_app, checkpoint_path,
                                     device_state_path)

logger = logging.getLogger(__name__)


class _DropDeprecationNotice(logging.Filter):
    """Hides Flower's notice that ``run_simulation`` is deprecated (we use it on purpose: it is
    the only path that takes ``ray.init`` arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage()


def run_flower_simulation(server_app: ServerApp, app: ClientApp, num_supernodes: int, *,
                          num_cpus: int, client_cpus: float, ray_address: str = "") -> None:
    """Flower's simulation engine on the Ray backend, ``client_cpus`` CPUs per client actor
    and ``num_cpus`` for a Ray instance of its own, or the running Ray cluster at
    ``ray_address`` (whose nodes bring their own CPUs)."""
    init_args: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
    # "local": a Ray of its own even where a cluster runs on this machine (Ray would join it)
    init_args.update({"address": ray_address} if ray_address else
                     {"address": "local", "num_cpus": num_cpus})
    backend_config = {"client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
                      "init_args": init_args}
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")   # quiets a Ray warning
    flower_logger = logging.getLogger("flwr")
    notice_filter = _DropDeprecationNotice()
    flower_level = flower_logger.level
    flower_logger.addFilter(notice_filter)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        flower_logger.setLevel(logging.WARNING)      # Flower logs its internals at DEBUG
    try:
        run_simulation(server_app=server_app, client_app=app, num_supernodes=num_supernodes,
                       backend_config=backend_config)
    finally:
        flower_logger.removeFilter(notice_filter)
        flower_logger.setLevel(flower_level)


#: Seconds to wait for a Ray cluster's address to accept a connection.
RAY_CONNECT_SECONDS = 10.0


def check_ray_address(address: str) -> None:
    """That ``address`` (``fl.ray_address``, host:port of a Ray cluster's GCS) accepts a TCP
    connection, before Flower or Ray start.

    Raises
    ------
    ConfigError
        One line naming the key and the address: malformed, or nothing listens there.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"fl.ray_address: {address!r} is not host:port")
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_SECONDS).close()
    except OSError as exc:
        raise ConfigError(f"fl.ray_address: no Ray cluster reachable at {address} "
                          f"({exc.strerror or exc})") from None


def _resumable_state(cfg: ExperimentConfig, out_dir: Path) -> ServerState | None:
    """The checkpoint the run in ``out_dir`` continues from (None: killed before its first
    one, it starts over); one line, before anything starts, when it cannot continue as
    ``cfg``: another config, a corrupt checkpoint, missing device state, or a stopped run."""
    text, config_file = config_toml(cfg), out_dir / "config.toml"
    started_with = config_file.read_text() if config_file.exists() else text
    if started_with != text:
        raise FedsparseError(f"{config_file}: the run was started with another config "
                             f"({first_difference(started_with, text)})")
    saved = checkpoint_path(out_dir)
    if not saved.exists():
        return None
    state = load_server_state(saved, text)
    skipped = state.counters["skipped_in_a_row"]
    if skipped >= cfg.fl.max_skipped_rounds:
        raise RunStopped(f"the run stopped after round {state.round} ({skipped} rounds in a row "
                         f"skipped); it does not resume")
    if state.ledger["rounds"].any() and not device_state_path(out_dir).is_dir():
        raise FedsparseError(f"{device_state_path(out_dir)}: missing, the devices' state after "
                             f"round {state.round} cannot be restored")
    return state


def simulate(cfg: ExperimentConfig, out_dir: Path, *, resume: bool = False,
             observer: Observer | None = None) -> dict[str, Any]:
    """Run the fleet of ``cfg`` and write its results to ``out_dir``; returns the metrics with
    the run's ``runtime`` (wall-clock seconds, peak memory) and, with ``fl.reference_config``,
    the centralized reference's metrics under ``reference`` (trained into
    ``out_dir/reference/``). ``observer`` sees every reply the
    server receives, with the message it answers (what a curious server could keep).

    With ``resume``, ``out_dir`` holds a run that was killed or interrupted: it continues after
    the last round its checkpoint holds (from the start if none was written yet).

    Raises
    ------
    ConfigError
        Before anything starts, for a config the fleet cannot run.
    FedsparseError
        Before anything starts: ``out_dir`` holds a finished run, or an unfinished one without
        ``resume``, or a checkpoint that is corrupt or of another config. Afterwards: the run
        stopped (too many skipped rounds) or ended without results.
    """
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    plan = plan_fleet(cfg, data)
    reference = reference_config(cfg)
    metrics_path, saved = out_dir / "metrics.json", checkpoint_path(out_dir)
    if metrics_path.exists():
        raise FedsparseError(f"{out_dir}: already holds a finished run (metrics.json)")
    state = _resumable_state(cfg, out_dir) if resume else None
    if not resume and saved.exists():
        raise FedsparseError(f"{out_dir}: holds an unfinished run; continue it with --resume "
                             f"{out_dir} or choose another --out")
    num_cpus = cfg.fl.num_cpus or os.cpu_count() or 1
    if cfg.fl.ray_address:
        check_ray_address(cfg.fl.ray_address)
    devices_per_node = (state.counters["devices_per_node"] if state is not None else
                        resolve_devices_per_node(cfg.fl.devices_per_node, plan.n_devices,
                                                 int(num_cpus // cfg.fl.client_cpus)))
    n_nodes = supernode_count(plan.n_devices, devices_per_node)
    logger.info("simulating %d devices (%s) on %s, %d per SuperNode (%d SuperNodes); results "
                "-> %s", plan.n_devices, ", ".join(f"{tier.name}: {(plan.device_tier == i).sum()}"
                                                   for i, tier in enumerate(plan.tiers)),
                data.name, devices_per_node, n_nodes, out_dir)
    errors: list[FedsparseError] = []
    server_app = build_server_app(cfg, data, plan, out_dir, devices_per_node=devices_per_node,
                                  resume_from=state, errors=errors, observer=observer)
    run_flower_simulation(server_app, client_app, n_nodes, num_cpus=num_cpus,
                          client_cpus=cfg.fl.client_cpus, ray_address=cfg.fl.ray_address)
    if errors:
        raise errors[0]
    if not metrics_path.exists():
        raise FedsparseError("the simulation ended without results; see the log above")
    metrics = {**json.loads(metrics_path.read_text()),
               "runtime": json.loads((out_dir / "runtime.json").read_text())}
    if reference is not None:
        logger.info("training the centralized reference %s -> %s", cfg.fl.reference_config,
                    out_dir / "reference")
        metrics["reference"] = train_reference(reference, out_dir / "reference")
    return metrics
