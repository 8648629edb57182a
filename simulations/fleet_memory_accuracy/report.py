"""Write the README's tables (and the comparison plot) from results/*/ (never typed by hand).

Runs are ``results/<dataset>_<method>/`` (``fedsparse simulate`` results directories) and
``results/bare_flower_<dataset>/`` (``bare_flower.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedsparse.config import load_config
from fedsparse.data import load_dataset
from fedsparse.federated.fleet import fleet_users
from fedsparse.metrics.ranking import evaluate_embeddings
from fedsparse.report.tables import replace_block

HERE = Path(__file__).resolve().parent
#: Below this Recall@20 on both sides a comparison says nothing (LastFM's fleets reach 0.09+).
NOISE_RECALL = 0.01
METHODS = {"sparserec": "federated SparseRec", "sparserec_no_nmf": "random-init federated DST",
           "nested_dims": "nested dimensions", "dense": "dense FedAvg"}


def load_runs(dataset: str) -> dict[str, dict]:
    """metrics.json, with runtime.json under ``"runtime"``, of each method's run on
    ``dataset`` that exists."""
    runs = {}
    for method in METHODS:
        out = HERE / "results" / f"{dataset}_{method}"
        if (out / "metrics.json").exists():
            runs[method] = {**json.loads((out / "metrics.json").read_text()),
                            "runtime": json.loads((out / "runtime.json").read_text())}
    return runs


def tier_table(runs: dict[str, dict]) -> str:
    rows = []
    for method, metrics in runs.items():
        for tier, values in metrics["tiers"].items():
            rows.append({"method": METHODS[method], "tier": tier,
                         "devices": values["devices"],
                         "budget (KB)": values["budget_bytes"] / 1000,
                         "density": values["density"],
                         "model bytes, max (KB)": values["model_bytes_max"] / 1000,
                         "train bytes, max (KB)": values["train_bytes_max"] / 1000,
                         "Recall@20": values["recall@20"], "NDCG@20": values["ndcg@20"],
                         "up / device-round (KB)": values["up_bytes_per_device_round"] / 1000,
                         "down / message (KB)": values["down_bytes_per_message"] / 1000})
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=("", "", ".0f", ".0f", ".4f",
                                                                 ".1f", ".1f", ".4f", ".4f",
                                                                 ".1f", ".1f"))


def fleet_table(dataset: str, runs: dict[str, dict], bare: dict | None) -> str:
    rows = []
    for method, metrics in runs.items():
        sampled = pd.read_csv(HERE / "results" / f"{dataset}_{method}" / "history.csv")["sampled"]
        row = {"method": METHODS[method], "devices": metrics["devices"],
               "devices / round": int(sampled.median()), "rounds": metrics["rounds"], "Recall@20": metrics["recall@20"],
               "NDCG@20": metrics["ndcg@20"],
               "up / round (MB)": metrics["up_bytes_per_round"] / 1e6,
               "down / round (MB)": metrics["down_bytes_per_round"] / 1e6,
               "all within budget": "yes" if metrics["within_budget"] else "no",
               "init (s)": metrics["runtime"]["init_seconds"],
               "s / round": metrics["runtime"]["seconds_per_round"]}
        if bare is not None:
            row["/ bare Flower round"] = (metrics["runtime"]["seconds_per_round"]
                                          / bare["seconds_per_round"])
        rows.append(row)
    formats = ("", ".0f", ".0f", ".0f", ".4f", ".4f", ".2f", ".1f", "", ".1f", ".1f", ".2f")
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=formats[:len(rows[0])])


def curve_table(dataset: str, runs: dict[str, dict]) -> str:
    """Fleet Recall@20 after each evaluated round, one row per method."""
    rows = []
    for method in runs:
        history = pd.read_csv(HERE / "results" / f"{dataset}_{method}" / "history.csv")
        evaluated = history.dropna(subset=["recall@20"])
        rows.append({"method": METHODS[method],
                     **{f"round {r}": value for r, value in zip(evaluated["round"],
                                                                evaluated["recall@20"])}})
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f")


def tuning_table(dataset: str) -> str | None:
    """Every tuning run (``tune.py``) on ``dataset``: validation Recall@20 per evaluated round,
    the gain over the last fifth of the rounds (the convergence test: < 0.002) and seconds per
    round; None before any."""
    rows = []
    for run in sorted((HERE / "results" / "tuning").glob(f"{dataset}_*/*/metrics.json")):
        history = pd.read_csv(run.parent / "history.csv").dropna(subset=["recall@20"])
        curve = dict(zip(history["round"].astype(int), history["recall@20"]))
        last = max(curve)
        fifth = min(curve, key=lambda r: abs(r - 0.8 * last))
        runtime = json.loads((run.parent / "runtime.json").read_text())
        rows.append({"method": METHODS.get(run.parent.parent.name.split("_", 1)[1],
                                           run.parent.parent.name.split("_", 1)[1]),
                     "setting": run.parent.name.replace(",", ", "),
                     **{f"r{r}": value for r, value in curve.items()},
                     "gain, last fifth": curve[last] - curve[fifth],
                     "s / round": runtime["seconds_per_round"]})
    if not rows:
        return None
    table = pd.DataFrame(rows)
    columns = ["method", "setting", *sorted((c for c in table.columns if c.startswith("r")
                                             and c[1:].isdigit()), key=lambda c: int(c[1:])),
               "gain, last fifth", "s / round"]
    return table[columns].to_markdown(index=False, floatfmt=".4f", missingval="")


def targets(runs: dict[str, dict]) -> str:
    """The issue's targets, checked on the result files."""
    lines = []
    for method in ("sparserec", "sparserec_no_nmf"):
        if method in runs:
            ok = runs[method]["within_budget"]
            lines.append(f"- {METHODS[method]}: every device's model and training bytes within "
                         f"its budget in every round: **{'met' if ok else 'MISSED'}**.")
    if {"sparserec", "dense"} <= set(runs):
        for tier, values in runs["sparserec"]["tiers"].items():
            dense = runs["dense"]["tiers"][tier]
            allowed = 1.2 * values["density"] * dense["up_payload_bytes_per_device_round"]
            payload = values["up_payload_bytes_per_device_round"]
            index = values["up_bytes_per_device_round"] - payload
            verdict = "met" if payload <= allowed else "MISSED"
            ratio = payload / (values["density"] * dense["up_payload_bytes_per_device_round"])
            lines.append(f"- upload, tier {tier}: {payload / 1000:.2f} KB of values and growth "
                         f"scores per device-round, {ratio:.2f} x (density x dense FedAvg's), "
                         f"against 1.2 x: {allowed / 1000:.2f} KB; plus {index / 1000:.2f} KB "
                         f"of index and headers: **{verdict}**.")
    if {"sparserec", "sparserec_no_nmf"} <= set(runs):
        for tier, values in runs["sparserec"]["tiers"].items():
            other = runs["sparserec_no_nmf"]["tiers"][tier]["recall@20"]
            verdict = "met" if values["recall@20"] > other else "MISSED"
            if max(values["recall@20"], other) < NOISE_RECALL:
                verdict = f"no verdict, both below {NOISE_RECALL} (the models did not learn)"
            lines.append(f"- tier {tier}: federated SparseRec Recall@20 {values['recall@20']:.4f} "
                         f"vs random-init federated DST {other:.4f}: **{verdict}**.")
    return "\n".join(lines) if lines else "(no runs yet)"


def popularity_reference(dataset: str, runs: dict[str, dict]) -> str:
    """Recall@20 and NDCG@20 of a model-free ranking on the same fleet: every device's unseen
    items by how many of the fleet's devices train on them."""
    cfg = load_config(HERE / "results" / f"{dataset}_{next(iter(runs))}" / "config.toml")
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    users = fleet_users(data, cfg.fl.max_devices, cfg.seed)
    train, test = data.train[users], data.test[users]
    counts = np.asarray(train.sum(axis=0), dtype=np.float32).T              # (n_items, 1)
    metrics = evaluate_embeddings(np.ones((len(users), 1), np.float32), counts, train, test)
    return (f"Reference without a model: ranking every device's unseen items by how many of "
            f"the fleet's {len(users)} devices train on them gives Recall@20 "
            f"{metrics['recall@20']:.4f}, NDCG@20 {metrics['ndcg@20']:.4f}.")


def plot(dataset: str, runs: dict[str, dict]) -> None:
    """Per-device model bytes against Recall@20, one panel per method."""
    figure = Figure(figsize=(4.5 * len(runs), 4))
    axes = figure.subplots(1, len(runs), sharey=True, squeeze=False)[0]
    for ax, method in zip(axes, runs):
        clients = pd.read_csv(HERE / "results" / f"{dataset}_{method}" / "clients.csv")
        clients = clients[clients["n_test"] > 0]
        for tier, members in clients.groupby("tier", sort=False):
            ax.scatter(members["model_bytes"] / 1000, members["recall@20"], s=6, alpha=0.4,
                       label=f"{tier} ({members['recall@20'].mean():.3f})")
        ax.set_title(METHODS[method])
        ax.set_xlabel("device model bytes (KB)")
        ax.legend(title="tier (mean Recall@20)", fontsize=8)
    axes[0].set_ylabel("Recall@20")
    figure.tight_layout()
    figure.savefig(HERE / f"memory_vs_accuracy_{dataset}.png", dpi=110)


def main() -> None:
    readme = HERE / "README.md"
    for dataset in ("lastfm", "gowalla"):
        tuning = tuning_table(dataset)
        if tuning is not None:
            replace_block(readme, f"{dataset}-tuning", tuning)
        runs = load_runs(dataset)
        bare_path = HERE / "results" / f"bare_flower_{dataset}" / "metrics.json"
        bare = json.loads(bare_path.read_text()) if bare_path.exists() else None
        if not runs:
            continue
        replace_block(readme, f"{dataset}-tiers", tier_table(runs))
        replace_block(readme, f"{dataset}-fleet", fleet_table(dataset, runs, bare))
        replace_block(readme, f"{dataset}-curve", curve_table(dataset, runs))
        replace_block(readme, f"{dataset}-targets", targets(runs))
        replace_block(readme, f"{dataset}-popularity", popularity_reference(dataset, runs))
        plot(dataset, runs)


if __name__ == "__main__":
    main()
