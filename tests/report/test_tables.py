import json

import pytest

from fedsparse.report.tables import collect_metrics, replace_block


def test_collect_metrics_and_replace_block(tmp_path):
    for name, recall in (("b", 0.2), ("a", 0.1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"recall@20": recall}))
    frame = collect_metrics(tmp_path)
    assert frame.index.tolist() == ["a", "b"] and frame["recall@20"].tolist() == [0.1, 0.2]

    doc = tmp_path / "README.md"
    doc.write_text("x\n<!-- BEGIN t -->\nold\n<!-- END t -->\ny\n")
    replace_block(doc, "t", "| new |")
    assert doc.read_text() == "x\n<!-- BEGIN t -->\n| new |\n<!-- END t -->\ny\n"
    with pytest.raises(KeyError):
        replace_block(doc, "missing", "z")


def test_collect_metrics_needs_runs(tmp_path):
    with pytest.raises(FileNotFoundError):
        collect_metrics(tmp_path)
