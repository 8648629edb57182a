"""Seeded synthetic implicit feedback with learnable structure, for tests and examples."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from fedsparse.data.dataset import InteractionData
from fedsparse.seeding import numpy_rng_for


def synthetic_dataset(n_users: int = 200, n_items: int = 300, per_user: int = 20, *,
                      n_clusters: int = 5, test_per_user: int = 4, seed: int = 0) -> InteractionData:
    """Users and items fall into ``n_clusters`` taste groups; users mostly pick in-group items.

    Every user gets ``per_user`` distinct items, the last ``test_per_user`` of which (in a random
    order) form the test split, so every user has both train and test interactions.
    """
    if not 0 < test_per_user < per_user <= n_items:
        raise ValueError("need 0 < test_per_user < per_user <= n_items")
    rng = numpy_rng_for(seed, 0, 0, "synthetic-data")
    user_group = rng.integers(n_clusters, size=n_users)
    item_group = rng.integers(n_clusters, size=n_items)
    popularity = rng.pareto(2.0, size=n_items) + 1.0
    rows: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    cols: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for user in range(n_users):
        weights = popularity * np.where(item_group == user_group[user], 8.0, 1.0)
        chosen = rng.choice(n_items, size=per_user, replace=False, p=weights / weights.sum())
        for part, items in (("train", chosen[:-test_per_user]), ("test", chosen[-test_per_user:])):
            rows[part].append(np.full(len(items), user))
            cols[part].append(items)

    def matrix(part: str) -> sp.csr_matrix:
        r, c = np.concatenate(rows[part]), np.concatenate(cols[part])
        return sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(n_users, n_items))

    return InteractionData(name=f"synthetic-{seed}", n_users=n_users, n_items=n_items,
                           train=matrix("train"), test=matrix("test"))
