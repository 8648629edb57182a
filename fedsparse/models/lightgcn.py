"""LightGCN (He et al., SIGIR 2020): embeddings smoothed over the user-item graph.

final = mean_k(A_hat^k E0) for k = 0..K, with A_hat = D^-1/2 A D^-1/2 the symmetric normalised
adjacency of the bipartite train graph; score(u, i) = <final_u, final_i>. The L2 penalty acts on
the ego (layer-0) embeddings, as in the paper.

Sampled sparse backward (DESIGN section 3, idea 3). Given the rows S that may receive gradient,
the loss propagates all nodes once without autograd and adds a gradient path over the subgraph
induced by S:

    final_S = final_S.detach() + mean_k(A_SS^k (E0_S - E0_S.detach()))

The added term is exactly zero in value, so the loss is the full-graph loss; its gradient with
respect to E0_S counts only the propagation paths that stay inside S. This is an approximation:
paths through unselected nodes (e.g. user -> unselected item -> selected user) are ignored, and
unselected rows get no gradient at all. With S = all nodes it is the exact gradient.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from fedsparse.models.base import bpr_loss, init_tables, l2_penalty
from fedsparse.sparse.sampled import induced_adjacency


def normalized_adjacency_csr(train: sp.csr_matrix) -> sp.csr_matrix:
    """Symmetric normalised adjacency of the bipartite graph, float32 scipy CSR.

    Shape ``(n_users + n_items, n_users + n_items)``; isolated nodes get zero rows.
    """
    binary = (train > 0).astype(np.float32)
    adjacency = sp.bmat([[None, binary], [binary.T, None]], format="csr")
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    scaling = sp.diags(inv_sqrt)
    return sp.csr_matrix(scaling @ adjacency @ scaling, dtype=np.float32)


def normalized_adjacency(train: sp.csr_matrix) -> Tensor:
    """:func:`normalized_adjacency_csr` as a coalesced torch COO tensor."""
    normalized = normalized_adjacency_csr(train).tocoo()
    indices = torch.from_numpy(np.vstack([normalized.row, normalized.col]).astype(np.int64))
    values = torch.from_numpy(normalized.data.astype(np.float32))
    return torch.sparse_coo_tensor(indices, values, normalized.shape,
                                   check_invariants=False).coalesce()


def csr_tensor(matrix: sp.csr_matrix) -> Tensor:
    """A scipy CSR matrix as a float32 torch sparse CSR tensor (for fast products without
    autograd: its forward product is several times faster than COO's, its backward slower)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(torch.from_numpy(matrix.indptr.astype(np.int64)),
                                       torch.from_numpy(matrix.indices.astype(np.int64)),
                                       torch.from_numpy(matrix.data.astype(np.float32)),
                                       matrix.shape, check_invariants=False)


def layer_mean(graph: Tensor, ego: Tensor, layers: int) -> Tensor:
    """``mean_k(graph^k ego)`` for k = 0..layers: (N, N) sparse, (N, d) -> (N, d)."""
    layer, total = ego, ego
    for _ in range(layers):
        layer = torch.sparse.mm(graph, layer)      # (N, d)
        total = total + layer
    return total / (layers + 1)


def _positions(sorted_nodes: Tensor, ids: Tensor) -> Tensor:
    """Positions of ``ids`` (any shape) in ``sorted_nodes`` (S,), which must contain them."""
    positions = torch.searchsorted(sorted_nodes, ids).clamp_(max=len(sorted_nodes) - 1)
    if not torch.equal(sorted_nodes[positions], ids):
        raise ValueError("grad_rows must contain every user and item node of the batch")
    return positions


class LightGCN(nn.Module):
    """LightGCN with ``layers`` propagation steps over the training graph.

    Parameters
    ----------
    train:
        ``(n_users, n_items)`` training interactions (the graph).
    dim, layers, l2, init_std, generator:
        Embedding size, propagation depth, L2 weight on ego embeddings, init std, seeded RNG.
    masks:
        Optional ``(user_mask, item_mask)`` bool arrays: sparse tables with those active
        entries. Default: dense tables.
    """

    def __init__(self, train: sp.csr_matrix, dim: int, *, layers: int = 3, l2: float = 1e-4,
                 init_std: float = 0.1, generator: torch.Generator | None = None,
                 masks: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items = train.shape
        self.layers, self.l2 = layers, l2
        self.user_table, self.item_table = init_tables(self.n_users, self.n_items, dim,
                                                       init_std=init_std, generator=generator,
                                                       masks=masks)
        self.adjacency = normalized_adjacency_csr(train)
        self.register_buffer("graph", normalized_adjacency(train), persistent=False)
        self.register_buffer("graph_csr", csr_tensor(self.adjacency), persistent=False)

    def _ego(self) -> Tensor:
        return torch.cat([self.user_table(), self.item_table()])           # (U + I, d)

    def propagate(self) -> tuple[Tensor, Tensor]:
        """Layer-averaged embeddings of all users and items."""
        final = layer_mean(self.graph, self._ego(), self.layers)           # (U + I, d)
        return final[: self.n_users], final[self.n_users:]

    def _sampled(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """Ego and final vectors of ``nodes`` (S,) sorted, with gradient paths inside S only."""
        with torch.no_grad():
            final = layer_mean(self.graph_csr, self._ego(), self.layers)   # (U + I, d)
        is_user = nodes < self.n_users
        ego = torch.cat([self.user_table(nodes[is_user]),
                         self.item_table(nodes[~is_user] - self.n_users)])  # (S, d), users first
        path = layer_mean(induced_adjacency(self.adjacency, nodes), ego - ego.detach(),
                          self.layers)                                     # (S, d), value 0
        return ego, final[nodes] + path                                    # (S, d), (S, d)

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor, *,
             grad_rows: Tensor | None = None) -> Tensor:
        """BPR on final vectors + L2 on ego vectors; see the module docstring for ``grad_rows``."""
        pos_nodes, neg_nodes = pos_items + self.n_users, neg_items + self.n_users
        if grad_rows is None:
            ego = self._ego()                                              # (U + I, d)
            final = layer_mean(self.graph, ego, self.layers)               # (U + I, d)
        else:
            ego, final = self._sampled(grad_rows)                          # (S, d), (S, d)
            users, pos_nodes, neg_nodes = (_positions(grad_rows, ids)
                                           for ids in (users, pos_nodes, neg_nodes))
        # Gathers: (B, d), (B, d), (B, N, d).
        loss = bpr_loss(final[users], final[pos_nodes], final[neg_nodes])
        penalty = l2_penalty(ego[users], ego[pos_nodes], ego[neg_nodes])
        return loss + self.l2 * penalty

    def score_all(self, users: Tensor) -> Tensor:
        user_final, item_final = self.propagate()
        return user_final[users] @ item_final.T             # (B, n_items)

    def tables(self) -> dict[str, Tensor]:
        return {"user": self.user_table.to_dense(), "item": self.item_table.to_dense()}

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.propagate()
