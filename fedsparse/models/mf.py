"""Matrix factorisation trained with BPR: score(u, i) = <e_u, e_i>."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from fedsparse.models.base import bpr_loss, init_tables, l2_penalty
from fedsparse.sparse import EmbeddingTable


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
    masks:
        Optional ``(user_mask, item_mask)``, (n_users, dim) and (n_items, dim) bool: the tables
        are then sparse with those active entries. Default: dense tables.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, *, l2: float = 1e-4,
                 init_std: float = 0.1, generator: torch.Generator | None = None,
                 masks: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items, self.l2 = n_users, n_items, l2
        self.user_table, self.item_table = init_tables(n_users, n_items, dim, init_std=init_std,
                                                       generator=generator, masks=masks)

    @classmethod
    def from_tables(cls, user_table: EmbeddingTable, item_table: EmbeddingTable, *,
                    l2: float) -> MF:
        """An MF over existing tables, e.g. a device's own user row and its item slice."""
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.n_users, model.n_items, model.l2 = user_table.n_rows, item_table.n_rows, l2
        model.user_table, model.item_table = user_table, item_table
        return model

    def loss(self, users: Tensor, pos_items: Tensor, neg_items: Tensor, *,
             grad_rows: Tensor | None = None) -> Tensor:
        """BPR + L2 of a batch. ``grad_rows`` is not needed: MF's gradient is already limited
        to the batch's rows, which ``grad_rows`` always includes."""
        batch, negatives = neg_items.shape
        user_vecs = self.user_table(users)                                  # (B, d)
        pos_vecs = self.item_table(pos_items)                               # (B, d)
        neg_vecs = self.item_table(neg_items.reshape(-1)).reshape(batch, negatives, -1)  # (B, N, d)
        loss = bpr_loss(user_vecs, pos_vecs, neg_vecs)
        return loss + self.l2 * l2_penalty(user_vecs, pos_vecs, neg_vecs)

    def score_all(self, users: Tensor) -> Tensor:
        return self.user_table(users) @ self.item_table().T     # (B, n_items)

    def tables(self) -> dict[str, Tensor]:
        return {"user": self.user_table.to_dense(), "item": self.item_table.to_dense()}

    def final_embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_table(), self.item_table()
