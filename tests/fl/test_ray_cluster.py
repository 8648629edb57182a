"""A fleet simulated on a Ray cluster of two nodes, each a process of its own on loopback:
it joins through ``fl.ray_address`` and writes the files a local simulation writes."""

import os
import time

import pytest

from fedsparse.cli import main
from fedsparse.config import dump_config
from fedsparse.fl.deployment import flower_program, pick_ports, wait_for_port
from fedsparse.fl.processes import LocalProcesses

pytestmark = pytest.mark.slow


def _wait_for_nodes(processes, address, count, timeout=120.0):
    """Wait until ``ray status`` at ``address`` lists ``count`` live nodes."""
    import subprocess
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run([flower_program("ray"), "status", "--address", address],
                                capture_output=True, text=True, env=processes.env)
        if status.stdout.count("node_") >= count:
            return
        time.sleep(1.0)
    raise AssertionError(f"the Ray cluster did not reach {count} nodes: {status.stdout}")


def test_a_fleet_runs_across_a_two_node_ray_cluster(fleet_config, tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    port = pick_ports(1, 26379)[0]
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    node = ["--num-cpus", "1", "--object-store-memory", "100000000", "--block",
            "--disable-usage-stats"]
    processes = LocalProcesses(tmp_path, env)
    try:
        processes.start("ray-head", [flower_program("ray"), "start", "--head",
                                     "--node-ip-address", "127.0.0.1", "--port", str(port),
                                     "--include-dashboard", "false", *node])
        wait_for_port(port, processes, "ray-head")
        processes.start("ray-node", [flower_program("ray"), "start", "--address", address,
                                     "--node-ip-address", "127.0.0.1", *node])
        _wait_for_nodes(processes, address, 2)
        processes.track()
        runs = {}
        for name, extra in (("cluster", [f"fl.ray_address={address}"]), ("local", [])):
            config = tmp_path / f"{name}.toml"
            dump_config(fleet_config("fl.num_cpus=2", *extra), config)
            runs[name] = tmp_path / name
            assert main(["simulate", str(config), "--out", str(runs[name])]) == 0
    finally:
        processes.stop()
    assert processes.alive() == []
    for name in ("metrics.json", "clients.csv", "model.npz"):
        assert (runs["cluster"] / name).read_bytes() == (runs["local"] / name).read_bytes(), name
