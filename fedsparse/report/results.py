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
from fedsparse.models.lightgcn import layer_mean, normalized_adjacency
from fedsparse.sparse.mixed import MixedDimEmbeddingTable, block_sizes, scale_groups
from fedsparse.sparse.precision import StoredValues, dequantize
from fedsparse.train import TrainResult, train_centralized
from fedsparse.train.precision import values_at_precision


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


def model_arrays(result: TrainResult, value_dtype: str) -> dict[str, np.ndarray]:
    """The model as stored at ``value_dtype``: ``<table>_codes`` and ``<table>_scales``
    (:mod:`fedsparse.sparse.precision`) and the real ``user_mask``/``item_mask``, which say
    where the values sit and how to decode them, with ``value_dtype``; the decoded ``user`` and
    ``item`` dense views (zeros at pruned entries); the scoring vectors when they differ from
    the tables (LightGCN)."""
    model = result.model
    with values_at_precision(model, value_dtype) as stored, torch.no_grad():
        tables = {name: table.detach().numpy().copy() for name, table in model.tables().items()}
        user_final, item_final = (vectors.detach().numpy().copy()
                                  for vectors in model.final_embeddings())
    arrays = {"value_dtype": np.array(value_dtype),
              "user": tables["user"], "item": tables["item"],
              "user_mask": model.user_table.mask().numpy(),
              "item_mask": model.item_table.mask().numpy()}
    for name, values in stored.items():
        arrays[f"{name}_codes"], arrays[f"{name}_scales"] = values.codes, values.scales
        table = getattr(model, f"{name}_table")
        if isinstance(table, MixedDimEmbeddingTable):
            arrays.update({f"{name}_{key}": array
                           for key, array in table.layout_arrays().items()})
    if not (np.array_equal(user_final, tables["user"])
            and np.array_equal(item_final, tables["item"])):
        arrays["user_final"], arrays["item_final"] = user_final, item_final
    return arrays


def decoded_table(model: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    """Table ``name`` (``"user"``, ``"item"``) of a stored ``model.npz``, decoded from its
    codes and scales at the stored ``value_dtype``: (n_rows, d) float32. A sparse or dense
    table's values sit at its mask's entries, row-major (zeros elsewhere); a mixed-dimension
    table is rebuilt from its ``position`` and ``block_dims`` and projected."""
    mask, dtype = model[f"{name}_mask"], str(model["value_dtype"])
    codes, scales = model[f"{name}_codes"], model[f"{name}_scales"]
    if f"{name}_block_dims" in model:
        position, block_dims = model[f"{name}_position"], model[f"{name}_block_dims"]
        groups, _ = scale_groups(block_sizes(len(position), len(block_dims)), block_dims,
                                 mask.shape[1])
        values = dequantize(StoredValues(dtype, codes, scales, groups.size), groups)
        table = MixedDimEmbeddingTable.from_storage(position, mask.shape[1], block_dims, values)
        with torch.no_grad():
            return table.to_dense().numpy()
    rows = np.nonzero(mask)[0]                                      # (nnz,) row-major order
    dense = np.zeros(mask.shape, dtype=np.float32)
    dense[mask] = dequantize(StoredValues(dtype, codes, scales, rows.size), rows)
    return dense


def write_run(out_dir: Path, cfg: ExperimentConfig, data: InteractionData,
              result: TrainResult) -> dict[str, float | int | str]:
    """Write ``config.toml``, ``metrics.json``, ``history.csv`` and ``model.npz``; return metrics.

    The memory metrics (``density``, ``model_bytes``, ``train_bytes``, ``dense_bytes``) are the
    ones training measured on the tables (see :class:`~fedsparse.train.TrainResult`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out_dir / "config.toml")
    arrays = model_arrays(result, cfg.model.value_dtype)
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

    The tables are decoded from their stored codes (:func:`decoded_table`); scores are their
    dot products (MF) or those of their LightGCN propagation over the training graph.
    """
    npz_path = run_dir / "model.npz"
    if not npz_path.exists():
        raise FedsparseError(f"{npz_path}: not found (is {run_dir} a results directory?)")
    cfg = load_config(run_dir / "config.toml")
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    with np.load(npz_path) as model:
        user, item = decoded_table(model, "user"), decoded_table(model, "item")
    if cfg.model.name == "lightgcn":
        with torch.no_grad():
            final = layer_mean(normalized_adjacency(data.train),
                               torch.from_numpy(np.concatenate([user, item])), cfg.model.layers)
        user, item = final[:data.n_users].numpy(), final[data.n_users:].numpy()
    return evaluate_embeddings(user, item, data.train, data.test, ks=(cfg.train.topk,),
                               batch_size=cfg.train.eval_batch_size)
