"""Centralized references for each tier of a fleet, at the tier's memory: SparseRec MF at the
tier's item density (``configs/sparse/<dataset>_mf_sparserec.toml``, both tables at that
density), dense MF at the tier's equal-bytes dimension (the ``nested_dims`` width d_t: the most
leading dimensions whose values and item-step state (the tier's, ``fl.item_optimizer``) fit
the tier's budget with the same reserve; ``configs/centralized/<dataset>_mf.toml``) and full
dense MF.
Writes ``results/references/<dataset>_<split>[_<tag>]/<name>/`` (results directories without
``model.npz``); ``--set`` changes the fleet whose tiers are matched (its negatives change the
growth buffer each budget holds, its item optimizer the state each entry costs, so the tiers'
densities), ``--tag`` names such a variant.

    python simulations/fleet_memory_accuracy/references.py --dataset lastfm --split test

Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from fedsparse.config import load_config
from fedsparse.data import load_dataset
from fedsparse.federated.fleet import plan_fleet
from fedsparse.report.results import write_run
from fedsparse.train import train_centralized

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: Each dataset's final fleet config (``configs/fleets/``): the tiers the references match.
FLEETS = {"lastfm": "lastfm.toml", "gowalla": "gowalla_full.toml"}


def results_dir(dataset: str, split: str, tag: str = "", kind: str = "references") -> Path:
    """Where the runs of ``kind`` (this script's references, ``tier_mix.py``'s runs) on
    ``dataset`` and ``split`` (the fleet variant ``--tag tag`` if given) are written."""
    return HERE / "results" / kind / (f"{dataset}_{split}" + (f"_{tag}" if tag else ""))


def add_fleet_variant_arguments(parser: argparse.ArgumentParser) -> None:
    """``--set`` (overrides of the fleet config whose tiers are matched) and ``--tag``."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the fleet config whose tiers are matched")
    parser.add_argument("--tag", default="", help="suffix of the results directory's name")


def check_fleet_variant(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse ``--set`` without ``--tag``: untagged results always match the fleet config."""
    if args.set and not args.tag:
        parser.error("--set changes the tiers matched: name the variant with --tag")


def reference_runs(dataset: str, split: str, seed: int,
                   fleet_overrides: tuple[str, ...] = ()) -> dict[str, tuple[Path, list[str]]]:
    """Name -> (config, overrides) of every centralized reference for the tiers of the fleet
    (its config with ``fleet_overrides``)."""
    fleet = ROOT / "configs" / "fleets" / FLEETS[dataset]
    chosen = [*fleet_overrides, f"data.split={split}", f"seed={seed}"]
    cfg = load_config(fleet, chosen, fleet=True)
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    sparse_plan = plan_fleet(cfg, data)
    nested_plan = plan_fleet(load_config(fleet, [*chosen, "sparse.method=nested_dims"],
                                         fleet=True), data)
    common = [f"data.split={split}", f"seed={seed}", f"data.max_items={cfg.data.max_items}"]
    sparse_config = ROOT / "configs" / "sparse" / f"{dataset}_mf_sparserec.toml"
    dense_config = ROOT / "configs" / "centralized" / f"{dataset}_mf.toml"
    runs = {"dense_mf": (dense_config, common)}
    for sparse_tier, nested_tier in zip(sparse_plan.tiers, nested_plan.tiers):
        runs[f"sparserec_{sparse_tier.name}"] = (
            sparse_config, [*common, f"sparse.density={sparse_tier.density}"])
        runs[f"dense_mf_{nested_tier.name}"] = (
            dense_config, [*common, f"model.dim={nested_tier.prefix_width(cfg.model.dim)}"])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="lastfm", choices=sorted(FLEETS))
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per run (0: torch's default)")
    add_fleet_variant_arguments(parser)
    args = parser.parse_args()
    check_fleet_variant(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for seed in args.seeds:
        for name, (config, overrides) in reference_runs(args.dataset, args.split, seed,
                                                        tuple(args.set)).items():
            out = results_dir(args.dataset, args.split, args.tag) / f"{name}_seed{seed}"
            if (out / "metrics.json").exists():
                continue
            cfg = load_config(config, [*overrides, f"train.threads={args.threads}"])
            data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
            result = train_centralized(cfg, data, progress=False)
            if out.exists():
                shutil.rmtree(out)
            write_run(out, cfg, data, result)
            (out / "model.npz").unlink()


if __name__ == "__main__":
    main()
