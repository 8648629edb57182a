"""Time one LightGCN training step with the sampled sparse backward against full gradients.

Both runs use the same config, masks (NMF, ``sparse.density``) and batches; only
``sparse.method`` differs: ``sparserec`` (gradient for the batch's rows plus ``sample_rows``
sampled rows, over their induced subgraph) against ``sparserec_no_sampling`` (every row gets its
gradient through the full propagation). A step is forward, backward, optimizer step and the DST
bookkeeping. Writes ``results/step_time/<dataset>.json`` and prints the medians.

Usage: python simulations/sparsity_sweep/step_time.py [--data gowalla] [--steps 30] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from fedsparse.config import load_config
from fedsparse.data import load_dataset
from fedsparse.seeding import generator_for
from fedsparse.train import build_training, train_step
from fedsparse.train.sampling import NegativeSampler

HERE = Path(__file__).resolve().parent
METHODS = ("sparserec", "sparserec_no_sampling")


def step_seconds(overrides: list[str], method: str, steps: int, warmup: int) -> list[float]:
    """Wall seconds of ``steps`` training steps of ``method`` after ``warmup`` untimed ones."""
    cfg = load_config(None, [*overrides, f"sparse.method={method}"])
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = load_dataset(cfg.data.name)
    model, optimizer, sparsity = build_training(cfg, data)
    sampler = NegativeSampler(data.train)
    users, items = (torch.from_numpy(a) for a in data.train_pairs())
    order = torch.randperm(len(users), generator=generator_for(cfg.seed, 1, 0, "shuffle"))
    negatives_rng = generator_for(cfg.seed, 1, 0, "negatives")
    times = []
    for step in range(1, warmup + steps + 1):
        batch = order[(step - 1) * cfg.train.batch_size:step * cfg.train.batch_size]
        negatives = sampler.sample(users[batch], cfg.train.negatives, negatives_rng)
        start = time.perf_counter()
        train_step(model, optimizer, sparsity, step, users[batch], items[batch], negatives)
        if step > warmup:
            times.append(time.perf_counter() - start)
    sparsity.detach()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="gowalla")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = ["model.name=lightgcn", f"data.name={args.data}", f"sparse.density={args.density}",
                 "train.batch_size=2048", "train.negatives=1", *args.set]
    medians = {method: statistics.median(step_seconds(overrides, method, args.steps, args.warmup))
               for method in METHODS}
    result = {"dataset": args.data, "density": args.density, "steps": args.steps,
              "threads": torch.get_num_threads(), "overrides": overrides,
              **{f"{method}_median_s": seconds for method, seconds in medians.items()},
              "ratio": medians["sparserec"] / medians["sparserec_no_sampling"]}
    out = HERE / "results" / "step_time" / f"{args.data}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
