"""A one-user sampler built from its items draws what the matrix-built one draws."""

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
