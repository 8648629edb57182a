"""Write the README's throughput table from results/*/ (never typed by hand).

Each run is a ``fedsparse simulate`` results directory (without ``model.npz`` and
checkpoints), written by ``run.sh``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fedsparse.report.tables import replace_block

HERE = Path(__file__).resolve().parent
RUNS = {"lastfm_one_per_node": "1 (as deployed)", "lastfm_auto": "auto"}


def run_row(name: str, setting: str) -> dict:
    """One run's medians: seconds per training round and device-rounds per second."""
    out = HERE / "results" / name
    history = pd.read_csv(out / "history.csv")
    metrics = json.loads((out / "metrics.json").read_text())
    runtime = json.loads((out / "runtime.json").read_text())
    rates = history["sampled"] / history["seconds"]
    return {"devices per SuperNode": setting, "devices": metrics["devices"],
            "rounds": len(history), "s / round (median)": history["seconds"].median(),
            "device-rounds / s (median)": rates.median(),
            "peak memory, server (MB)": runtime["peak_memory_mb"],
            "within budget": "yes" if metrics["within_budget"] else "NO",
            "Recall@20 (after its rounds)": metrics["recall@20"]}


def main() -> None:
    rows = {name: run_row(name, setting) for name, setting in RUNS.items()
            if (HERE / "results" / name / "metrics.json").exists()}
    table = pd.DataFrame(list(rows.values())).to_markdown(
        index=False, floatfmt=("", ".0f", ".0f", ".2f", ".0f", ".0f", "", ".4f"))
    if len(rows) == len(RUNS):
        speedup = (rows["lastfm_auto"]["device-rounds / s (median)"]
                   / rows["lastfm_one_per_node"]["device-rounds / s (median)"])
        table += (f"\n\nauto / one per SuperNode, device-rounds per second: **{speedup:.1f}x**; "
                  f"a full round with auto cohorts: "
                  f"**{rows['lastfm_auto']['s / round (median)']:.2f} s**.")
    replace_block(HERE / "README.md", "lastfm", table + "\n")


if __name__ == "__main__":
    main()
