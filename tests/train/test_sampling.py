"""The negative sampler: a one-user sampler built from its items draws what the matrix-built
one draws; the filtered lookup of many positives is exact."""

import numpy as np
import torch

from fedsparse.data.dataset import binary_matrix
from fedsparse.seeding import generator_for
from fedsparse.train.sampling import NegativeSampler


def test_a_sampler_for_items_draws_as_one_built_from_their_matrix():
    items = np.array([7, 3, 11, 3, 0])
    matrix = binary_matrix(np.zeros(len(items), dtype=np.int64), items, (1, 12))
    from_matrix, for_items = NegativeSampler(matrix), NegativeSampler.for_items(items, 12)
    users = np.zeros(40, dtype=np.int64)
    a = from_matrix.sample(torch.from_numpy(users), 3, generator_for(0, 1, 2, "t"))
    b = for_items.sample(torch.from_numpy(users), 3, generator_for(0, 1, 2, "t"))
    assert torch.equal(a, b) and not np.isin(b.numpy(), items).any()


def test_the_filtered_lookup_finds_exactly_the_training_positives():
    rng = np.random.default_rng(0)
    n_users, n_items = 400, 1000
    dense = rng.random((n_users, n_items)) < 0.2                  # about 80,000 positives
    users, items = np.nonzero(dense)
    sampler = NegativeSampler(binary_matrix(users, items, (n_users, n_items)))
    assert sampler._filter is not None                            # the filtered path
    all_users, all_items = (torch.from_numpy(a.ravel()) for a in
                            np.meshgrid(np.arange(n_users), np.arange(n_items), indexing="ij"))
    found = sampler._is_positive(all_users, all_items).reshape(n_users, n_items)
    assert np.array_equal(found.numpy(), dense)
    negatives = sampler.sample(torch.arange(n_users).repeat(3), 4, generator_for(0, 1, 0, "n"))
    assert not dense[np.tile(np.arange(n_users), 3)[:, None], negatives.numpy()].any()
