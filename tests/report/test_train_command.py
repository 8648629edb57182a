import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fedsparse.cli import main
from fedsparse.data import load_dataset

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "centralized" / "lastfm_mf.toml")


def independent_recall_ndcg(user, item, train, test, k=20):
    """A from-scratch numpy implementation of the LightGCN protocol, for cross-checking."""
    scores = user @ item.T
    scores[train.toarray() > 0] = -np.inf
    recalls, ndcgs = [], []
    for u in range(scores.shape[0]):
        relevant = set(test[u].indices)
        if not relevant:
            continue
        top = np.argsort(-scores[u], kind="stable")[:k]
        gains = np.array([item_id in relevant for item_id in top], dtype=float)
        discounts = 1 / np.log2(np.arange(2, k + 2))
        recalls.append(gains.sum() / len(relevant))
        ndcgs.append((gains * discounts).sum() / discounts[: min(len(relevant), k)].sum())
    return float(np.mean(recalls)), float(np.mean(ndcgs))


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
def test_train_writes_results_that_reevaluate_independently(tmp_path, capsys, model):
    out = tmp_path / "run"
    code = main(["train", CONFIG, "--out", str(out), "--quiet",
                 "--set", "train.epochs=3", "--set", f"model.name={model}",
                 "--set", "train.eval_every=2"])
    assert code == 0
    assert "recall@20" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("recall@20", "ndcg@20", "density", "model_bytes", "seconds_per_epoch",
                "peak_memory_mb"):
        assert key in metrics
    assert metrics["density"] == 1.0
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["recall@20"].notna().tolist() == [False, True, True]
    assert "model.name" not in (out / "config.toml").read_text()
    assert f'name = "{model}"' in (out / "config.toml").read_text()

    data = load_dataset("lastfm")
    with np.load(out / "model.npz") as npz:
        assert npz["user"].shape == (1892, 64) and npz["item_mask"].dtype == bool
        assert metrics["model_bytes"] == npz["user"].nbytes + npz["item"].nbytes
        user, item = ((npz["user_final"], npz["item_final"]) if model == "lightgcn"
                      else (npz["user"] * npz["user_mask"], npz["item"] * npz["item_mask"]))
    recall, ndcg = independent_recall_ndcg(user, item, data.train, data.test)
    assert recall == pytest.approx(metrics["recall@20"], abs=1e-4)
    assert ndcg == pytest.approx(metrics["ndcg@20"], abs=1e-4)

    assert main(["report", "eval", str(out)]) == 0
    assert f"recall@20: {metrics['recall@20']:.6f}" in capsys.readouterr().out


@pytest.mark.parametrize("override", ["train.epochz=3", "train.lr=-0.1", "model.name=gpt"])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, capsys, override):
    out = tmp_path / "run"
    code = main(["train", CONFIG, "--out", str(out),
                 "--set", override])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and override.split("=")[0] in err
    assert not out.exists()


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "fedsparse.cli", "data", "stats", "lastfm"],
                          capture_output=True, text=True, check=True)
    assert "1892" in done.stdout and "4489" in done.stdout
