"""Write the README's throughput table from results/*/ (never typed by hand).

Each fleet run is a ``fedsparse simulate`` results directory (without ``model.npz`` and
checkpoints) with ``peak_rss.json``; ``bare_flower_<n>/`` is a bare Flower simulation of ``n``
SuperNodes (``simulations/fleet_memory_accuracy/bare_flower.py``). ``run.sh`` writes them all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fedsparse.federated.fleet import supernode_count
from fedsparse.report.tables import replace_block

HERE = Path(__file__).resolve().parent
RUNS = {"lastfm_one_per_node": "LastFM, 1 per SuperNode (as deployed)",
        "lastfm_auto": "LastFM, auto",
        "gowalla_sampled": "Gowalla, all users and items, 3,000 per round, auto",
        "gowalla_all": "Gowalla, all users and items, all 29,858 in the round, auto"}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def run_row(name: str, label: str) -> dict:
    """One run's medians over its rounds, peak memory and the bare Flower round beside it."""
    out = HERE / "results" / name
    history = pd.read_csv(out / "history.csv")
    metrics, runtime = _json(out / "metrics.json"), _json(out / "runtime.json")
    per_node = runtime["devices_per_node"]
    nodes = supernode_count(metrics["devices"], per_node)
    bare = HERE / "results" / f"bare_flower_{nodes}" / "metrics.json"
    return {"run": label, "devices": metrics["devices"],
            "devices / round": int(history["sampled"].median()),
            "devices / SuperNode": per_node, "SuperNodes": nodes,
            "s / round": history["seconds"].median(),
            "device-rounds / s": (history["sampled"] / history["seconds"]).median(),
            "bare Flower s / round": _json(bare)["seconds_per_round"] if bare.exists()
            else float("nan"),
            "peak memory, all processes (MB)": _json(out / "peak_rss.json")["peak_rss_mb"],
            "within budget": "yes" if metrics["within_budget"] else "NO"}


def main() -> None:
    rows = {name: run_row(name, label) for name, label in RUNS.items()
            if (HERE / "results" / name / "metrics.json").exists()}
    table = pd.DataFrame(list(rows.values())).to_markdown(
        index=False, floatfmt=("", ".0f", ".0f", ".0f", ".0f", ".2f", ".0f", ".2f", ".0f", ""))
    lines = [table, ""]
    if {"lastfm_auto", "lastfm_one_per_node"} <= set(rows):
        auto, alone = rows["lastfm_auto"], rows["lastfm_one_per_node"]
        speedup = auto["device-rounds / s"] / alone["device-rounds / s"]
        lines.append(f"- LastFM, device-rounds per second, auto / one per SuperNode: "
                     f"**{speedup:.1f}x** (target >= 30x); a full round with auto cohorts: "
                     f"**{auto['s / round']:.2f} s** (target <= 2 s).")
    if "gowalla_all" in rows:
        whole = rows["gowalla_all"]
        lines.append(f"- Gowalla, a round of all {whole['devices']:,} devices on all 40,981 "
                     f"items: **{whole['s / round']:.1f} s** (target <= 60 s), peak memory "
                     f"**{whole['peak memory, all processes (MB)'] / 1024:.2f} GiB** "
                     f"(target <= 8 GB).")
    replace_block(HERE / "README.md", "throughput", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
