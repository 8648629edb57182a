"""``model.value_dtype``: every precision is scored and measured after training, and the stored
model, decoded from ``model.npz``, re-evaluates to ``metrics.json``."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedsparse.cli import main
from fedsparse.config import SPARSE_METHODS, VALUE_DTYPES
from fedsparse.data import write_dataset
from fedsparse.report.results import reevaluate_run

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "sparse"
             / "lastfm_mf_sparserec.toml")


@pytest.fixture()
def data_dir(tmp_path, small_data):
    return write_dataset(small_data, tmp_path / "synthetic")


def train(data_dir, out, *overrides):
    args = ["train", "--quiet", "--out", str(out), CONFIG, "--set", f"data.name={data_dir}",
            "--set", "train.epochs=2", "--set", "train.batch_size=256", "--set", "model.dim=8",
            "--set", "train.eval_every=2"]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("model, method", [
    *(("mf", method) for method in SPARSE_METHODS),
    ("lightgcn", "dense"), ("lightgcn", "sparserec"), ("lightgcn", "mixed_dim")])
def test_every_stored_precision_reevaluates_to_its_metrics(tmp_path, data_dir, model, method):
    density = {"dense": [], "mixed_dim": ["sparse.density=0.5", "sparse.mixed_blocks=3"]}.get(
        method, ["sparse.density=0.5"])
    runs = {dtype: tmp_path / dtype for dtype in ("float32", "int4")}
    metrics = {dtype: train(data_dir, out, f"model.name={model}", f"sparse.method={method}",
                            f"model.value_dtype={dtype}", *density)
               for dtype, out in runs.items()}
    precisions = metrics["float32"]["precisions"]
    assert list(precisions) == list(VALUE_DTYPES)
    assert precisions == metrics["int4"]["precisions"]          # the same training either way
    sizes = [precisions[dtype]["model_bytes"] for dtype in VALUE_DTYPES]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert precisions["float32"]["model_bytes"] == metrics["float32"]["model_bytes"]
    for dtype, out in runs.items():
        assert metrics[dtype]["recall@20"] == precisions[dtype]["recall@20"]
        assert metrics[dtype]["model_bytes"] == precisions[dtype]["model_bytes"]
        again = reevaluate_run(out)
        assert again["recall@20"] == pytest.approx(metrics[dtype]["recall@20"], abs=1e-6)
        assert again["ndcg@20"] == pytest.approx(metrics[dtype]["ndcg@20"], abs=1e-6)
        with np.load(out / "model.npz") as npz:
            assert str(npz["value_dtype"]) == dtype
            assert (npz["item"][~npz["item_mask"]] == 0).all()
    with (np.load(runs["float32"] / "model.npz") as exact,
          np.load(runs["int4"] / "model.npz") as npz):
        assert npz["item_codes"].dtype == np.uint8                   # two values a byte
        assert npz["item_codes"].size == -(-exact["item_codes"].size // 2)
    assert precisions["int8"]["recall@20"] == pytest.approx(precisions["float32"]["recall@20"],
                                                            abs=0.02)
