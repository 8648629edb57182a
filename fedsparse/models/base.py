"""The small protocol every recommender follows, and the BPR objective they share."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fedsparse.sparse import DenseEmbeddingTable, EmbeddingTable, SparseEmbeddingTable


class Recommender(Protocol):
    """What trainers, evaluators and exporters need from a model.

    The trainable state is two table modules, ``user_table`` and ``item_table``, each a
    :class:`DenseEmbeddingTable` or a :class:`SparseEmbeddingTable`; a model reads them only
    through their common interface (calling a table gathers rows, ``table()`` is the whole
    dense view), so a trainer may replace either with the other kind.
    """

    n_users: int
    n_items: int
    user_table: EmbeddingTable
    item_table: EmbeddingTable

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor, *,
             grad_rows: Tensor | None = None) -> Tensor:
        """BPR loss (plus L2) of a batch: ``users``, ``pos_items`` (B,), ``neg_items`` (B, N).

        ``grad_rows`` (S,), sorted distinct node ids (users, then items offset by ``n_users``)
        that include the batch's: when given, only those rows may receive gradient (the
        sampled sparse backward); the loss value does not change.
        """

    def score_all(self, users: Tensor) -> Tensor:
        """Scores of every item for a batch of users: (B,) -> (B, n_items)."""

    def tables(self) -> dict[str, Tensor]:
        """Dense views of the tables, ``{"user": (n_users, d), "item": (n_items, d)}``, zero at
        inactive entries."""

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        """User and item vectors whose dot products are the scores (for evaluation and export)."""


def init_table(n_rows: int, dim: int, *, init_std: float, generator: torch.Generator | None,
               mask: np.ndarray | None = None) -> EmbeddingTable:
    """A table initialised from ``normal(0, init_std)``: dense, or sparse with ``mask``.

    The normal draws are the same (n_rows, dim) draws either way; a sparse table keeps those
    at its (n_rows, dim) bool ``mask``'s active entries.
    """
    values = torch.randn(n_rows, dim, generator=generator) * init_std     # (n_rows, dim)
    if mask is None:
        return DenseEmbeddingTable(values)
    return SparseEmbeddingTable.from_dense(values, mask)


def init_tables(n_users: int, n_items: int, dim: int, *, init_std: float,
                generator: torch.Generator | None,
                masks: tuple[np.ndarray, np.ndarray] | None) -> tuple[EmbeddingTable, EmbeddingTable]:
    """The user and item tables (:func:`init_table`), sparse when ``masks`` (user, item) is given."""
    user_mask, item_mask = masks if masks is not None else (None, None)
    return (init_table(n_users, dim, init_std=init_std, generator=generator, mask=user_mask),
            init_table(n_items, dim, init_std=init_std, generator=generator, mask=item_mask))


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
