"""The fleet's final evaluation again, each device first refitting its user row to its own
training interactions against its tier's slice (``fl.refit_steps``, ``fl.refit_lr``): what a
device gains from fitting its private row to the final global slice before it ranks.

    python simulations/fleet_memory_accuracy/refit.py RUN_DIR --setting 10:0.03 \\
        [--setting 5:0.003 ...] [--out DIR]

Reads a fleet results directory's ``model.npz`` (global item table, tier masks, the devices'
rows as trained) and ``config.toml``; writes ``refit.json`` to ``DIR`` (default ``RUN_DIR``):
per setting (steps 0 is the run's own evaluation) the fleet and per-tier Recall@K and NDCG@K
over the devices with test items, and the seconds every device's refit and ranking took on one
thread. It runs the devices' own evaluation
(:func:`~fedsparse.federated.devices.evaluate_devices`, negatives from each device's ``refit``
stream of the last round), so a setting's figures are what a run with those ``fl.refit_*``
keys reports at its end.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedsparse.config import load_config
from fedsparse.data import load_dataset
from fedsparse.federated.cohort import UserRefit
from fedsparse.federated.devices import CohortState, evaluate_devices
from fedsparse.federated.fleet import fleet_users
from fedsparse.sparse import SparseEmbeddingTable

logger = logging.getLogger("refit")


def refit_evaluation(run: Path, settings: list[tuple[int, float]]) -> list[dict]:
    """Per (steps, lr): the fleet and per-tier means of the devices' evaluation."""
    cfg = load_config(run / "config.toml", fleet=True)
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    users = fleet_users(data, cfg.fl.max_devices, cfg.seed)
    clients = pd.read_csv(run / "clients.csv")
    tiers = list(dict.fromkeys(clients.sort_values("budget_bytes")["tier"]))
    tier_index = clients["tier"].map({name: index for index, name in enumerate(tiers)})
    pairs = list(zip(clients["device_id"].tolist(), tier_index.tolist()))
    with np.load(run / "model.npz") as model:
        rows = model["user"][users]                                               # (n, d)
        tables = {index: SparseEmbeddingTable.from_mask(model[f"item_mask_{name}"],
                                                        model["item"])
                  for index, name in enumerate(tiers)}
    state = CohortState(devices=np.arange(len(users)), values=rows,
                        exp_avg=np.zeros_like(rows), exp_avg_sq=np.zeros_like(rows),
                        step=np.zeros(len(users), np.int64))
    k = cfg.train.topk
    results = []
    for steps, lr in settings:
        refit = (UserRefit(steps=steps, lr=lr, l2=cfg.fl.l2, negatives=cfg.fl.negatives)
                 if steps > 0 else None)
        start = time.perf_counter()
        metrics = pd.DataFrame.from_dict(
            evaluate_devices(data, users, state, pairs, tables, k, refit=refit, seed=cfg.seed,
                             server_round=cfg.fl.rounds), orient="index")
        seconds = time.perf_counter() - start
        metrics["tier"] = [tiers[index] for _, index in pairs]
        tested = metrics[metrics["n-test"] > 0]
        keys = [f"recall@{k}", f"ndcg@{k}"]
        result = {"steps": steps, "lr": lr if steps else 0.0, "seconds": round(seconds, 1),
                  **{key: float(tested[key].mean()) for key in keys},
                  "tiers": {name: {key: float(group[key].mean()) for key in keys}
                            for name, group in tested.groupby("tier", sort=False)}}
        logger.info("steps %d lr %g: recall@%d %.4f (%s)", steps, lr, k, result[keys[0]],
                    ", ".join(f"{name} {values[keys[0]]:.4f}"
                              for name, values in result["tiers"].items()))
        results.append(result)
    return results


def refit_setting(text: str) -> tuple[int, float]:
    """``STEPS:LR`` (``10:0.03``) as (steps, lr): a positive count and a positive rate."""
    steps, _, lr = text.partition(":")
    try:
        setting = int(steps), float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"refit setting {text!r} is not STEPS:LR") from None
    if setting[0] < 1 or not setting[1] > 0:
        raise argparse.ArgumentTypeError(f"refit setting {text!r}: steps and lr must be positive")
    return setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--setting", type=refit_setting, action="append", required=True,
                        metavar="STEPS:LR", help="a refit setting to evaluate (repeatable)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where refit.json goes (default: RUN_DIR)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    settings = [(0, 0.0), *args.setting]
    out = args.out or args.run
    out.mkdir(parents=True, exist_ok=True)
    (out / "refit.json").write_text(
        json.dumps(refit_evaluation(args.run, settings), indent=2) + "\n")


if __name__ == "__main__":
    main()
