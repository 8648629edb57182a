"""The fleet on real processes on this machine: one ``flower-superlink`` and one
``flower-supernode`` per device, the run submitted with ``flwr run``, followed with
``flwr log --stream`` and its final status read with ``flwr list`` (``flwr run`` exits 0 even
when the run fails).

The processes run the same ServerApp and ClientApp as ``fedsparse simulate`` and ``flwr run .``
(``pyproject.toml`` names them under ``[tool.flwr.app.components]``); SuperNode ``i`` gets
``--node-config "partition-id=i num-partitions=N"``, i.e. it is device ``i``. Everything goes
through Flower's command-line programs (no ``flwr`` import), insecure and on loopback only.

Every process starts in a session (and process group) of its own and is stopped by process
group in a ``finally`` block, together with the ``flower-superexec`` children (and their
ServerApp / ClientApp processes) that Flower starts from them, some in sessions of their own
(found with psutil while the run goes on: :mod:`fedsparse.fl.processes`). Their output goes to
``<out_dir>/deployment_logs/<role>.log``; ``processes.json`` there lists every process seen.
The same SuperNode command line, with ``--superlink HOST:PORT`` and TLS certificates instead of
``--insecure``, joins a SuperLink on another machine (README, "Deployment on real processes").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import tomli_w

from fedsparse.config import ExperimentConfig, load_config
from fedsparse.data import BUNDLED_SIZES, load_dataset
from fedsparse.errors import FedsparseError
from fedsparse.federated.fleet import plan_fleet, supernode_count
from fedsparse.fl.processes import LocalProcesses

logger = logging.getLogger(__name__)

#: Name of the ``[superlink.<name>]`` connection written into ``$FLWR_HOME/config.toml``.
CONNECTION = "fedsparse-local"
#: Loopback only: the SuperLink and the SuperNodes' Runtime APIs listen here.
HOST = "127.0.0.1"
#: The status ``flwr list`` reports for a run that ended well.
COMPLETED = "finished:completed"
#: Sub-folder of the results directory that holds the processes' logs.
LOG_DIR_NAME = "deployment_logs"
#: Seconds allowed for one call of Flower's CLI, for the SuperLink to listen, between polls.
CLI_TIMEOUT = 120.0
STARTUP_TIMEOUT = 60.0
POLL_SECONDS = 1.0


# --------------------------------------------------------------------------- environment


def flower_env(flwr_home: Path) -> dict[str, str]:
    """This process's environment plus Flower's offline, quiet, isolated settings.

    Parameters
    ----------
    flwr_home : Path
        Flower's state folder (``FLWR_HOME``): connections, installed apps.

    Returns
    -------
    dict of str to str
        The environment for every Flower process this module starts.
    """
    return {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def flower_program(name: str) -> str:
    """Path of one of Flower's programs (``flwr``, ``flower-superlink``, ...), preferring the
    one installed next to this Python.

    Raises
    ------
    FedsparseError
        When it is not installed.
    """
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise FedsparseError(f"{name}: not found next to {sys.executable} nor on PATH "
                             "(is flwr installed?)")
    return found


def project_dir() -> Path:
    """The Flower app directory: this checkout's root, whose ``pyproject.toml`` names the
    ServerApp and ClientApp.

    Raises
    ------
    FedsparseError
        When fedsparse is not run from a checkout (no such ``pyproject.toml``).
    """
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app" not in pyproject.read_text():
        raise FedsparseError(f"{pyproject}: no Flower app here (deploy from a checkout of "
                             "fedsparse, or pass app_dir)")
    return root


def pick_ports(count: int, base_port: int) -> list[int]:
    """``count`` ports: ``base_port, base_port + 1, ...``, or, when ``base_port`` is 0, distinct
    ones that were free a moment ago (bound to port 0 together)."""
    if base_port == 0:
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
            for sock in sockets:
                sock.bind((HOST, 0))
            return [sock.getsockname()[1] for sock in sockets]
    if not 1024 <= base_port <= 65535 - count:
        raise FedsparseError(f"base_port {base_port}: must be 0 (free ports) or in "
                             f"1024..{65535 - count}")
    return list(range(base_port, base_port + count))


def write_connection(flwr_home: Path, address: str, name: str = CONNECTION) -> Path:
    """Add (or replace) the insecure ``[superlink.<name>]`` connection to ``address`` in
    ``$FLWR_HOME/config.toml``, keeping whatever else the file holds; returns its path."""
    path = flwr_home / "config.toml"
    config: dict[str, Any] = {}
    if path.exists():
        try:
            config = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise FedsparseError(f"{path}: not valid TOML ({exc})") from exc
    superlink = config.setdefault("superlink", {})
    superlink.setdefault("default", name)
    superlink[name] = {"address": address, "insecure": True}
    flwr_home.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    return path


def write_run_config(path: Path, config_path: Path, out_dir: Path,
                     overrides: Sequence[str]) -> Path:
    """The run config the ServerApp reads (absolute ``config`` and ``out``, ``;``-separated
    ``overrides``), as a TOML file for ``flwr run --run-config``."""
    bad = [item for item in overrides if ";" in item]
    if bad:
        raise FedsparseError(f"override {bad[0]!r}: may not contain ';' (the run config "
                             "separates overrides with it)")
    path.write_text(tomli_w.dumps({"config": str(config_path.resolve()),
                                   "overrides": ";".join(overrides),
                                   "out": str(out_dir.resolve())}))
    return path


def portable_overrides(cfg: ExperimentConfig) -> list[str]:
    """Overrides that give the config's files as absolute paths.

    Flower runs the apps from its own copy of the project (a FAB, which holds no ``.gz``
    files) in another folder: a bundled dataset becomes the installed package's directory
    of it, a relative data directory or tier file an absolute one.
    """
    name = cfg.data.name
    if name in BUNDLED_SIZES:
        data_dir = Path(str(resources.files("fedsparse.data") / "bundled" / name))
    else:
        data_dir = Path(name).resolve()
    overrides = [f"data.name={data_dir}"]
    if cfg.fl.tier_file:
        overrides.append(f"fl.tier_file={Path(cfg.fl.tier_file).resolve()}")
    return overrides


def check_fleet(config_path: Path, overrides: Sequence[str]) -> tuple[int, list[str]]:
    """Check the config and its data before anything starts.

    Returns
    -------
    tuple of int and list of str
        The SuperNodes the fleet needs (``fl.devices_per_node`` devices each; auto: one) and
        the overrides to run it with (``overrides`` plus :func:`portable_overrides`).
    """
    cfg = load_config(str(config_path), list(overrides), fleet=True)
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    n_devices = plan_fleet(cfg, data).n_devices
    return (supernode_count(n_devices, cfg.fl.devices_per_node or 1),
            [*overrides, *portable_overrides(cfg)])


# --------------------------------------------------------------------------- Flower's CLI


def run_cli(arguments: list[str], env: dict[str, str], log_path: Path,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``flwr <arguments>``, appending its command line and output to ``log_path``.

    Raises
    ------
    FedsparseError
        When it does not end within ``timeout`` seconds.
    """
    command = [flower_program("flwr"), *arguments]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env,
                                stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FedsparseError(f"`flwr {' '.join(arguments)}` did not answer within "
                             f"{timeout:.0f} s; logs in {log_path.parent}") from exc
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}  (exit {result.returncode})\n{result.stdout}"
                  f"{result.stderr}\n")
    return result


def _json_output(result: subprocess.CompletedProcess) -> dict[str, Any]:
    """The JSON object a ``--format json`` CLI call printed ({} when there is none)."""
    try:
        return json.JSONDecoder().raw_decode(result.stdout, result.stdout.index("{"))[0]
    except ValueError:                                    # no "{", or no JSON after it
        return {}


def _last_line(result: subprocess.CompletedProcess) -> str:
    """The last non-blank line a CLI call printed (its error, as a rule)."""
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines()
             if line.strip()]
    return lines[-1] if lines else f"exit code {result.returncode}"


def submit_run(app_dir: Path, run_config: Path, env: dict[str, str], log_path: Path,
               connection: str = CONNECTION) -> int:
    """``flwr run APP_DIR CONNECTION --run-config RUN_CONFIG``; returns the run id.

    Raises
    ------
    FedsparseError
        When the SuperLink did not accept the run.
    """
    result = run_cli(["run", str(app_dir), connection, "--run-config", str(run_config),
                      "--format", "json"], env, log_path)
    payload = _json_output(result)
    if result.returncode != 0 or not payload.get("success") or not payload.get("run-id"):
        raise FedsparseError(f"flwr run failed: {_last_line(result)} (log: {log_path})")
    return int(payload["run-id"])


def run_status(run_id: int, env: dict[str, str], log_path: Path,
               connection: str = CONNECTION) -> tuple[str, str]:
    """The run's status (``pending``, ``starting``, ``running``, ``finished:completed``,
    ``finished:failed``, ``finished:stopped``) and status details, from
    ``flwr list --run-id``.

    Raises
    ------
    FedsparseError
        When ``flwr list`` fails or does not know the run.
    """
    result = run_cli(["list", connection, "--run-id", str(run_id), "--format", "json"], env,
                     log_path)
    runs = _json_output(result).get("runs") or []
    if result.returncode != 0 or len(runs) != 1:
        raise FedsparseError(f"flwr list --run-id {run_id} failed: {_last_line(result)} "
                             f"(log: {log_path})")
    return str(runs[0]["status"]), str(runs[0].get("status-details", ""))


# --------------------------------------------------------------------------- the deployment


def wait_for_port(port: int, processes: LocalProcesses, role: str,
                  timeout: float = STARTUP_TIMEOUT) -> None:
    """Wait until something listens on ``HOST:port``.

    Raises
    ------
    FedsparseError
        When ``role`` exits first or nothing listens within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1.0):
            return
        code = processes.exited().get(role)
        if code is not None:
            raise FedsparseError(f"{role} exited with code {code} before listening on port "
                                 f"{port}; see {processes.log_dir / role}.log")
        if time.monotonic() > deadline:
            raise FedsparseError(f"{role} did not listen on {HOST}:{port} within "
                                 f"{timeout:.0f} s; see {processes.log_dir / role}.log")
        time.sleep(0.2)


def start_fleet(processes: LocalProcesses, n_nodes: int, ports: list[int]) -> str:
    """Start the SuperLink on ``ports[0]`` and SuperNode ``i`` (partition ``i``: its cohort of
    devices, Runtime API on ``ports[i + 1]``); returns the SuperLink's address once it
    listens."""
    processes.start("superlink", [flower_program("flower-superlink"), "--insecure",
                                  "--disable-runtime-dependency-installation",
                                  "--host", HOST, "--port", str(ports[0])])
    wait_for_port(ports[0], processes, "superlink")
    address = f"{HOST}:{ports[0]}"
    for node in range(n_nodes):
        processes.start(f"supernode-{node}", [
            flower_program("flower-supernode"), "--insecure", "--superlink", address,
            "--node-config", f"partition-id={node} num-partitions={n_nodes}",
            "--host", HOST, "--port", str(ports[node + 1])])
    logger.info("SuperLink on %s, %d SuperNodes", address, n_nodes)
    return address


def wait_for_run(run_id: int, processes: LocalProcesses, timeout: float,
                 cli_log: Path) -> tuple[str, str]:
    """Follow the run until it has finished; returns its status and status details.

    ``flwr log RUN_ID --stream`` (one process, its output in ``run.log``: the ServerApp's log)
    ends when the run has finished; ``flwr list`` then tells how.

    Raises
    ------
    FedsparseError
        When a SuperLink or SuperNode exits first, or the run is not finished within
        ``timeout`` seconds (it is then stopped with ``flwr stop``).
    """
    deadline = time.monotonic() + timeout
    streamer = processes.start("run", [flower_program("flwr"), "log", str(run_id), CONNECTION,
                                       "--stream"])
    status = "not finished"
    while True:
        processes.track()
        for role, code in processes.exited().items():
            if role != "run":                             # the SuperLink or a SuperNode
                raise FedsparseError(f"{role} exited with code {code} during run {run_id}; "
                                     f"see {processes.log_dir / role}.log")
        if streamer.poll() is not None:
            status, details = run_status(run_id, processes.env, cli_log)
            if status.startswith("finished"):
                logger.info("run %d: %s", run_id, status)
                return status, details
        if time.monotonic() > deadline:
            run_cli(["stop", str(run_id), CONNECTION], processes.env, cli_log)
            raise FedsparseError(f"run {run_id} did not finish within {timeout:.0f} s (last "
                                 f"status {status}); logs in {processes.log_dir}")
        time.sleep(POLL_SECONDS)


def deploy_local(config_path: Path, out_dir: Path, overrides: Sequence[str] = (), *,
                 flwr_home: Path, base_port: int = 0, timeout: float = 3600.0,
                 app_dir: Path | None = None) -> str:
    """Run the fleet of a config on real Flower processes on this machine.

    Starts one SuperLink and one SuperNode per device of the fleet (insecure, loopback),
    submits the ServerApp/ClientApp of ``app_dir`` with ``flwr run``, follows the run with
    ``flwr log --stream`` until it has finished, reads its status with ``flwr list``, and
    always stops every process it started (and those Flower started from them).

    Parameters
    ----------
    config_path : Path
        The fleet's TOML config.
    out_dir : Path
        The results directory (as ``fedsparse simulate``'s); the processes' logs go to its
        ``deployment_logs/`` (``superlink.log``, ``supernode-<i>.log``, ``flwr-cli.log``,
        ``run.log``: the ServerApp's log, ``processes.json``).
    overrides : sequence of str
        ``key=value`` config overrides (no ``;``).
    flwr_home : Path
        Flower's state folder (``FLWR_HOME``); ``config.toml`` there gets the
        ``[superlink.fedsparse-local]`` connection.
    base_port : int
        The SuperLink's port, SuperNode ``i`` on ``base_port + 1 + i``; 0 picks free ports.
    timeout : float
        Seconds the run may take once submitted.
    app_dir : Path, optional
        The Flower app directory (default: this checkout's root).

    Returns
    -------
    str
        The run's final status, ``"finished:completed"``.

    Raises
    ------
    ConfigError
        For a bad config, before anything starts.
    FedsparseError
        When a process fails, the run does not complete (the message names the status and
        the log folder) or ``out_dir`` already holds a finished run.
    """
    config_path, out_dir = Path(config_path).resolve(), Path(out_dir).resolve()
    flwr_home = Path(flwr_home).resolve()
    app_dir = Path(app_dir).resolve() if app_dir is not None else project_dir()
    if (out_dir / "metrics.json").exists():
        raise FedsparseError(f"{out_dir}: already holds a finished run (metrics.json)")
    n_nodes, run_overrides = check_fleet(config_path, overrides)
    log_dir = out_dir / LOG_DIR_NAME
    log_dir.mkdir(parents=True, exist_ok=True)
    flwr_home.mkdir(parents=True, exist_ok=True)
    run_config = write_run_config(log_dir / "run_config.toml", config_path, out_dir,
                                  run_overrides)
    ports = pick_ports(n_nodes + 1, base_port)
    processes = LocalProcesses(log_dir, flower_env(flwr_home))
    cli_log = log_dir / "flwr-cli.log"
    try:
        address = start_fleet(processes, n_nodes, ports)
        write_connection(flwr_home, address)
        run_id = submit_run(app_dir, run_config, processes.env, cli_log)
        logger.info("run %d submitted (%d SuperNodes); logs in %s", run_id, n_nodes, log_dir)
        status, details = wait_for_run(run_id, processes, timeout, cli_log)
    finally:
        processes.stop()
    if status != COMPLETED:
        detail = "" if details in ("", "N/A") else ": " + " ".join(details.split())
        raise FedsparseError(f"run {run_id} ended {status}{detail}; see {log_dir / 'run.log'}")
    if not (out_dir / "metrics.json").exists():
        raise FedsparseError(f"run {run_id} completed without writing {out_dir}/metrics.json; "
                             f"see {log_dir / 'run.log'}")
    return status
