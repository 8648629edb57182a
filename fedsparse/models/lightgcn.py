"""LightGCN (He et al., SIGIR 2020): embeddings smoothed over the user-item graph.

final = mean_k(A_hat^k E0) for k = 0..K, with A_hat = D^-1/2 A D^-1/2 the symmetric normalised
adjacency of the bipartite train graph; score(u, i) = <final_u, final_i>. The L2 penalty acts on
the ego (layer-0) embeddings, as in the paper.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from fedsparse.models.base import bpr_loss, l2_penalty


def normalized_adjacency(train: sp.csr_matrix) -> Tensor:
    """Symmetric normalised adjacency of the bipartite graph, as a coalesced torch COO tensor.

    Shape ``(n_users + n_items, n_users + n_items)``; isolated nodes get zero rows.
    """
    n_users, n_items = train.shape
    binary = (train > 0).astype(np.float32)
    adjacency = sp.bmat([[None, binary], [binary.T, None]], format="csr")
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    scaling = sp.diags(inv_sqrt)
    normalized = (scaling @ adjacency @ scaling).tocoo()
    indices = torch.from_numpy(np.vstack([normalized.row, normalized.col]).astype(np.int64))
    values = torch.from_numpy(normalized.data.astype(np.float32))
    size = (n_users + n_items, n_users + n_items)
    return torch.sparse_coo_tensor(indices, values, size, check_invariants=False).coalesce()


class LightGCN(nn.Module):
    """LightGCN with ``layers`` propagation steps over the training graph.

    Parameters
    ----------
    train:
        ``(n_users, n_items)`` training interactions (the graph).
    dim, layers, l2, init_std, generator:
        Embedding size, propagation depth, L2 weight on ego embeddings, init std, seeded RNG.
    """

    def __init__(self, train: sp.csr_matrix, dim: int, *, layers: int = 3, l2: float = 1e-4,
                 init_std: float = 0.1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items = train.shape
        self.layers, self.l2 = layers, l2
        self.user = nn.Parameter(torch.randn(self.n_users, dim, generator=generator) * init_std)
        self.item = nn.Parameter(torch.randn(self.n_items, dim, generator=generator) * init_std)
        self.register_buffer("graph", normalized_adjacency(train), persistent=False)

    def propagate(self) -> tuple[Tensor, Tensor]:
        """Layer-averaged embeddings of all users and items."""
        layer = torch.cat([self.user, self.item])           # (U + I, d)
        total = layer
        for _ in range(self.layers):
            layer = torch.sparse.mm(self.graph, layer)      # (U + I, d)
            total = total + layer
        final = total / (self.layers + 1)
        return final[: self.n_users], final[self.n_users:]

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> Tensor:
        user_final, item_final = self.propagate()
        loss = bpr_loss(user_final[users], item_final[pos_items], item_final[neg_items])
        penalty = l2_penalty(self.user[users], self.item[pos_items], self.item[neg_items])
        return loss + self.l2 * penalty

    def score_all(self, users: Tensor) -> Tensor:
        user_final, item_final = self.propagate()
        return user_final[users] @ item_final.T             # (B, n_items)

    def tables(self) -> dict[str, Tensor]:
        return {"user": self.user, "item": self.item}

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.propagate()
