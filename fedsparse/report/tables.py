"""Result tables generated from results directories, written into experiment READMEs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd


def collect_metrics(results_root: Path) -> pd.DataFrame:
    """One row per results directory under ``results_root`` (its ``metrics.json``), by name."""
    rows = []
    for metrics_file in sorted(results_root.glob("*/metrics.json")):
        rows.append({"run": metrics_file.parent.name, **json.loads(metrics_file.read_text())})
    if not rows:
        raise FileNotFoundError(f"no */metrics.json under {results_root}")
    return pd.DataFrame(rows).set_index("run")


def replace_block(document: Path, block: str, markdown: str) -> None:
    """Replace the text between ``<!-- BEGIN block -->`` and ``<!-- END block -->``.

    Raises
    ------
    KeyError
        The document has no such block.
    """
    text = document.read_text()
    pattern = re.compile(rf"(<!-- BEGIN {re.escape(block)} -->\n).*?(<!-- END {re.escape(block)} -->)",
                         re.DOTALL)
    if not pattern.search(text):
        raise KeyError(f"{document}: no block {block!r}")
    document.write_text(pattern.sub(lambda m: m.group(1) + markdown.rstrip() + "\n" + m.group(2), text))
