"""Run one grid of the equal-bytes comparison: every method at the same byte budgets.

The budgets are the training bytes (values, index and Adam state, measured as
``fedsparse.sparse.table_bytes`` measures) that SparseRec's two tables hold at the densities
``DENSITIES`` (0.5, 0.2, 0.1, 0.05). Every method gets each budget as
``sparse.budget_bytes`` and solves its own shape against its own measured memory: a density
(the sparse methods; ``magnitude`` and ``pep`` for their pruned model), a dimension
(``dense``), block dimensions (``mixed_dim``). ``dense_full`` is the unconstrained dense model,
once per seed. Every run scores every value precision after training (``metrics.json``'s
``precisions``), which is what the inference-bytes comparison reads.

Tuning (``--split val``, seed 0, at the density-0.1 budget): each method tries the same number
of settings, four of its own knob (``TUNING``), then two more on top of its best
(``SECOND_STEP``); the test runs (``--split test``) take each method's best validation
Recall@20. Runs whose ``metrics.json`` exists are skipped, so an interrupted sweep resumes;
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


def _val_recall(grid: str, method: str, overrides: list[str]) -> float | None:
    """Validation Recall@20 of one tuning run, None before it ran."""
    metrics = (HERE / "results" / grid / "val" / method / setting_name(overrides)
               / f"d{TUNING_DENSITY:g}_s0" / "metrics.json")
    return json.loads(metrics.read_text())["recall@20"] if metrics.exists() else None


def _best(grid: str, method: str, settings: list[list[str]]) -> list[str] | None:
    """The best of ``settings`` on validation, None until all of them ran."""
    scores = [_val_recall(grid, method, overrides) for overrides in settings]
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


def chosen_settings(grid: str) -> dict[str, list[str]]:
    """Each method's tuned setting (:func:`tuned_setting`), for the test runs."""
    chosen = {}
    for method in TUNING:
        best = tuned_setting(grid, method)
        if best is None:
            raise SystemExit(f"{grid}: {method} is not tuned yet; run --split val first")
        chosen[method] = best
    return chosen


def planned_runs(grid: str, split: str, seeds: list[int],
                 methods: list[str]) -> list[tuple[Path, list[str]]]:
    """(results directory, overrides) of every run of ``split``."""
    cfg = base_config(grid)
    data = load_dataset(cfg.data.name)
    runs = []
    settings = ({m: tried_settings(grid, m) for m in TUNING} if split == "val" else
                {m: [s] for m, s in chosen_settings(grid).items()})
    densities = [TUNING_DENSITY] if split == "val" else list(DENSITIES)
    for seed in ([0] if split == "val" else seeds):
        for method in methods:
            base = [f"seed={seed}", f"data.split={split}"]
            if method == "dense_full":
                runs.append((HERE / "results" / grid / split / method / "base" / f"d1_s{seed}",
                             [*base, "sparse.method=dense"]))
                continue
            for overrides in settings[method]:
                for density in densities:
                    budget = sparserec_budget(data.n_users, data.n_items, cfg.model.dim,
                                              density)
                    out = (HERE / "results" / grid / split / method / setting_name(overrides)
                           / f"d{density:g}_s{seed}")
                    runs.append((out, [*base, f"sparse.method={method}",
                                       f"sparse.budget_bytes={budget}", *overrides]))
    return runs


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
    passes = 2 if args.split == "val" else 1   # the second tuning step needs the first's results
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
