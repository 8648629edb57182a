"""What a fleet's mix of memory tiers costs its densest tier, measured without federation.

Centralized BPR MF on a fleet's users, each user in its fleet tier (``configs/fleets/``), the
item table under fixed nested NMF masks at the tiers' densities (every tier keeps a prefix of
one ranking of the NMF item scores, as the fleet's nested masks do), dense user rows, the
centralized recipe of ``configs/centralized/<dataset>_mf.toml`` (epochs, batch, learning rate
and its schedule, L2, negatives). The variants differ only in which item entries a user's
scores use and which its gradient reaches:

- ``tier_mix``: its tier's entries, both ways (what the fleet does: a device holds its slice);
- ``straight_through``: scores with its tier's entries, gradient to every entry of the densest
  tier's mask (Top-KAST's split of forward and backward sets, Jayakumar et al. 2020), so the
  smaller tiers' users train the entries only the densest tier holds;
- ``straight_through_decayF``: the same with Top-KAST's extra L2 (F x the recipe's: 3, 10,
  30) on the entries outside the user's forward set;
- ``one_tier``: every user scores and trains with the densest tier's entries (the fleet
  where every device got the densest budget; as in the per-tier centralized reference, every
  user trains every entry).

Writes ``results/tier_mix/<dataset>_<split>[_<tag>]/<variant>_seed<s>.json`` (per tier
Recall@20, NDCG@20, users, density); ``report.py`` turns them into the README's table.
``--set`` and ``--tag`` as in ``references.py``: the tiers of a variant of the fleet config.

    python simulations/fleet_memory_accuracy/tier_mix.py --dataset lastfm --seeds 0 1

Its scores do not depend on what else runs on the machine, its seconds do (one torch thread
by default: ``--threads``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from fedsparse.config import load_config
from fedsparse.data import load_dataset
from fedsparse.federated.fleet import plan_fleet
from fedsparse.metrics import evaluate_embeddings
from fedsparse.models.base import bpr_loss, l2_penalty
from fedsparse.seeding import generator_for
from fedsparse.sparse.masks import nmf_scores, top_fraction_mask
from fedsparse.train.sampling import NegativeSampler
# this directory's references.py
from references import FLEETS, add_fleet_variant_arguments, check_fleet_variant, results_dir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: Variant -> (gradient reaches the densest mask, extra L2 factor on entries outside the
#: forward set, every user at the densest mask).
VARIANTS = {"tier_mix": (False, 0.0, False),
            "straight_through": (True, 0.0, False),
            **{f"straight_through_decay{factor}": (True, float(factor), False)
               for factor in (3, 10, 30)},
            "one_tier": (False, 0.0, True)}


def variant_label(variant: str) -> str:
    """What a variant does, in words (the README table's rows)."""
    straight, extra_decay, one_tier = VARIANTS[variant]
    if one_tier:
        return "one tier: every user at the densest tier's entries"
    if not straight:
        return "tier mix: each user trains its tier's entries (as the fleet)"
    if not extra_decay:
        return "tier mix, gradient to the densest mask (Top-KAST)"
    return f"tier mix, gradient to the densest mask, {extra_decay:g} x L2 outside the tier"

logger = logging.getLogger("tier_mix")


def tier_masks(train: sp.csr_matrix, densities: list[float], dim: int, iterations: int,
               seed: int) -> Tensor:
    """(T, n_items, dim) float nested item masks, one per density (ascending)."""
    _, item_scores = nmf_scores(train, dim, iterations=iterations, seed=seed)
    return torch.stack([torch.from_numpy(top_fraction_mask(item_scores, density)).float()
                        for density in densities])


def run(dataset: str, split: str, variant: str, seed: int,
        fleet_overrides: tuple[str, ...] = ()) -> dict:
    """Train one variant and score each tier's users with their tier's item entries (the tiers
    of the fleet config with ``fleet_overrides``)."""
    straight, extra_decay, one_tier = VARIANTS[variant]
    fleet = load_config(ROOT / "configs" / "fleets" / FLEETS[dataset],
                        [*fleet_overrides, f"data.split={split}", f"seed={seed}"], fleet=True)
    centralized = load_config(ROOT / "configs" / "centralized" / f"{dataset}_mf.toml",
                              [f"data.split={split}", f"seed={seed}"])
    recipe, init_std = centralized.train, centralized.model.init_std
    data = load_dataset(fleet.data.name, split, fleet.data.max_items)
    plan = plan_fleet(fleet, data)
    dim = fleet.model.dim
    user_tier = torch.zeros(data.n_users, dtype=torch.long)
    user_tier[torch.from_numpy(plan.users)] = torch.from_numpy(plan.device_tier)
    masks = tier_masks(data.train, [tier.density for tier in plan.tiers], dim,
                       fleet.sparse.nmf_iterations, seed)                   # (T, I, d)
    top = masks[-1]                                                           # (I, d)
    forward_masks = top.expand_as(masks) if one_tier else masks

    init = generator_for(seed, 0, 0, "init")
    user_values = (torch.randn(data.n_users, dim, generator=init) * init_std).requires_grad_()
    item_values = (torch.randn(data.n_items, dim, generator=init) * init_std * top).requires_grad_()
    optimizer = torch.optim.Adam([user_values, item_values], lr=recipe.lr)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
                 if recipe.lr_schedule == "cosine" else None)

    def item_vectors(rows: Tensor, tiers: Tensor) -> tuple[Tensor, Tensor]:
        """(B, d) item rows as users of ``tiers`` score them, and their entries outside
        that forward set (inside the densest mask)."""
        forward = forward_masks[tiers, rows]                                  # (B, d)
        held = item_values[rows] * top[rows]                                  # (B, d)
        outside = held * (1 - forward)
        return (held - outside.detach() if straight else held * forward), outside

    users_np, items_np = data.train.nonzero()
    users = torch.from_numpy(users_np.astype(np.int64))
    items = torch.from_numpy(items_np.astype(np.int64))
    sampler, n_neg = NegativeSampler(data.train), recipe.negatives
    start = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        order = torch.randperm(len(users), generator=generator_for(seed, epoch, 0, "shuffle"))
        negatives_rng = generator_for(seed, epoch, 0, "negatives")
        for first in range(0, len(order), recipe.batch_size):
            batch = order[first:first + recipe.batch_size]                    # (B,)
            batch_users = users[batch]
            neg = sampler.sample(batch_users, n_neg, negatives_rng)           # (B, N)
            tiers = user_tier[batch_users]                                    # (B,)
            user_vecs = user_values[batch_users]                              # (B, d)
            pos_vecs, pos_out = item_vectors(items[batch], tiers)
            neg_vecs, neg_out = item_vectors(neg.reshape(-1), tiers.repeat_interleave(n_neg))
            neg_vecs = neg_vecs.reshape(len(batch), n_neg, dim)                # (B, N, d)
            loss = (bpr_loss(user_vecs, pos_vecs, neg_vecs)
                    + recipe.l2 * l2_penalty(user_vecs, pos_vecs, neg_vecs))
            if extra_decay:
                loss = loss + extra_decay * recipe.l2 * l2_penalty(
                    torch.zeros_like(user_vecs), pos_out, neg_out.reshape(len(batch), n_neg, dim))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        logger.info("%s %s seed %d: epoch %d/%d", dataset, variant, seed, epoch, recipe.epochs)
    result = {"dataset": dataset, "split": split, "variant": variant, "seed": seed,
              "seconds": time.perf_counter() - start, "tiers": {}}
    with torch.no_grad():
        for index, tier in enumerate(plan.tiers):
            ids = plan.users[plan.device_tier == index]
            metrics = evaluate_embeddings(user_values[ids], item_values * forward_masks[index],
                                          data.train[ids], data.test[ids], ks=(20,))
            result["tiers"][tier.name] = {**metrics, "users": len(ids),
                                          "density": tier.density}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="lastfm", choices=sorted(FLEETS))
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    add_fleet_variant_arguments(parser)
    args = parser.parse_args()
    check_fleet_variant(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    out_dir = results_dir(args.dataset, args.split, args.tag, kind="tier_mix")
    out_dir.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for variant in args.variants:
            out = out_dir / f"{variant}_seed{seed}.json"
            if out.exists():
                continue
            result = run(args.dataset, args.split, variant, seed, tuple(args.set))
            out.write_text(json.dumps(result, indent=1))
            logger.info("wrote %s", out)


if __name__ == "__main__":
    main()
