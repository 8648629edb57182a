"""The small protocol every recommender follows, and the BPR objective they share."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class Recommender(Protocol):
    """What trainers, evaluators and exporters need from a model."""

    n_users: int
    n_items: int

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> Tensor:
        """BPR loss (plus L2) of a batch: ``users``, ``pos_items`` (B,), ``neg_items`` (B, N)."""

    def score_all(self, users: Tensor) -> Tensor:
        """Scores of every item for a batch of users: (B,) -> (B, n_items)."""

    def tables(self) -> dict[str, Tensor]:
        """The trainable embedding tables, ``{"user": (n_users, d), "item": (n_items, d)}``."""

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        """User and item vectors whose dot products are the scores (for evaluation and export)."""


def bpr_loss(user_vecs: Tensor, pos_vecs: Tensor, neg_vecs: Tensor) -> Tensor:
    """Mean BPR loss ``softplus(s_neg - s_pos)`` over positives and their N negatives.

    Shapes: ``user_vecs`` and ``pos_vecs`` (B, d), ``neg_vecs`` (B, N, d).
    """
    pos_scores = (user_vecs * pos_vecs).sum(-1)                      # (B,)
    neg_scores = torch.einsum("bd,bnd->bn", user_vecs, neg_vecs)     # (B, N)
    return F.softplus(neg_scores - pos_scores.unsqueeze(1)).mean()


def l2_penalty(user_ego: Tensor, pos_ego: Tensor, neg_ego: Tensor) -> Tensor:
    """LightGCN-style L2 on the batch's own embeddings: 0.5 * squared norms / batch size.

    The negatives' norms are averaged over the N negatives of each positive, so the penalty's
    scale does not grow with N. Shapes as in :func:`bpr_loss`.
    """
    batch = user_ego.shape[0]
    squared = user_ego.pow(2).sum() + pos_ego.pow(2).sum() + neg_ego.pow(2).sum() / neg_ego.shape[1]
    return 0.5 * squared / batch
