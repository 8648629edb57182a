"""The curious-server benchmark: the LastFM fleet (``configs/fleets/lastfm.toml``) with plain
training replies, plain with 1 and 4 pseudo-items per positive, and secure replies, seeds 0
and 1, each run watched by
:class:`curious_server.CuriousServer`; writes ``results/<setting>_seed<seed>/`` (the run's
results directory without ``model.npz`` and checkpoints, and ``attack.json``).

    python simulations/privacy/run.py [--settings plain pseudo_1 pseudo_4 secure_sum] [--seeds 0 1]

Run it alone on the machine (a simulation uses every core).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from curious_server import CuriousServer  # noqa: E402

from fedsparse.config import load_config  # noqa: E402
from fedsparse.data import load_dataset  # noqa: E402
from fedsparse.federated.fleet import plan_fleet  # noqa: E402
from fedsparse.fl.simulation import simulate  # noqa: E402

CONFIG = HERE.parents[1] / "configs" / "fleets" / "lastfm.toml"
SETTINGS = {"plain": ["fl.privacy.training=plain"],
            "pseudo_1": ["fl.privacy.training=plain", "fl.privacy.pseudo_items=1"],
            "pseudo_4": ["fl.privacy.training=plain", "fl.privacy.pseudo_items=4"],
            "secure_sum": ["fl.privacy.training=secure_sum"]}


def run(setting: str, seed: int) -> Path:
    """One watched run; returns its results directory."""
    cfg = load_config(CONFIG, [f"seed={seed}", *SETTINGS[setting]], fleet=True)
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    curious = CuriousServer(data, plan_fleet(cfg, data).users, cfg.model.dim,
                            cfg.fl.privacy.fraction_bits, cfg.fl.negatives,
                            cfg.fl.privacy.pseudo_items)
    out = HERE / "results" / f"{setting}_seed{seed}"
    if out.exists():
        shutil.rmtree(out)
    simulate(cfg, out, observer=curious.observe)
    (out / "attack.json").write_text(json.dumps(
        {"attacks": curious.summary(), "records_seen": sorted(curious.message_kinds)},
        indent=2) + "\n")
    (out / "model.npz").unlink()
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for setting in args.settings:
        for seed in args.seeds:
            logging.info("%s, seed %d -> %s", setting, seed, run(setting, seed))


if __name__ == "__main__":
    main()
