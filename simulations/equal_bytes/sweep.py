"""Run one grid of the equal-bytes comparison: every method at the same byte budgets.

The budgets are the training bytes (values, index and Adam state, measured as
``fedsparse.sparse.table_bytes`` measures) that SparseRec's two tables hold at the densities
``DENSITIES`` (0.5, 0.2, 0.1, 0.05). Every method gets each budget as
``sparse.budget_bytes`` and solves its own shape against its own measured memory: a density
(the sparse methods; ``magnitude`` and ``pep`` for their pruned model), a dimension
(``dense``), block dimensions (``mixed_dim``). ``dense_full`` is the unconstrained dense model,
once per seed. Every run scores every value precision after training (``metrics.json``'s
``precisions``), which is what the inference-bytes comparison reads.

Tuning (``--split val``, seed 0) has three steps, the same number of runs for every method: at
the density-0.1 budget, four settings of the method's own knob (``TUNING``), then two more on
top of the best (``SECOND_STEP``); then, at every budget, the best of those (its tuned setting)
with its L2 and the L2's two neighbours on a 1-3-10 ladder (:func:`l2_ladder`), because the
best L2 moves with the model's size. The test runs (``--split test``) take, at each budget,
the best of those three on validation Recall@20 at that budget. Runs whose ``metrics.json``
exists are skipped, so an interrupted sweep resumes;
``model.npz`` is deleted after each run (a test checks that stored models re-evaluate to their
metrics). ``--jobs N`` runs N at a time (on 2 cores: 2, with ``--set train.threads=1``).

Results: ``results/<grid>/<split>/<method>/<setting>/d<density>_s<seed>/``.

Usage: python simulations/equal_bytes/sweep.py GRID --split val|test [--seeds 0 1]
       [--methods ...] [--set key=value ...] [--jobs N]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedsparse.config import ExperimentConfig, load_config
from fedsparse.data import load_dataset
from fedsparse.sparse import mask_nnz, table_bytes

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GRIDS = {"gowalla_mf": ROOT / "configs" / "centralized" / "gowalla_mf.toml",
         "lastfm_mf": ROOT / "configs" / "centralized" / "lastfm_mf.toml",
         "lastfm_lightgcn": ROOT / "configs" / "centralized" / "lastfm_lightgcn.toml"}
DENSITIES = (0.5, 0.2, 0.1, 0.05)
TUNING_DENSITY = 0.1
#: Each method's tuning: four settings of its own knob (the base config's value among them
#: where it has one; the fourth extends the first three past the best of them, which was at an
#: end of the range on LastFM MF for every method), so that every method gets the same budget.
#: L2 is given as factors of the grid's base L2 (0.01 for MF, 1e-4 for LightGCN).
TUNING: dict[str, list[tuple[str, float]]] = {
    "sparserec": [("sparse.initial_fraction", v) for v in (0.1, 0.3, 0.5, 0.05)],
    "rigl": [("sparse.initial_fraction", v) for v in (0.1, 0.3, 0.5, 0.7)],
    "set": [("sparse.initial_fraction", v) for v in (0.1, 0.3, 0.5, 0.7)],
    "static": [("train.l2", f) for f in (0.1, 1.0, 3.0, 0.01)],
    "magnitude": [("sparse.dense_fraction", v) for v in (0.3, 0.5, 0.7, 0.85)],
    "pep": [("sparse.pep_threshold_init", v) for v in (-8.0, -5.0, -3.0, -12.0)],
    "mixed_dim": [("sparse.mixed_temperature", v) for v in (0.1, 0.3, 0.5, 0.7)],
    "dense": [("train.l2", f) for f in (0.1, 1.0, 3.0, 10.0)],
}
#: The second tuning step, on top of each method's best first-step setting: L2 at 3 and 10
#: times the base, which the first step showed matters most at small budgets (dense and
#: static, whose knob L2 is, try the learning rate at 0.4 and 2 times the base instead), two
#: more settings for every method.
SECOND_STEP: dict[str, list[tuple[str, float]]] = {
    method: [("train.l2", 3.0), ("train.l2", 10.0)]
    for method in TUNING if method not in ("dense", "static")}
SECOND_STEP["dense"] = SECOND_STEP["static"] = [("train.lr", 0.4), ("train.lr", 2.0)]
#: Knobs given as factors of the grid's base config value.
RELATIVE = ("train.l2", "train.lr")
METHODS = (*TUNING, "dense_full")

logger = logging.getLogger("equal_bytes")


def sparserec_budget(n_users: int, n_items: int, dim: int, density: float) -> int:
    """Training bytes of SparseRec's two tables at ``density`` (values, index, Adam state)."""
    return (table_bytes(n_users, dim, mask_nnz(n_users, dim, density))
            + table_bytes(n_items, dim, mask_nnz(n_items, dim, density)))


def setting_name(overrides: list[str]) -> str:
    """A setting's directory name (``+``-joined overrides without their section)."""
    return "+".join(o.split(".", 1)[1] for o in overrides) or "base"


def run_dir(grid: str, split: str, method: str, overrides: list[str], density: float,
            seed: int) -> Path:
    """Results directory of one run."""
    return (HERE / "results" / grid / split / method / setting_name(overrides)
            / f"d{density:g}_s{seed}")


def _val_recall(grid: str, method: str, overrides: list[str], density: float) -> float | None:
    """Validation Recall@20 of one tuning run, None before it ran."""
    metrics = run_dir(grid, "val", method, overrides, density, 0) / "metrics.json"
    return json.loads(metrics.read_text())["recall@20"] if metrics.exists() else None


def _best(grid: str, method: str, settings: list[list[str]],
          density: float = TUNING_DENSITY) -> list[str] | None:
    """The best of ``settings`` on validation at ``density``'s budget, None until all of them
    ran."""
    scores = [_val_recall(grid, method, overrides, density) for overrides in settings]
    if None in scores:
        return None
    return settings[max(range(len(settings)), key=scores.__getitem__)]


def override(grid: str, knob: str, value: float) -> str:
    """The ``--set`` override of one tuning knob; a :data:`RELATIVE` knob's ``value`` is a
    factor of the grid's base config value (LastFM MF's L2 0.01 at 3.0: ``train.l2=0.03``)."""
    if knob not in RELATIVE:
        return f"{knob}={value}"
    base = getattr(base_config(grid).train, knob.split(".")[1])
    return f"{knob}={value * base:g}"                 # 0.03, not 0.030000000000000002


@functools.cache
def base_config(grid: str) -> ExperimentConfig:
    """The grid's config, as ``configs/centralized/<grid>.toml`` gives it (read once)."""
    return load_config(GRIDS[grid], [])


def tried_settings(grid: str, method: str) -> list[list[str]]:
    """A method's tuning settings: the first step, then (once it ran) the second step on top
    of the first step's best."""
    first_step = [[override(grid, *knob)] for knob in TUNING[method]]
    first = _best(grid, method, first_step)
    second = ([] if first is None else
              [[*first, override(grid, *knob)] for knob in SECOND_STEP[method]])
    return [*first_step, *second]


def tuned_setting(grid: str, method: str) -> list[str] | None:
    """A method's tuned setting: the best validation Recall@20 among all it tried, None until
    both tuning steps ran."""
    settings = tried_settings(grid, method)
    return _best(grid, method, settings) if len(settings) > len(TUNING[method]) else None


def l2_ladder(l2: float) -> tuple[float, float, float]:
    """``l2`` between its neighbours on the 1-3-10 ladder (0.1: 0.03, 0.1, 0.3; 0.03: 0.01,
    0.03, 0.1).

    Raises
    ------
    ValueError
        ``l2`` is not on the ladder (one significant digit, a 1 or a 3).
    """
    rounded = f"{l2:.0e}"                                  # 0.03: "3e-02"
    digit = rounded[0]
    if digit not in ("1", "3") or not math.isclose(float(rounded), l2):
        raise ValueError(f"L2 {l2:g} is not on the 1-3-10 ladder (1 or 3 times a power of 10)")
    lower, upper = (0.3, 3.0) if digit == "1" else (1 / 3, 10 / 3)
    return float(f"{l2 * lower:.0e}"), l2, float(f"{l2 * upper:.0e}")


def setting_l2(grid: str, overrides: list[str]) -> float:
    """The L2 a setting trains with: its ``train.l2`` override, else the grid's base L2."""
    given = [float(o.split("=", 1)[1]) for o in overrides if o.startswith("train.l2=")]
    return given[-1] if given else base_config(grid).train.l2


def with_l2(grid: str, overrides: list[str], l2: float) -> list[str]:
    """``overrides`` with L2 ``l2``: the ``train.l2`` override replaced in place (appended when
    there is none), dropped when ``l2`` is the grid's base L2, so that a setting tuning already
    ran keeps its name (and its results)."""
    others = [o for o in overrides if not o.startswith("train.l2=")]
    if math.isclose(l2, base_config(grid).train.l2):
        return others
    l2_override = f"train.l2={l2:g}"
    return ([l2_override if o.startswith("train.l2=") else o for o in overrides]
            if len(others) < len(overrides) else [*overrides, l2_override])


def budget_settings(grid: str, method: str) -> list[list[str]] | None:
    """The third tuning step, run at every budget: a method's tuned setting with each L2 of
    :func:`l2_ladder` around its own, None until the first two steps ran."""
    tuned = tuned_setting(grid, method)
    if tuned is None:
        return None
    return [with_l2(grid, tuned, l2) for l2 in l2_ladder(setting_l2(grid, tuned))]


def budget_choice(grid: str, method: str, density: float) -> list[str] | None:
    """The setting a method's test runs use at ``density``'s budget: the best of
    :func:`budget_settings` on validation there, None until all three ran."""
    settings = budget_settings(grid, method)
    return None if settings is None else _best(grid, method, settings, density)


def chosen_settings(grid: str) -> dict[tuple[str, float], list[str]]:
    """Each method's setting at each budget density (:func:`budget_choice`), for the test
    runs."""
    chosen = {}
    for method in TUNING:
        for density in DENSITIES:
            best = budget_choice(grid, method, density)
            if best is None:
                raise SystemExit(f"{grid}: {method} is not tuned at density {density:g} yet; "
                                 f"run --split val first")
            chosen[method, density] = best
    return chosen


def planned_runs(grid: str, split: str, seeds: list[int],
                 methods: list[str]) -> list[tuple[Path, list[str]]]:
    """(results directory, overrides) of every run of ``split``."""
    cfg = base_config(grid)
    data = load_dataset(cfg.data.name)
    settings: list[tuple[str, list[str], float]] = []     # (method, overrides, density)
    if split == "val":
        for method in methods:
            settings += [(method, s, TUNING_DENSITY) for s in tried_settings(grid, method)]
            settings += [(method, s, density) for s in budget_settings(grid, method) or []
                         for density in DENSITIES]
    else:
        chosen = chosen_settings(grid)
        settings = [(method, chosen[method, density], density)
                    for method in methods if method != "dense_full" for density in DENSITIES]
    runs: dict[Path, list[str]] = {}                      # a setting two steps share runs once
    for seed in ([0] if split == "val" else seeds):
        base = [f"seed={seed}", f"data.split={split}"]
        if "dense_full" in methods:
            runs[run_dir(grid, split, "dense_full", [], 1, seed)] = [*base, "sparse.method=dense"]
        for method, overrides, density in settings:
            budget = sparserec_budget(data.n_users, data.n_items, cfg.model.dim, density)
            runs.setdefault(run_dir(grid, split, method, overrides, density, seed),
                            [*base, f"sparse.method={method}", f"sparse.budget_bytes={budget}",
                             *overrides])
    return list(runs.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", choices=sorted(GRIDS))
    parser.add_argument("--split", choices=["val", "test"], required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run (repeatable)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (give each one torch thread: train.threads=1)")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    methods = [m for m in args.methods if not (args.split == "val" and m == "dense_full")]
    start = time.perf_counter()
    passes = 3 if args.split == "val" else 1   # each tuning step needs the one before
    for _ in range(passes):
        code = run_all(args, planned_runs(args.grid, args.split, args.seeds, methods), start)
        if code:
            return code
    return 0


def run_all(args: argparse.Namespace, runs: list[tuple[Path, list[str]]], start: float) -> int:
    """Run every planned run not done yet, ``args.jobs`` at a time; a failure stops the
    runs not started yet and returns its exit code."""
    pending = [(index, out, overrides) for index, (out, overrides) in enumerate(runs, start=1)
               if not (out / "metrics.json").exists()]
    failed = threading.Event()

    def run_one(index: int, out: Path, overrides: list[str]) -> int:
        if failed.is_set():
            return 0
        name = out.relative_to(HERE / "results")
        logger.info("[%d/%d] %s (%.0f s so far)", index, len(runs), name,
                    time.perf_counter() - start)
        command = [sys.executable, "-m", "fedsparse.cli", "train", str(GRIDS[args.grid]),
                   "--out", str(out), "--quiet"]
        for override in [*overrides, f"name={args.grid}", *args.set]:
            command += ["--set", override]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if done.returncode != 0:
            failed.set()
            logger.error("%s failed:\n%s", name, done.stderr[-2000:])
            return done.returncode
        (out / "model.npz").unlink()
        return 0

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = list(pool.map(lambda run: run_one(*run), pending))
    logger.info("%s %s: %d runs, %.0f s so far", args.grid, args.split, len(runs),
                time.perf_counter() - start)
    return next((code for code in codes if code), 0)

if __name__ == "__main__":
    sys.exit(main())
