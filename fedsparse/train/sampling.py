"""Seeded uniform negative sampling that avoids a user's training positives."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


class NegativeSampler:
    """Draws items uniformly at random, redrawing those the user interacted with in training.

    After ``max_redraws`` rounds any remaining collisions are kept (only users who have seen
    nearly the whole catalogue can hit that). A draw is looked up among the sorted keys of the
    training positives; with many positives (``FILTER_FROM``) a one-hash filter (a bool per
    ``key % size``, 8 per positive) rules most draws out first, since a binary search in a
    large array costs a cache miss a step (Gowalla: 2.0 against 4.6 ms a batch of 2,048 x 8).
    """

    #: The fewest positives for which the filter pays.
    FILTER_FROM = 1 << 16

    def __init__(self, train: sp.csr_matrix, max_redraws: int = 10) -> None:
        self.n_items = train.shape[1]
        coo = train.tocoo()
        keys = coo.row.astype(np.int64) * self.n_items + coo.col.astype(np.int64)
        self._set_positive_keys(np.sort(keys))
        self.max_redraws = max_redraws

    def _set_positive_keys(self, sorted_keys: np.ndarray) -> None:
        """Hold the (P,) sorted int64 keys ``user * n_items + item`` and their filter."""
        self._positive_keys = torch.from_numpy(sorted_keys)
        self._filter: Tensor | None = None
        if len(sorted_keys) >= self.FILTER_FROM:
            self._filter = torch.zeros(8 * len(sorted_keys), dtype=torch.bool)
            self._filter[self._positive_keys % len(self._filter)] = True

    @classmethod
    def for_items(cls, items: np.ndarray, n_items: int, max_redraws: int = 10) -> NegativeSampler:
        """The sampler of one user (user 0) whose training positives are ``items``: the same
        sampler as from a (1, n_items) matrix of them, without building the matrix."""
        sampler = cls.__new__(cls)
        sampler.n_items, sampler.max_redraws = n_items, max_redraws
        sampler._set_positive_keys(np.unique(np.asarray(items, dtype=np.int64)))
        return sampler

    def _is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        keys = users * self.n_items + items
        if self._filter is None:
            return self._among_positives(keys)
        maybe = self._filter[keys % len(self._filter)]          # False: surely not positive
        positive = torch.zeros_like(maybe)
        positive[maybe] = self._among_positives(keys[maybe])
        return positive

    def _among_positives(self, keys: Tensor) -> Tensor:
        """Whether each of ``keys`` is a training positive's key, by binary search."""
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
