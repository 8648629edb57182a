"""Training updates under secure summation (``fl.privacy.training = "secure_sum"``).

A device's round update, in the plain protocol the values and growth scores of the item rows it
touched, becomes one fixed-length vector in its tier's layout, so that nothing in it names a
row and the server, which adds the masked vectors of a tier's devices up
(:mod:`fedsparse.federated.secure_sum`), sees only the tier's sums:

* ``[0, nnz)``: ``n_u * (v - w)`` at the tier's active entries (row-major), n_u its examples, v
  its values after training, w the values it received (0 at entries it did not touch);
* ``[nnz, nnz + n_items)``: ``n_u`` at every row it touched (the rows' aggregation weight);
* ``[nnz + n_items, n_items * (d + 1))``: its accumulated |grad| at the tier's inactive entries
  (row-major; its top-k per touched row, 0 elsewhere).

From the tiers' sums the server has exactly what per-entry weighted averaging needs
(:func:`open_tier_sums`). Engine-neutral (no Flower).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsparse.sparse import SparseEmbeddingTable
from fedsparse.train.device import DeviceUpdate

#: Added to the secure-sum step of a training round, so that its masks never reuse a federated
#: NMF iteration's nonce.
TRAINING_STEP_BASE = 1 << 32


def secure_vector_size(n_items: int, dim: int) -> int:
    """Length of a device's vector in any tier: ``n_items * dim`` entries plus a weight per
    row."""
    return n_items * (dim + 1)


@dataclass(frozen=True)
class TierLayout:
    """Where a tier's entries sit in its vector: how many are active, the slot of every entry
    (by flat id, row-major) among the active ones or among the inactive ones (each in
    ascending order), and the values a device received at the active ones."""

    n_items: int
    nnz: int
    slot: np.ndarray
    received: np.ndarray

    @classmethod
    def of(cls, table: SparseEmbeddingTable) -> TierLayout:
        """The layout of the tier slice ``table``."""
        mask = table.mask().numpy().reshape(-1)                                # (n_items*d,)
        slot = np.empty(mask.size, np.int64)
        slot[mask] = np.arange(int(mask.sum()))
        slot[~mask] = np.arange(int((~mask).sum()))
        return cls(n_items=table.n_rows, nnz=int(mask.sum()), slot=slot,
                   received=table.storage_arrays()["values"].astype(np.float64))   # row-major


def sparse_contribution(update: DeviceUpdate, layout: TierLayout,
                        dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A device's update in its tier's layout, as (positions (N,) int64 ascending, values (N,)
    float64) of the vector's nonzero entries."""
    nnz = layout.nnz
    slots = layout.slot[update.entries]                                        # (E,)
    weight = float(update.examples)
    deltas = weight * (update.values.astype(np.float64) - layout.received[slots])
    rows = np.unique(update.entries // dim)
    grow_slots = layout.slot[update.grow_entries]                              # (G,)
    positions = np.concatenate([slots, nnz + rows, nnz + layout.n_items + grow_slots])
    values = np.concatenate([deltas, np.full(len(rows), weight),
                             update.grow_scores.astype(np.float64)])
    return positions.astype(np.int64), values


def open_tier_sums(sums: dict[int, np.ndarray], masks: list[np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tiers' opened sums (tier -> (n_items * (d + 1),) float64) as per-entry totals over
    all tiers: weighted deltas, weights and growth scores, each (n_items, d) float64."""
    shape = masks[0].shape
    weighted_delta, weight, growth = (np.zeros(shape) for _ in range(3))
    for tier, total in sorted(sums.items()):
        mask = masks[tier]
        nnz, n_items = int(mask.sum()), shape[0]
        weighted_delta[mask] += total[:nnz]
        row_weight = total[nnz:nnz + n_items]                                  # (n_items,)
        weight += np.where(mask, row_weight[:, None], 0.0)
        growth[~mask] += total[nnz + n_items:]
    return weighted_delta, weight, growth
