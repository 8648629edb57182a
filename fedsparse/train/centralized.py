"""Centralized BPR training with per-epoch progress and full-ranking evaluation.

The embedding tables are dense or sparse as ``cfg.sparse`` says; :class:`DynamicSparsity`
builds their masks and moves them during training (``fedsparse.train.dst``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from fedsparse.config import VALUE_DTYPES, ExperimentConfig
from fedsparse.data.dataset import InteractionData
from fedsparse.metrics import evaluate_embeddings
from fedsparse.models import Recommender, build_model
from fedsparse.seeding import generator_for
from fedsparse.sparse.pep import SoftThresholdTable
from fedsparse.train.dst import (DynamicSparsity, memory_metrics, mixed_tables, model_dim,
                                 model_tables)
from fedsparse.train.precision import stored_bytes, values_at_precision
from fedsparse.train.sampling import NegativeSampler

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """A trained model, one history row per epoch, and the final metrics.

    ``metrics`` holds ``seconds_per_epoch`` (median over epochs of training time),
    ``mask_updates``, the tables' :func:`~fedsparse.train.dst.memory_metrics` (``density``,
    ``model_bytes``, ``train_bytes``, ``dense_bytes``, ``floor_bytes``), ``peak_train_bytes``
    (the most training held: a method that trains dense before pruning held its dense tables
    with Adam state then), ``precisions`` (each
    value precision's Recall@K, NDCG@K and ``model_bytes``: :func:`evaluate_precision`), and
    the scores and ``model_bytes`` of the model as stored at ``model.value_dtype`` (at the
    default float32, those of the last epoch's evaluation).
    """

    model: Recommender
    history: pd.DataFrame
    metrics: dict[str, float]


def evaluate_model(model: Recommender, data: InteractionData, *, k: int,
                   batch_size: int) -> dict[str, float]:
    """Full-ranking Recall@K / NDCG@K of ``model`` on ``data.test``."""
    with torch.no_grad():
        user_final, item_final = model.final_embeddings()
    return evaluate_embeddings(user_final, item_final, data.train, data.test, ks=(k,),
                               batch_size=batch_size)


def build_training(cfg: ExperimentConfig,
                   data: InteractionData) -> tuple[Recommender, torch.optim.Optimizer, DynamicSparsity]:
    """The model (with its initial masks or mixed-dimension tables, at
    :func:`~fedsparse.train.dst.model_dim`), its Adam optimizer and the DST controller."""
    steps_per_epoch = math.ceil(data.train.nnz / cfg.train.batch_size)
    dim = model_dim(cfg.sparse, data.n_users, data.n_items, cfg.model.dim)
    sparsity = DynamicSparsity(cfg.sparse, data, dim=dim, seed=cfg.seed,
                               total_steps=cfg.train.epochs * steps_per_epoch,
                               sampled_backward=cfg.model.name == "lightgcn")
    model = build_model(dataclasses.replace(cfg.model, dim=dim), data, l2=cfg.train.l2,
                        generator=generator_for(cfg.seed, 0, 0, "init"),
                        masks=sparsity.initial_masks())
    if sparsity.method.init == "mixed":
        model.user_table, model.item_table = mixed_tables(
            cfg.sparse, data, dim, init_std=cfg.model.init_std,
            generator=generator_for(cfg.seed, 0, 0, "mixed-init"))
    elif sparsity.method.init == "pep":
        model.user_table, model.item_table = (
            SoftThresholdTable(table.values, cfg.sparse.pep_threshold_init)
            for table in (model.user_table, model.item_table))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    sparsity.attach(model, optimizer)
    return model, optimizer, sparsity


def train_step(model: Recommender, optimizer: torch.optim.Optimizer, sparsity: DynamicSparsity,
               step: int, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> float:
    """One optimizer step (number ``step``, from 1) on a batch; returns the batch loss.

    ``users``, ``pos_items`` (B,) and ``neg_items`` (B, N). The DST controller chooses the rows
    that get gradient before the step and observes, prunes or regrows after it.
    """
    grad_rows = sparsity.backward_rows(step, users, pos_items, neg_items)
    loss = model.loss(users, pos_items, neg_items, grad_rows=grad_rows)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sparsity.after_step(step)
    return loss.item()


def train_centralized(cfg: ExperimentConfig, data: InteractionData, *,
                      progress: bool = True) -> TrainResult:
    """Train ``cfg.model`` on ``data`` with BPR for ``cfg.train.epochs`` epochs.

    Evaluates every ``cfg.train.eval_every`` epochs and after the last one; the final metrics
    are those of the last epoch (no selection on the evaluation split).

    Raises
    ------
    ConfigError
        When ``sparse.budget_bytes`` is too small for the tables.
    """
    tcfg = cfg.train
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    users_np, items_np = data.train_pairs()
    users, items = torch.from_numpy(users_np), torch.from_numpy(items_np)
    model, optimizer, sparsity = build_training(cfg, data)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tcfg.epochs)
                 if tcfg.lr_schedule == "cosine" else None)
    sampler = NegativeSampler(data.train)
    step = 0
    rows: list[dict[str, float]] = []
    metrics: dict[str, float] = {}
    bar = tqdm(range(1, tcfg.epochs + 1), desc=f"train {cfg.name}", unit="epoch",
               disable=not progress)
    for epoch in bar:
        start = time.perf_counter()
        order = torch.randperm(len(users), generator=generator_for(cfg.seed, epoch, 0, "shuffle"))
        negatives_rng = generator_for(cfg.seed, epoch, 0, "negatives")
        model.train()
        total_loss = 0.0
        for first in range(0, len(order), tcfg.batch_size):
            batch = order[first:first + tcfg.batch_size]
            batch_users, batch_pos = users[batch], items[batch]
            batch_neg = sampler.sample(batch_users, tcfg.negatives, negatives_rng)
            step += 1
            loss = train_step(model, optimizer, sparsity, step, batch_users, batch_pos, batch_neg)
            total_loss += loss * len(batch)
        row = {"epoch": epoch, "loss": total_loss / len(order), "lr": optimizer.param_groups[0]["lr"],
               "train_seconds": time.perf_counter() - start,
               "density": memory_metrics(model, optimizer)["density"],
               "mask_updates": sparsity.updates}
        if scheduler is not None:
            scheduler.step()
        if epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs:
            model.eval()
            metrics = evaluate_model(model, data, k=tcfg.topk, batch_size=tcfg.eval_batch_size)
            row.update(metrics)
        rows.append(row)
        summary = ", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                            for key, value in row.items() if key != "epoch")
        logger.info("epoch %d/%d: %s", epoch, tcfg.epochs, summary)
        bar.set_postfix(loss=f"{row['loss']:.4f}", **{k: f"{v:.4f}" for k, v in metrics.items()})
    sparsity.detach()
    history = pd.DataFrame(rows)
    final = dict(metrics)
    final["seconds_per_epoch"] = float(np.median(history["train_seconds"]))
    final["mask_updates"] = sparsity.updates
    final["dim"] = model.item_table.dim
    final.update(memory_metrics(model, optimizer))
    final["peak_train_bytes"] = max(final["train_bytes"], sparsity.dense_phase_bytes)
    model.eval()
    final["precisions"] = {dtype: evaluate_precision(model, data, dtype, k=tcfg.topk,
                                                     batch_size=tcfg.eval_batch_size)
                           for dtype in VALUE_DTYPES}
    final.update(final["precisions"][cfg.model.value_dtype])    # the stored model's
    return TrainResult(model=model, history=history, metrics=final)


def evaluate_precision(model: Recommender, data: InteractionData, dtype: str, *, k: int,
                       batch_size: int) -> dict[str, float]:
    """Recall@K / NDCG@K of ``model`` with its values stored at ``dtype``, and the stored
    tables' ``model_bytes`` (:func:`~fedsparse.train.precision.stored_bytes`)."""
    with values_at_precision(model, dtype) as stored:
        metrics = evaluate_model(model, data, k=k, batch_size=batch_size)
        tables = model_tables(model)
        metrics["model_bytes"] = sum(stored_bytes(tables[name], values)
                                     for name, values in stored.items())
    return metrics
