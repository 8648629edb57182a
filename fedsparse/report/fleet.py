"""The results directory of a fleet simulation (DESIGN section 5).

``config.toml``, ``metrics.json`` (fleet mean and per-tier Recall@K / NDCG@K, densities,
bytes), ``history.csv`` (one row per round), ``clients.csv`` (one row per device),
``model.npz`` (global ``item`` table, ``item_mask_<tier>`` per tier, ``user`` rows of the
devices with ``user_mask``), ``runtime.json`` (wall-clock seconds, peak memory, devices per
SuperNode) and
``memory_vs_accuracy.png``. ``metrics.json``, ``clients.csv`` and ``model.npz`` depend only
on the config and seed: a resumed run writes them byte for byte as an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedsparse.config import ExperimentConfig
from fedsparse.data import InteractionData
from fedsparse.federated.fleet import FleetPlan
from fedsparse.federated.server import DeviceLedger
from fedsparse.report.results import peak_memory_mb, write_atomically


@dataclass
class FleetRun:
    """Everything a finished simulation leaves behind.

    ``ledger`` is the server half's accounting (bytes up and down, rounds participated,
    largest ``train_bytes`` reported, final evaluation, user rows).
    """

    cfg: ExperimentConfig
    plan: FleetPlan
    data: InteractionData
    item: np.ndarray
    masks: list[np.ndarray]
    ledger: DeviceLedger
    history: pd.DataFrame
    init_seconds: float
    devices_per_node: int = 1


def clients_table(run: FleetRun) -> pd.DataFrame:
    """One row per device: ``device_id, tier, budget_bytes, model_bytes, train_bytes,
    recall@K, ndcg@K, n_test, up_bytes, up_payload_bytes, down_bytes, rounds_participated``
    (bytes summed over the run)."""
    k, plan, ledger = run.cfg.train.topk, run.plan, run.ledger
    evaluation = [ledger.evaluation.get(device, {}) for device in range(plan.n_devices)]
    return pd.DataFrame({
        "device_id": np.arange(plan.n_devices),
        "tier": [plan.tiers[tier].name for tier in plan.device_tier],
        "budget_bytes": [plan.tiers[tier].budget_bytes for tier in plan.device_tier],
        "model_bytes": [int(result.get("model-bytes", -1)) for result in evaluation],
        "train_bytes": ledger.max_train_bytes,
        f"recall@{k}": [result.get(f"recall@{k}", np.nan) for result in evaluation],
        f"ndcg@{k}": [result.get(f"ndcg@{k}", np.nan) for result in evaluation],
        "n_test": [int(result.get("n-test", 0)) for result in evaluation],
        "up_bytes": ledger.up_bytes,
        "up_payload_bytes": ledger.up_payload_bytes,
        "down_bytes": ledger.down_bytes,
        "rounds_participated": ledger.rounds,
    })


def fleet_metrics(run: FleetRun, clients: pd.DataFrame) -> dict[str, Any]:
    """Fleet mean and per-tier metrics from the clients table and the history."""
    k, cfg = run.cfg.train.topk, run.cfg
    evaluated = clients[clients["n_test"] > 0]
    history = run.history
    rounds = max(len(history), 1)
    densities = np.array([tier.density for tier in run.plan.tiers])[run.plan.device_tier]
    metrics: dict[str, Any] = {
        f"recall@{k}": float(evaluated[f"recall@{k}"].mean()),
        f"ndcg@{k}": float(evaluated[f"ndcg@{k}"].mean()),
        "density": float(densities.mean()),
        "model_bytes": float(clients["model_bytes"].mean()),
        "dense_bytes": 4 * run.data.n_items * cfg.model.dim,
        "within_budget": bool((clients["train_bytes"] <= clients["budget_bytes"]).all()
                              and (clients["model_bytes"] <= clients["budget_bytes"]).all()),
        "up_bytes_per_round": float(history["up-bytes"].sum() / rounds),
        "down_bytes_per_round": float(history["down-bytes"].sum() / rounds),
        "rejected": int(history["rejected"].sum()),
        "failed": int(history["failed"].sum()),
        "late": int(history["late"].sum()),
        "skipped_rounds": int(history["skipped"].sum()),
        "devices": run.plan.n_devices,
        "rounds": cfg.fl.rounds,
        "method": cfg.sparse.method,
        "dataset": run.data.name,
        "tiers": {},
    }
    for index, tier in enumerate(run.plan.tiers):
        members = clients[clients["tier"] == tier.name]
        tested = members[members["n_test"] > 0]
        participations = max(int(members["rounds_participated"].sum()), 1)
        metrics["tiers"][tier.name] = {
            "budget_bytes": tier.budget_bytes, "density": tier.density,
            "devices": len(members),
            "model_bytes_max": int(members["model_bytes"].max()),
            "train_bytes_max": int(members["train_bytes"].max()),
            f"recall@{k}": float(tested[f"recall@{k}"].mean()),
            f"ndcg@{k}": float(tested[f"ndcg@{k}"].mean()),
            "up_bytes_per_device_round": float(members["up_bytes"].sum() / participations),
            "up_payload_bytes_per_device_round": float(members["up_payload_bytes"].sum()
                                                       / participations),
            "down_bytes_per_message": float(
                members["down_bytes"].sum()
                / max(int(run.ledger.messages[members.index].sum()), 1)),
            "item_mask_nnz": int(run.masks[index].sum()),
        }
    return metrics


def runtime(run: FleetRun) -> dict[str, float]:
    """What differs between two runs of the same config: wall-clock seconds (median per
    round, mask initialisation), the process's peak memory and the devices per SuperNode
    (auto resolves by the machine)."""
    seconds = run.history["seconds"] if len(run.history) else pd.Series([0.0])
    return {"seconds_per_round": float(np.median(seconds)), "init_seconds": run.init_seconds,
            "peak_memory_mb": peak_memory_mb(), "devices_per_node": run.devices_per_node}


def model_arrays(run: FleetRun) -> dict[str, np.ndarray]:
    """``item``, ``item_mask_<tier>``, ``user`` (devices' rows, zeros elsewhere), ``user_mask``."""
    users = np.zeros((run.data.n_users, run.cfg.model.dim), dtype=np.float32)
    user_mask = np.zeros(users.shape, dtype=bool)
    for device, row in run.ledger.user_rows.items():
        users[run.plan.users[device]] = row
        user_mask[run.plan.users[device]] = True
    arrays = {"item": run.item, "user": users, "user_mask": user_mask}
    for tier, mask in zip(run.plan.tiers, run.masks):
        arrays[f"item_mask_{tier.name}"] = mask
    return arrays


def plot_memory_vs_accuracy(clients: pd.DataFrame, k: int, path: Path) -> None:
    """Per-device model bytes against Recall@K, one colour per tier."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    tested = clients[clients["n_test"] > 0]
    for tier, members in tested.groupby("tier", sort=False):
        axes.scatter(members["model_bytes"] / 1024, members[f"recall@{k}"], s=8, alpha=0.5,
                     label=f"{tier} (mean {members[f'recall@{k}'].mean():.3f})")
    axes.set_xlabel("device model bytes (KiB)")
    axes.set_ylabel(f"Recall@{k}")
    axes.legend(title="tier")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_fleet_run(out_dir: Path, run: FleetRun) -> dict[str, Any]:
    """Write the results directory (all but ``config.toml``, which the run writes when it
    starts); returns the metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clients = clients_table(run)
    metrics = fleet_metrics(run, clients)
    clients.to_csv(out_dir / "clients.csv", index=False)
    run.history.to_csv(out_dir / "history.csv", index=False)
    (out_dir / "runtime.json").write_text(json.dumps(runtime(run), indent=2) + "\n")
    np.savez_compressed(out_dir / "model.npz", **model_arrays(run))  # zip times fixed: 1980
    plot_memory_vs_accuracy(clients, run.cfg.train.topk, out_dir / "memory_vs_accuracy.png")
    write_atomically(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")  # the end
    return metrics
