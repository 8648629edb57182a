"""The fleet on real Flower processes on localhost: a SuperLink, cohort SuperNodes, the run
submitted with ``flwr run`` and checked with ``flwr list``; every process stopped after."""

import json

import numpy as np
import pandas as pd
import pytest

from fedsparse.cli import main
from fedsparse.config import dump_config
from fedsparse.errors import ConfigError, FedsparseError
from fedsparse.fl.deployment import (COMPLETED, CONNECTION, LOG_DIR_NAME, deploy_local,
                                     pick_ports, write_run_config)
from fedsparse.fl.processes import is_running

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@pytest.mark.slow
def test_three_cohort_supernodes_run_the_fleet_and_every_process_is_stopped(fleet_config,
                                                                             tmp_path, capsys):
    config = tmp_path / "fleet.toml"
    # the densest tier sparse too (4 KB): masks come from one federated NMF round trip;
    # 8 devices on 3 SuperNodes of 3, 3 and 2; real devices send their user rows only when
    # asked to (for model.npz)
    dump_config(fleet_config("fl.max_devices=8", "fl.devices_per_node=3", "fl.nmf_rounds=1",
                             "fl.tiers.large.budget_bytes=4000",
                             "fl.privacy.export_user_rows=true"), config)
    out, flwr_home = tmp_path / "run", tmp_path / "flwr-home"

    assert main(["deploy-local", str(config), "--set", "name=deployed", "--out", str(out),
                 "--flwr-home", str(flwr_home), "--timeout", "300"]) == 0
    assert f"run {COMPLETED} on 3 SuperNodes (8 devices)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["devices"] == 8 and metrics["rounds"] == 2
    assert metrics["failed"] == 0 and metrics["rejected"] == 0 and metrics["within_budget"]
    history = pd.read_csv(out / "history.csv")
    assert history["round"].tolist() == [1, 2] and (history["succeeded"] == 8).all()
    clients = pd.read_csv(out / "clients.csv")
    assert clients["device_id"].tolist() == list(range(8))
    assert (clients["rounds_participated"] == 2).all()
    with np.load(out / "model.npz") as model:
        assert model["user_mask"].any(axis=1).sum() == 8 and "item" in model
    assert 'name = "deployed"' in (out / "config.toml").read_text()     # overrides arrived
    runtime = json.loads((out / "runtime.json").read_text())
    assert runtime["init_seconds"] > 1.0              # an NMF round trip through the SuperNodes

    logs = out / LOG_DIR_NAME
    assert {"superlink.log", "supernode-0.log", "supernode-2.log", "run.log",
            "flwr-cli.log"} <= {path.name for path in logs.iterdir()}
    connection = tomllib.loads((flwr_home / "config.toml").read_text())["superlink"][CONNECTION]
    assert connection["insecure"] is True and connection["address"].startswith("127.0.0.1:")

    processes = json.loads((logs / "processes.json").read_text())
    roles = [process["role"] for process in processes]
    assert {"superlink", "supernode-0", "supernode-1", "supernode-2"} <= set(roles)
    assert sum(role.endswith("flower-superexec") for role in roles) == 4
    assert [process for process in processes if is_running(process["pid"])] == []


def test_a_bad_config_fails_before_any_process_starts(fleet_config, tmp_path):
    config = tmp_path / "fleet.toml"
    dump_config(fleet_config(), config)
    with pytest.raises(ConfigError, match="fl.rounds"):
        deploy_local(config, tmp_path / "run", ["fl.rounds=-1"], flwr_home=tmp_path / "home")
    assert not (tmp_path / "run").exists() and not (tmp_path / "home").exists()


def test_run_config_has_absolute_paths_and_refuses_separators(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_run_config(tmp_path / "run.toml", tmp_path / "a.toml", tmp_path / "out",
                            ["fl.rounds=2", "name=x"])
    assert tomllib.loads(path.read_text()) == {"config": str(tmp_path / "a.toml"),
                                               "overrides": "fl.rounds=2;name=x",
                                               "out": str(tmp_path / "out")}
    with pytest.raises(FedsparseError, match="may not contain ';'"):
        write_run_config(tmp_path / "run.toml", tmp_path / "a.toml", tmp_path, ["name=a;b"])


def test_ports_are_distinct_and_free_or_consecutive():
    ports = pick_ports(4, 0)
    assert len(set(ports)) == 4 and all(port > 0 for port in ports)
    assert pick_ports(3, 20000) == [20000, 20001, 20002]
    with pytest.raises(FedsparseError, match="base_port"):
        pick_ports(3, 80)
