"""A small synthetic fleet through Flower's simulation engine, end to end."""

import json

import numpy as np
import pandas as pd
import pytest

from fedsparse.cli import main
from fedsparse.config import dump_config
from fedsparse.data import load_dataset
from fedsparse.errors import ConfigError, FedsparseError
from fedsparse.fl.simulation import simulate

pytestmark = pytest.mark.slow


def test_two_rounds_of_a_small_fleet_through_flower(fleet_config, fleet_data, tmp_path,
                                                    monkeypatch, capsys):
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    out = tmp_path / "run"
    reference = tmp_path / "reference.toml"
    reference.write_text("[model]\ndim = 8\n[train]\nepochs = 2\nbatch_size = 64\n")
    dump_config(fleet_config(f"fl.reference_config={reference}"), tmp_path / "fleet.toml")
    assert main(["simulate", str(tmp_path / "fleet.toml"), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "within budget: yes" in summary and f"results: {out}" in summary
    metrics = json.loads((out / "metrics.json").read_text())
    central = json.loads((out / "reference" / "metrics.json").read_text())
    assert f"centralized mf (dense, {reference}) on the same data: recall@20 " \
           f"{central['recall@20']:.4f}" in summary
    assert central["dataset"] == load_dataset(fleet_config().data.name).name

    assert {p.name for p in out.iterdir()} >= {"config.toml", "metrics.json", "history.csv",
                                               "clients.csv", "model.npz",
                                               "memory_vs_accuracy.png"}
    assert metrics["devices"] == fleet_data.n_users and metrics["within_budget"]
    assert metrics["rejected"] == 0 and metrics["failed"] == 0
    assert 0.0 < metrics["recall@20"] <= 1.0

    history = pd.read_csv(out / "history.csv")
    assert history["round"].tolist() == [1, 2]
    assert (history["succeeded"] == fleet_data.n_users).all()
    assert (history["up-bytes"] > 0).all() and (history["down-bytes"] > 0).all()

    clients = pd.read_csv(out / "clients.csv")
    assert list(clients.columns[:5]) == ["device_id", "tier", "budget_bytes", "model_bytes",
                                         "train_bytes"]
    assert len(clients) == fleet_data.n_users
    assert (clients["model_bytes"] <= clients["budget_bytes"]).all()
    assert (clients["train_bytes"] <= clients["budget_bytes"]).all()
    assert (clients["rounds_participated"] == 2).all()

    with np.load(out / "model.npz") as model:
        small, large = model["item_mask_small"], model["item_mask_large"]
        assert not (small & ~large).any()                        # nested tier masks
        assert small.sum() < large.sum()
        assert model["user_mask"].all(axis=1).sum() == fleet_data.n_users
        assert not model["item"][~large].any()                   # zero outside the top mask


def test_a_reference_config_that_does_not_load_is_refused_before_starting(fleet_config,
                                                                         tmp_path):
    with pytest.raises(ConfigError, match="^fl.reference_config: .*nope.toml: config file not "
                                          "found$"):
        simulate(fleet_config(f"fl.reference_config={tmp_path / 'nope.toml'}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_simulate_command_rejects_a_bad_fleet_before_starting(fleet_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "fleet.toml"
    config.write_text(f'[data]\nname = "{fleet_data_dir}"\n\n[model]\ndim = 8\n\n'
                      '[sparse]\nmethod = "sparserec"\n\n'
                      '[fl.tiers.tiny]\nbudget_bytes = 100\nshare = 1.0\n')
    code = main(["simulate", str(config), "--out", str(out)])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "fl.tiers.tiny.budget_bytes: too small" in error[0]
    assert not out.exists()


def test_simulate_refuses_a_directory_with_a_finished_run(fleet_config, tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(FedsparseError, match="already holds a finished run"):
        simulate(fleet_config(), tmp_path)
