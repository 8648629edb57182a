"""``fedsparse train`` with sparse methods, on the synthetic data written as a dataset directory."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsparse.cli import main
from fedsparse.data import write_dataset

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "sparse"
             / "lastfm_mf_sparserec.toml")


@pytest.fixture()
def data_dir(tmp_path, small_data):
    return write_dataset(small_data, tmp_path / "synthetic")


def train_args(data_dir, out, *overrides):
    args = ["train", "--quiet", "--out", str(out), CONFIG, "--set", f"data.name={data_dir}",
            "--set", "train.epochs=2", "--set", "train.batch_size=256", "--set", "model.dim=8",
            "--set", "train.eval_every=1"]
    for override in overrides:
        args += ["--set", override]
    return args


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
def test_sparse_run_writes_real_masks_and_reevaluates(tmp_path, capsys, data_dir, model):
    out = tmp_path / "run"
    assert main(train_args(data_dir, out, f"model.name={model}", "sparse.method=sparserec",
                           "sparse.density=0.2", "sparse.update_interval=3")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("density", "model_bytes", "train_bytes", "dense_bytes", "seconds_per_epoch",
                "mask_updates"):
        assert key in metrics
    assert metrics["density"] == pytest.approx(0.2, abs=0.01)
    assert metrics["model_bytes"] < metrics["train_bytes"]
    assert metrics["model_bytes"] < 0.5 * metrics["dense_bytes"] and metrics["mask_updates"] > 0
    history = pd.read_csv(out / "history.csv")
    assert history["density"].nunique() == 1 and history["density"].iloc[0] == metrics["density"]
    with np.load(out / "model.npz") as npz:
        masks = np.concatenate([npz["user_mask"].ravel(), npz["item_mask"].ravel()])
        assert masks.mean() == metrics["density"]
        assert (npz["item"][~npz["item_mask"]] == 0).all()
    capsys.readouterr()
    assert main(["report", "eval", str(out)]) == 0
    assert f"recall@20: {metrics['recall@20']:.6f}" in capsys.readouterr().out


def test_too_small_budget_is_one_line_and_writes_nothing(tmp_path, capsys, data_dir):
    out = tmp_path / "run"
    assert main(train_args(data_dir, out, "sparse.method=static", "sparse.budget_bytes=500")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sparse.budget_bytes" in err
    assert not out.exists()
