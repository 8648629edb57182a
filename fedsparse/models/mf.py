"""Matrix factorisation trained with BPR: score(u, i) = <e_u, e_i>."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fedsparse.models.base import bpr_loss, l2_penalty


class MF(nn.Module):
    """Plain MF with one embedding table for users and one for items.

    Parameters
    ----------
    n_users, n_items, dim:
        Table sizes.
    l2:
        Weight of the L2 penalty on the batch's embeddings.
    init_std:
        Standard deviation of the normal initialisation.
    generator:
        Seeded generator for the initialisation.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, *, l2: float = 1e-4,
                 init_std: float = 0.1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items, self.l2 = n_users, n_items, l2
        self.user = nn.Parameter(torch.randn(n_users, dim, generator=generator) * init_std)
        self.item = nn.Parameter(torch.randn(n_items, dim, generator=generator) * init_std)

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor) -> Tensor:
        user_vecs = self.user[users]        # (B, d)
        pos_vecs = self.item[pos_items]     # (B, d)
        neg_vecs = self.item[neg_items]     # (B, N, d)
        loss = bpr_loss(user_vecs, pos_vecs, neg_vecs)
        return loss + self.l2 * l2_penalty(user_vecs, pos_vecs, neg_vecs)

    def score_all(self, users: Tensor) -> Tensor:
        return self.user[users] @ self.item.T     # (B, n_items)

    def tables(self) -> dict[str, Tensor]:
        return {"user": self.user, "item": self.item}

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user, self.item
