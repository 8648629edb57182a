"""Seeded uniform negative sampling that avoids a user's training positives."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


class NegativeSampler:
    """Draws items uniformly at random, redrawing those the user interacted with in training.

    After ``max_redraws`` rounds any remaining collisions are kept (only users who have seen
    nearly the whole catalogue can hit that).
    """

    def __init__(self, train: sp.csr_matrix, max_redraws: int = 10) -> None:
        self.n_items = train.shape[1]
        coo = train.tocoo()
        keys = coo.row.astype(np.int64) * self.n_items + coo.col.astype(np.int64)
        self._positive_keys = torch.from_numpy(np.sort(keys))
        self.max_redraws = max_redraws

    @classmethod
    def for_items(cls, items: np.ndarray, n_items: int, max_redraws: int = 10) -> NegativeSampler:
        """The sampler of one user (user 0) whose training positives are ``items``: the same
        sampler as from a (1, n_items) matrix of them, without building the matrix."""
        sampler = cls.__new__(cls)
        sampler.n_items, sampler.max_redraws = n_items, max_redraws
        sampler._positive_keys = torch.from_numpy(np.unique(np.asarray(items, dtype=np.int64)))
        return sampler

    def _is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        keys = users * self.n_items + items
        if self._positive_keys.numel() == 0:
            return torch.zeros_like(keys, dtype=torch.bool)
        slot = torch.searchsorted(self._positive_keys, keys).clamp_(max=self._positive_keys.numel() - 1)
        return self._positive_keys[slot] == keys

    def sample(self, users: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``n`` negatives for each of ``users`` (B,) -> (B, n) int64."""
        users = users.unsqueeze(1).expand(-1, n)                         # (B, n)
        items = torch.randint(self.n_items, users.shape, generator=generator)
        for _ in range(self.max_redraws):
            clash = self._is_positive(users, items)
            count = int(clash.sum())
            if count == 0:
                break
            items[clash] = torch.randint(self.n_items, (count,), generator=generator)
        return items
