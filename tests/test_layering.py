"""Only fedsparse/fl imports flwr; nothing imports ray directly (DESIGN section 2)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fedsparse"


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_flwr_only_in_fl_and_ray_nowhere():
    files = sorted(PACKAGE.rglob("*.py"))
    assert files
    for path in files:
        roots = imported_roots(path)
        assert "ray" not in roots, f"{path} imports ray"
        if "flwr" in roots:
            assert path.relative_to(PACKAGE).parts[0] == "fl", f"{path} imports flwr outside fl/"


def test_the_federated_core_is_engine_neutral():
    files = sorted((PACKAGE / "federated").glob("*.py"))
    assert len(files) > 3
    for path in files:
        roots = imported_roots(path)
        assert not roots & {"flwr", "ray"}, f"{path} imports an engine"
        modules = [node.module for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.ImportFrom) and node.module]
        assert not [m for m in modules if m.split(".")[:2] == ["fedsparse", "fl"]], \
            f"{path} imports fedsparse.fl"
