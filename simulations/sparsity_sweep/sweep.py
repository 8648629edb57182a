"""Run one grid of the sparsity sweep: every method at every density, for several seeds.

Each run is ``fedsparse train CONFIG --set sparse.method=M --set sparse.density=D --set seed=S``
into ``results/<grid>/<method>_d<density>_s<seed>/``; the dense baseline runs once per seed
(``dense_d1_s<seed>``). On an MF grid ``sparserec_no_sampling`` is not run: MF's gradient
touches only the batch's rows, so it trains exactly as ``sparserec`` does (a test checks this).
Runs whose ``metrics.json`` exists are skipped, so an interrupted sweep
resumes where it stopped. Extra ``--set`` overrides (e.g. a shorter epoch budget) apply to every
run and are recorded in each run's ``config.toml``.

Usage: python simulations/sparsity_sweep/sweep.py GRID [--seeds 0 1] [--densities ...]
       [--methods ...] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from fedsparse.config import SPARSE_METHODS, load_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GRIDS = {"gowalla_mf": ROOT / "configs" / "centralized" / "gowalla_mf.toml",
         "lastfm_lightgcn": ROOT / "configs" / "centralized" / "lastfm_lightgcn.toml"}
DENSITIES = (0.5, 0.2, 0.1, 0.05)

logger = logging.getLogger("sweep")


def planned_runs(seeds: list[int], densities: list[float],
                 methods: list[str]) -> list[tuple[str, list[str]]]:
    """(run name, config overrides) for every method x density x seed, dense once per seed."""
    runs = []
    for seed in seeds:
        for method in methods:
            for density in ([1.0] if method == "dense" else densities):
                name = f"{method}_d{density:g}_s{seed}"
                overrides = [f"seed={seed}", f"sparse.method={method}"]
                if method != "dense":
                    overrides.append(f"sparse.density={density}")
                runs.append((name, overrides))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", choices=sorted(GRIDS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES))
    parser.add_argument("--methods", nargs="+", choices=SPARSE_METHODS, default=list(SPARSE_METHODS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    methods = args.methods
    if load_config(GRIDS[args.grid], []).model.name == "mf" and "sparserec_no_sampling" in methods:
        logger.info("sparserec_no_sampling not run: on MF it trains exactly as sparserec")
        methods = [method for method in methods if method != "sparserec_no_sampling"]
    runs = planned_runs(args.seeds, args.densities, methods)
    results = HERE / "results" / args.grid
    start = time.perf_counter()
    for index, (name, overrides) in enumerate(runs, start=1):
        out = results / name
        if (out / "metrics.json").exists():
            logger.info("[%d/%d] %s: done already", index, len(runs), name)
            continue
        logger.info("[%d/%d] %s (%.0f s so far)", index, len(runs), name,
                    time.perf_counter() - start)
        command = [sys.executable, "-m", "fedsparse.cli", "train", str(GRIDS[args.grid]),
                   "--out", str(out), "--quiet"]
        for override in [*overrides, f"name={args.grid}_{name}", *args.set]:
            command += ["--set", override]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            logger.error("%s failed:\n%s", name, done.stderr[-2000:])
            return done.returncode
    logger.info("grid %s complete: %d runs in %.0f s", args.grid, len(runs),
                time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
