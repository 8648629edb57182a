"""Full-ranking Recall@K and NDCG@K, the LightGCN protocol (DESIGN section 5).

Every item is ranked for each user, the user's training positives are masked out, and
Recall@K = hits / |test items|, NDCG@K uses binary gains with IDCG over min(|test|, K). Both are
averaged over the users that have at least one test item. Users are scored in batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per-user recall: ``hits`` (B, K) bool in rank order, ``n_relevant`` (B,) >= 1."""
    return hits.sum(axis=1) / n_relevant


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Per-user NDCG with binary gains; IDCG over ``min(n_relevant, K)`` ideal hits."""
    k = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))                  # (K,)
    dcg = (hits * discounts).sum(axis=1)
    ideal_discounts = np.concatenate([[0.0], np.cumsum(discounts)])  # (K + 1,)
    idcg = ideal_discounts[np.minimum(n_relevant, k)]
    return dcg / idcg


def _entry_rows(matrix: sp.csr_matrix) -> np.ndarray:
    """(nnz,) the row of each stored entry of ``matrix``, in storage order."""
    return np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))


def top_k_unseen(scores: Tensor, seen: sp.csr_matrix, k: int) -> Tensor:
    """Indices of the ``k`` best items per row of ``scores`` (B, I), skipping ``seen`` (B, I).

    ``scores`` is overwritten (-inf at the ``seen`` entries): pass a copy to keep it. A
    batch's fresh scores need none, and a copy of (B, I) cost a sixth of an evaluation.
    """
    rows = _entry_rows(seen)                                                    # (nnz,)
    scores[torch.from_numpy(rows), torch.from_numpy(seen.indices.astype(np.int64))] = -torch.inf
    return torch.topk(scores, k, dim=1).indices                     # (B, k)


def hits_in(top: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """(B, K) bool: whether each ranked item of ``top`` (B, K) is a positive entry of its row
    of ``relevant`` (B, I).

    Looks the (row, item) pairs up among the relevant ones' sorted keys instead of densifying
    ``relevant``, which at tens of thousands of items cost more than the scoring.
    """
    n_items = relevant.shape[1]
    rows = _entry_rows(relevant)                                                # (nnz,)
    positive = relevant.data > 0
    relevant_keys = rows[positive] * n_items + relevant.indices[positive]       # (R,)
    top_keys = np.arange(len(top))[:, None] * n_items + top                      # (B, K)
    return np.isin(top_keys, relevant_keys)


def evaluate_embeddings(user_emb: Tensor | np.ndarray, item_emb: Tensor | np.ndarray,
                        train: sp.csr_matrix, test: sp.csr_matrix, *, ks: Sequence[int] = (20,),
                        batch_size: int = 1024) -> dict[str, float]:
    """Mean Recall@K and NDCG@K of the scores ``user_emb @ item_emb.T``.

    Parameters
    ----------
    user_emb, item_emb:
        ``(n_users, d)`` and ``(n_items, d)`` vectors whose dot products are the scores.
    train:
        ``(n_users, n_items)`` positives to mask out of the ranking.
    test:
        ``(n_users, n_items)`` relevant items; users without any are skipped.
    ks:
        Cut-offs; the result has ``recall@K`` and ``ndcg@K`` for each.
    """
    users_t = torch.as_tensor(user_emb).detach().float()
    items_t = torch.as_tensor(item_emb).detach().float()
    evaluated = np.flatnonzero(np.diff(test.indptr) > 0)
    max_k = min(max(ks), items_t.shape[0])
    sums = {f"{name}@{k}": 0.0 for k in ks for name in ("recall", "ndcg")}
    with torch.no_grad():
        for start in range(0, len(evaluated), batch_size):
            batch = evaluated[start:start + batch_size]
            scores = users_t[torch.from_numpy(batch)] @ items_t.T              # (B, I)
            top = top_k_unseen(scores, train[batch], max_k).numpy()            # (B, K)
            relevant = test[batch]
            hits = hits_in(top, relevant)                                       # (B, K)
            n_relevant = np.diff(relevant.indptr)
            for k in ks:
                sums[f"recall@{k}"] += float(recall_at_k(hits[:, :k], n_relevant).sum())
                sums[f"ndcg@{k}"] += float(ndcg_at_k(hits[:, :k], n_relevant).sum())
    count = max(len(evaluated), 1)
    return {key: value / count for key, value in sums.items()}
