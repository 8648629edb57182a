"""The results directory (DESIGN section 5): config, metrics, history, model arrays."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from fedsparse.config import ExperimentConfig, dump_config, load_config
from fedsparse.data import InteractionData, load_dataset
from fedsparse.errors import ConfigError, FedsparseError
from fedsparse.metrics import evaluate_embeddings
from fedsparse.train import TrainResult, train_centralized


def default_run_dir(name: str) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>``."""
    return Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


def write_atomically(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file, flushed to disk, and a rename: a
    reader, or a run killed meanwhile, sees the old file or the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def model_arrays(result: TrainResult) -> dict[str, np.ndarray]:
    """``user``/``item`` dense views (zeros at pruned entries) with the tables' real masks,
    plus the scoring vectors when they differ from the tables (LightGCN)."""
    model = result.model
    with torch.no_grad():
        tables = {name: table.detach().numpy().copy() for name, table in model.tables().items()}
        user_final, item_final = (vectors.detach().numpy().copy()
                                  for vectors in model.final_embeddings())
    arrays = {"user": tables["user"], "item": tables["item"],
              "user_mask": model.user_table.mask().numpy(),
              "item_mask": model.item_table.mask().numpy()}
    if not (np.array_equal(user_final, tables["user"])
            and np.array_equal(item_final, tables["item"])):
        arrays["user_final"], arrays["item_final"] = user_final, item_final
    return arrays


def write_run(out_dir: Path, cfg: ExperimentConfig, data: InteractionData,
              result: TrainResult) -> dict[str, float | int | str]:
    """Write ``config.toml``, ``metrics.json``, ``history.csv`` and ``model.npz``; return metrics.

    The memory metrics (``density``, ``model_bytes``, ``train_bytes``, ``dense_bytes``) are the
    ones training measured on the tables (see :class:`~fedsparse.train.TrainResult`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out_dir / "config.toml")
    arrays = model_arrays(result)
    metrics: dict[str, float | int | str] = {
        **result.metrics,
        "epochs": int(cfg.train.epochs),
        "dataset": data.name,
        "model": cfg.model.name,
        "method": cfg.sparse.method,
        "peak_memory_mb": peak_memory_mb(),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    result.history.to_csv(out_dir / "history.csv", index=False)
    np.savez_compressed(out_dir / "model.npz", **arrays)
    return metrics


def reference_config(cfg: ExperimentConfig) -> ExperimentConfig | None:
    """A fleet's centralized reference (``fl.reference_config``) on the fleet's data, split
    and seed; None without one.

    Raises
    ------
    ConfigError
        The reference config does not load; the message names ``fl.reference_config``.
    """
    if not cfg.fl.reference_config:
        return None
    try:
        reference = load_config(cfg.fl.reference_config)
    except ConfigError as exc:
        raise ConfigError(f"fl.reference_config: {exc}") from None
    return dataclasses.replace(reference, data=cfg.data, seed=cfg.seed)


def train_reference(reference: ExperimentConfig, out_dir: Path) -> dict[str, float | int | str]:
    """The reference's metrics: trained into ``out_dir`` (a results directory), or read from it
    when it holds them already."""
    if (out_dir / "metrics.json").exists():
        return json.loads((out_dir / "metrics.json").read_text())
    data = load_dataset(reference.data.name, reference.data.split, reference.data.max_items)
    return write_run(out_dir, reference, data, train_centralized(reference, data, progress=False))


def reevaluate_run(run_dir: Path) -> dict[str, float]:
    """Re-score a results directory from ``model.npz`` alone (plus its config's dataset).

    Scores are ``user_final @ item_final.T`` when the model stored them (LightGCN), else
    ``(user * user_mask) @ (item * item_mask).T``.
    """
    npz_path = run_dir / "model.npz"
    if not npz_path.exists():
        raise FedsparseError(f"{npz_path}: not found (is {run_dir} a results directory?)")
    cfg = load_config(run_dir / "config.toml")
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    with np.load(npz_path) as model:
        if "user_final" in model:
            user, item = model["user_final"], model["item_final"]
        else:
            user, item = model["user"] * model["user_mask"], model["item"] * model["item_mask"]
    return evaluate_embeddings(user, item, data.train, data.test, ks=(cfg.train.topk,),
                               batch_size=cfg.train.eval_batch_size)
