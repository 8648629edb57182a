"""Write the README's tables from results/<run>/metrics.json (never typed by hand)."""

from __future__ import annotations

from pathlib import Path

from fedsparse.report.tables import collect_metrics, replace_block

HERE = Path(__file__).resolve().parent
COLUMNS = {"dataset": "dataset", "model": "model", "epochs": "epochs", "recall@20": "Recall@20",
           "ndcg@20": "NDCG@20", "seconds_per_epoch": "s/epoch", "peak_memory_mb": "peak MiB"}
FORMATS = ("", "", ".0f", ".4f", ".4f", ".2f", ".0f")


def main() -> None:
    runs = collect_metrics(HERE / "results")
    table = runs[list(COLUMNS)].rename(columns=COLUMNS)
    for run, row in table.iterrows():
        markdown = row.to_frame().T.to_markdown(index=False, floatfmt=FORMATS)
        replace_block(HERE / "README.md", run, markdown)


if __name__ == "__main__":
    main()
