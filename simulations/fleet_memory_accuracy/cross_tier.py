"""Each tier's devices ranked with every tier's item slice: does a denser slice help the same
users? Reads a fleet results directory's ``model.npz`` (global item table, tier masks, user
rows) and ``clients.csv``; writes ``cross_tier.json`` there: for each (device tier, slice
tier) the mean Recall@20 and NDCG@20 over the devices of that tier with test items.

    python simulations/fleet_memory_accuracy/cross_tier.py RUN_DIR

The diagonal is what the fleet reports. Off the diagonal a device's user row, trained against
its own slice, scores another tier's slice; a denser slice that ranks the same users worse
points at the values only the denser tiers hold, a better one at the users (tiers hold
different users, so tier means differ even for one model; dense FedAvg shows by how much).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from fedsparse.config import load_config
from fedsparse.data import load_dataset
from fedsparse.federated.fleet import fleet_users
from fedsparse.metrics.ranking import evaluate_embeddings


def cross_tier(run: Path) -> dict[str, dict[str, dict[str, float]]]:
    """device tier -> slice tier -> {recall@20, ndcg@20}."""
    cfg = load_config(run / "config.toml", fleet=True)
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    users = fleet_users(data, cfg.fl.max_devices, cfg.seed)
    clients = pd.read_csv(run / "clients.csv")
    tiers = list(dict.fromkeys(clients.sort_values("budget_bytes")["tier"]))
    result: dict[str, dict[str, dict[str, float]]] = {}
    with np.load(run / "model.npz") as model:
        item, user = model["item"], model["user"]
        for device_tier in tiers:
            devices = clients[(clients["tier"] == device_tier)
                              & (clients["n_test"] > 0)]["device_id"].to_numpy()
            ids = users[devices]
            result[device_tier] = {}
            for slice_tier in tiers:
                items = item * model[f"item_mask_{slice_tier}"]                # (n_items, d)
                metrics = evaluate_embeddings(user[ids], items, data.train[ids],
                                              data.test[ids], ks=(cfg.train.topk,))
                result[device_tier][slice_tier] = {key: float(value)
                                                   for key, value in metrics.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args()
    (args.run / "cross_tier.json").write_text(json.dumps(cross_tier(args.run), indent=2) + "\n")


if __name__ == "__main__":
    main()
