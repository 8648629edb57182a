"""Training updates under secure summation aggregate to what the plain protocol gives."""

import numpy as np
import torch

from fedsparse.federated.secure_sum import decode_fixed, encode_fixed_sparse
from fedsparse.federated.secure_training import (TierLayout, open_tier_sums,
                                                 secure_vector_size, sparse_contribution)
from fedsparse.sparse import SparseEmbeddingTable
from fedsparse.sparse.federated import ServerStep, SparseUpdate, sum_sparse_updates
from fedsparse.train.device import DeviceUpdate

N_ITEMS, DIM, BITS = 30, 8, 40


def random_update(rng, table, mask, weight):
    """A device's update: some touched rows' active entries moved, top inactive entries of
    those rows scored."""
    rows = np.sort(rng.choice(N_ITEMS, size=6, replace=False))
    flat_mask = mask.reshape(-1)
    entries = np.array([r * DIM + c for r in rows for c in range(DIM) if flat_mask[r * DIM + c]])
    received = table.to_dense().detach().numpy().reshape(-1)
    values = (received[entries] + rng.normal(scale=0.1, size=len(entries))).astype(np.float32)
    inactive = np.array([r * DIM + c for r in rows for c in range(DIM)
                         if not flat_mask[r * DIM + c]])
    grow = np.sort(rng.choice(inactive, size=min(5, len(inactive)), replace=False))
    return DeviceUpdate(entries=entries.astype(np.int64), values=values,
                        grow_entries=grow.astype(np.int64),
                        grow_scores=rng.random(len(grow)).astype(np.float32) + 0.1,
                        examples=weight, loss=0.5, train_bytes=100, steps=3)


def test_the_tiers_opened_sums_aggregate_like_the_plain_updates():
    rng = np.random.default_rng(0)
    item = rng.normal(scale=0.1, size=(N_ITEMS, DIM)).astype(np.float32)
    large = rng.random((N_ITEMS, DIM)) < 0.6
    large[:, 0] = True
    small = large & (rng.random((N_ITEMS, DIM)) < 0.5)
    small[:, 0] = True
    masks = [small, large]
    item = np.where(large, item, 0.0).astype(np.float32)
    size = secure_vector_size(N_ITEMS, DIM)
    plain, sums = [], {0: np.zeros(size, np.uint64), 1: np.zeros(size, np.uint64)}
    for device in range(10):
        tier = device % 2
        table = SparseEmbeddingTable.from_dense(torch.from_numpy(item), torch.from_numpy(
            masks[tier]))
        update = random_update(rng, table, masks[tier], weight=int(rng.integers(1, 20)))
        plain.append(SparseUpdate(device=device, weight=float(update.examples),
                                  entries=update.entries, values=update.values,
                                  grow_entries=update.grow_entries,
                                  grow_scores=update.grow_scores))
        positions, values = sparse_contribution(update, TierLayout.of(table), DIM)
        assert np.all(np.diff(positions) > 0) and positions.max() < size
        sums[tier] += encode_fixed_sparse(positions, values, size, BITS)
    plain_delta, plain_weight, expected_growth = sum_sparse_updates(item, plain)
    weighted_delta, weight, growth = open_tier_sums(
        {tier: decode_fixed(total, BITS) for tier, total in sums.items()}, masks)
    step = ServerStep("sgd", item.size, lr=2.0)
    np.testing.assert_allclose(step(item, weighted_delta, weight),
                               step(item, plain_delta, plain_weight), atol=1e-6)
    np.testing.assert_allclose(growth, expected_growth, atol=1e-6)
