"""Write the README's fault-tolerance table from results/*/ (never typed by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fedsparse.config import load_config
from fedsparse.report.tables import replace_block

HERE = Path(__file__).resolve().parent
RUNS = {"crash_0": "no faults", "crash_0.1": "crash 0.1 / round", "crash_0.3": "crash 0.3 / round",
        "crash_0.5": "crash 0.5 / round", "stragglers": "stragglers, {deadline:g} s deadline"}


def table() -> tuple[str, str]:
    rows, verdicts = [], []
    baseline = None
    for name, label in RUNS.items():
        out = HERE / "results" / name
        if not (out / "metrics.json").exists():
            continue
        metrics = json.loads((out / "metrics.json").read_text())
        history = pd.read_csv(out / "history.csv")
        deadline = load_config(out / "config.toml", fleet=True).fl.deadline_seconds
        label = label.format(deadline=deadline)
        recall = metrics["recall@20"]
        baseline = recall if name == "crash_0" else baseline
        rows.append({"faults": label, "rounds": len(history),
                     "sampled / round": history["sampled"].mean(),
                     "succeeded / round": history["succeeded"].mean(),
                     "failed / round": history["failed"].mean(),
                     "late / round": history["late"].mean(),
                     "rejected": int(history["rejected"].sum()),
                     "skipped rounds": int(history["skipped"].sum()),
                     "Recall@20": recall, "NDCG@20": metrics["ndcg@20"],
                     "vs no faults": recall - baseline if baseline is not None else float("nan")})
        if name in ("crash_0.1", "crash_0.3") and baseline is not None:
            verdict = "met" if abs(recall - baseline) <= 0.01 else "MISSED"
            verdicts.append(f"- {label}: completed all {len(history)} rounds, Recall@20 "
                            f"{recall:.4f} vs {baseline:.4f} without faults (difference "
                            f"{recall - baseline:+.4f}, target within 0.01): **{verdict}**.")
    formats = ("", ".0f", ".0f", ".1f", ".1f", ".1f", ".0f", ".0f", ".4f", ".4f", "+.4f")
    markdown = pd.DataFrame(rows).to_markdown(index=False, floatfmt=formats) if rows else "(none)"
    return markdown, "\n".join(verdicts) or "(no runs yet)"


def main() -> None:
    markdown, verdicts = table()
    replace_block(HERE / "README.md", "faults", markdown)
    replace_block(HERE / "README.md", "targets", verdicts)


if __name__ == "__main__":
    main()
