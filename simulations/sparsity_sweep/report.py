"""Tables, plots and target checks of the sparsity sweep, from its result files only.

Reads ``results/<grid>/*/{config.toml,metrics.json}`` and ``results/step_time/*.json`` and
rewrites the generated blocks of this folder's README and ``recall_vs_density_<grid>.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fedsparse.report.tables import replace_block  # noqa: E402

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
ABLATIONS = ("sparserec_no_nmf", "sparserec_no_accumulation", "sparserec_no_sampling")


def load_grid(grid: Path) -> pd.DataFrame:
    """One row per run: method, density, seed, epochs and every metric."""
    rows = []
    for metrics_file in sorted(grid.glob("*/metrics.json")):
        config = tomllib.loads((metrics_file.parent / "config.toml").read_text())
        metrics = json.loads(metrics_file.read_text())
        method = config["sparse"]["method"]
        rows.append({**metrics, "method": method, "seed": config["seed"],
                     "epochs": config["train"]["epochs"],
                     "target_density": 1.0 if method == "dense" else config["sparse"]["density"]})
    return pd.DataFrame(rows)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean (and spread of Recall@20) over seeds, per method and target density."""
    runs = runs.assign(model_mib=runs["model_bytes"] / 2**20,
                       floor_ratio=runs["model_bytes"] / runs["floor_bytes"])
    grouped = runs.groupby(["method", "target_density"], sort=False)
    table = grouped.agg(seeds=("seed", "nunique"), epochs=("epochs", "first"),
                        recall=("recall@20", "mean"), recall_std=("recall@20", "std"),
                        ndcg=("ndcg@20", "mean"), density=("density", "mean"),
                        model_mib=("model_mib", "mean"), floor_ratio=("floor_ratio", "max"),
                        s_per_epoch=("seconds_per_epoch", "mean"),
                        peak_mib=("peak_memory_mb", "max"))
    return table.fillna({"recall_std": 0.0}).reset_index()


def markdown(table: pd.DataFrame) -> str:
    shown = table.assign(**{
        "Recall@20": [f"{m:.4f} ± {s:.4f}" for m, s in zip(table["recall"], table["recall_std"])]})
    shown = shown.rename(columns={"target_density": "target", "ndcg": "NDCG@20",
                                  "model_mib": "model MiB", "floor_ratio": "bytes/floor",
                                  "s_per_epoch": "s/epoch", "peak_mib": "peak MiB"})
    columns = ["method", "target", "density", "seeds", "epochs", "Recall@20", "NDCG@20",
               "model MiB", "bytes/floor", "s/epoch", "peak MiB"]
    return shown[columns].to_markdown(index=False, floatfmt=(
        "", ".2f", ".4f", ".0f", ".0f", "", ".4f", ".3f", ".3f", ".2f", ".0f"))


def target_checks(table: pd.DataFrame) -> list[str]:
    """The issue's accuracy targets, evaluated on the means over seeds."""
    recall = table.set_index(["method", "target_density"])["recall"]
    lines = []
    low = sorted((d for d in table["target_density"].unique() if d <= 0.2), reverse=True)
    for density in low:
        if ("sparserec", density) in recall and ("rigl", density) in recall:
            ours, theirs = recall["sparserec", density], recall["rigl", density]
            verdict = "beats" if ours > theirs else "does NOT beat"
            lines.append(f"- density {density:g}: SparseRec {ours:.4f} {verdict} RigL {theirs:.4f} "
                         f"({100 * (ours / theirs - 1):+.1f}%)")
    if ("sparserec", 0.2) in recall and ("dense", 1.0) in recall:
        kept = recall["sparserec", 0.2] / recall["dense", 1.0]
        verdict = "meets" if kept >= 0.9 else "MISSES"
        lines.append(f"- SparseRec at density 0.2 keeps {100 * kept:.1f}% of dense Recall@20 "
                     f"({verdict} the 90% target)")
    for ablation in ABLATIONS:
        compared = [d for d in sorted(table["target_density"].unique(), reverse=True)
                    if (ablation, d) in recall and ("sparserec", d) in recall]
        if not compared:
            lines.append(f"- {ablation}: not run on this grid")
            continue
        worse = [d for d in compared if recall[ablation, d] < recall["sparserec", d]]
        where = ", ".join(f"{d:g}" for d in worse) if worse else "no density"
        lines.append(f"- {ablation} is worse than full SparseRec at: {where} "
                     f"(of {', '.join(f'{d:g}' for d in compared)})")
    sparse = table[table["method"] != "dense"]
    if len(sparse):
        lines.append(f"- largest model_bytes / floor: {sparse['floor_ratio'].max():.3f} "
                     "(target <= 1.15)")
    return lines


def plot(table: pd.DataFrame, grid: str) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for method, rows in table[table["method"] != "dense"].groupby("method", sort=False):
        axes.errorbar(rows["target_density"], rows["recall"], yerr=rows["recall_std"],
                      marker="o", capsize=3, label=method)
    dense = table[table["method"] == "dense"]
    if len(dense):
        axes.axhline(dense["recall"].iloc[0], color="black", linestyle="--", label="dense")
    axes.set(xscale="log", xlabel="density of the embedding tables", ylabel="Recall@20",
             title=f"Recall@20 against density ({grid})")
    axes.legend(fontsize=7)
    figure.tight_layout()
    path = HERE / f"recall_vs_density_{grid}.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def step_time_table() -> str:
    rows = [json.loads(p.read_text()) for p in sorted((HERE / "results" / "step_time").glob("*.json"))]
    frame = pd.DataFrame(rows)[["dataset", "density", "steps", "threads", "sparserec_median_s",
                                "sparserec_no_sampling_median_s", "ratio"]]
    return frame.rename(columns={"sparserec_median_s": "sampled backward s/step",
                                 "sparserec_no_sampling_median_s": "full backward s/step",
                                 "ratio": "sampled / full"}).to_markdown(index=False, floatfmt=".3f")


def main() -> None:
    for grid in sorted(p for p in (HERE / "results").iterdir() if p.name != "step_time"):
        runs = load_grid(grid)
        if runs.empty:
            continue
        table = summary(runs)
        plot(table, grid.name)
        replace_block(README, f"{grid.name}-table", markdown(table))
        replace_block(README, f"{grid.name}-targets", "\n".join(target_checks(table)))
    if (HERE / "results" / "step_time").exists():
        replace_block(README, "step-time", step_time_table())


if __name__ == "__main__":
    main()
