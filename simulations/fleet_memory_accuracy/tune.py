"""Tuning the fleet recipe on validation data: one run of the LastFM or full Gowalla fleet as it
was before tuning (``tuning_base_<dataset>.toml``) per call, with ``data.split = "val"``
(Gowalla's ``model_val.txt``; for LastFM a fixed seeded 10% of each user's training
interactions; the test split is never read) and the given overrides,
written to
``results/tuning/<dataset>_<method>/<setting>/`` (the run's results directory without
``model.npz``, checkpoints and plot, with ``cross_tier.json`` from ``cross_tier.py``, and
with ``--refit-steps``/``--refit-lr`` ``refit.json`` from ``refit.py``: the final evaluation
again with each device first refitting its user row, per (steps, lr)).
``report.py`` tables every run there: each method's tried settings and their validation
Recall@20 per evaluated round.

    python simulations/fleet_memory_accuracy/tune.py --method dense --rounds 40 \\
        --set fl.l2=0.01 --set fl.server_lr=5

Tuning runs use plain training replies (``fl.privacy.training = "plain"``): secure summation
aggregates exactly the same sums (``tests/federated/test_secure_training.py``) at 1.4 to 2.2
times the seconds per round (README, "what a round costs"). Run it alone on the machine (a
simulation uses every core).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from pathlib import Path

from fedsparse.config import load_config
from fedsparse.federated.methods import FLEET_METHODS
from fedsparse.fl.simulation import simulate

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cross_tier import cross_tier  # noqa: E402
from refit import refit_evaluation  # noqa: E402

TUNING = HERE / "results" / "tuning"


def setting_name(overrides: list[str]) -> str:
    """A run's directory name: its overrides without the ``fl.`` prefix, joined by ``+`` (a
    comma in a path breaks the file list of the Flower app bundle that ``flwr run`` builds)."""
    return "+".join(o.removeprefix("fl.") for o in overrides) or "default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="lastfm", choices=["lastfm", "gowalla"])
    parser.add_argument("--method", required=True, choices=list(FLEET_METHODS))
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override (repeatable)")
    parser.add_argument("--refit-steps", type=int, nargs="+", default=[],
                        help="refit.py's steps to try on the run's model (with --refit-lr)")
    parser.add_argument("--refit-lr", type=float, nargs="+", default=[])
    parser.add_argument("--tier-budgets", type=int, nargs="+", default=[], metavar="BYTES",
                        help="the tiers' budget_bytes, the smallest tier first (named "
                             "budgets=B1_B2_... in the setting, which stays a short path)")
    args = parser.parse_args()
    if bool(args.refit_steps) != bool(args.refit_lr):
        parser.error("--refit-steps and --refit-lr go together")
    base = HERE / f"tuning_base_{args.dataset}.toml"
    tiers = sorted(load_config(base, fleet=True).fl.tiers.items(),
                   key=lambda item: item[1].budget_bytes)
    if args.tier_budgets and len(args.tier_budgets) != len(tiers):
        parser.error(f"--tier-budgets: {len(tiers)} tiers, {len(args.tier_budgets)} budgets")
    budgets = [f"fl.tiers.{name}.budget_bytes={budget}"
               for (name, _), budget in zip(tiers, args.tier_budgets)]
    overrides = [f"sparse.method={args.method}", "data.split=val", "fl.privacy.training=plain",
                 f"fl.rounds={args.rounds}", f"fl.eval_every={args.eval_every}", *args.set,
                 *budgets]
    cfg = load_config(base, overrides, fleet=True)
    named = [f"budgets={'_'.join(map(str, args.tier_budgets))}"] if budgets else []
    out = TUNING / f"{args.dataset}_{args.method}" / setting_name(
        [f"rounds={args.rounds}", *args.set, *named])
    if out.exists():
        shutil.rmtree(out)
    simulate(cfg, out)
    (out / "cross_tier.json").write_text(json.dumps(cross_tier(out), indent=2) + "\n")
    if args.refit_steps:
        settings = [(0, 0.0), *itertools.product(args.refit_steps, args.refit_lr)]
        (out / "refit.json").write_text(
            json.dumps(refit_evaluation(out, settings), indent=2) + "\n")
    for large in ("model.npz", "memory_vs_accuracy.png"):
        (out / large).unlink()
    shutil.rmtree(out / "checkpoint", ignore_errors=True)


if __name__ == "__main__":
    main()
