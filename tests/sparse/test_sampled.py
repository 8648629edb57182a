import numpy as np
import scipy.sparse as sp
import torch

from fedsparse.seeding import generator_for
from fedsparse.sparse.sampled import importance_weights, induced_adjacency, sample_backward_rows


def test_importance_weights_mix_gradient_norms_and_degree_prior():
    degree = torch.tensor([0, 1, 2])
    prior_only = importance_weights(torch.zeros(3), degree)
    torch.testing.assert_close(prior_only, torch.tensor([1 / 6, 2 / 6, 3 / 6], dtype=torch.float64))
    mixed = importance_weights(torch.tensor([0.0, 0.0, 4.0]), degree)
    torch.testing.assert_close(mixed, prior_only + torch.tensor([0, 0, 1], dtype=torch.float64))


def test_sampled_rows_hold_the_batch_plus_extra_distinct_rows():
    weights = torch.ones(50, dtype=torch.float64)
    weights[40:] = 1000.0          # rows 40..49 are far more important
    required = torch.tensor([[3, 7], [7, 45]])

    def draw(step: int) -> torch.Tensor:
        return sample_backward_rows(required, weights, 10, generator_for(0, step, 0, "sample-rows"))

    rows = draw(1)
    assert torch.equal(rows, rows.unique()) and len(rows) == 3 + 10
    assert set(required.flatten().tolist()) <= set(rows.tolist())
    assert (rows >= 40).sum() >= 9            # importance decides what is drawn
    assert torch.equal(draw(1), rows) and not torch.equal(draw(2), rows)
    # Fewer rows left than asked for: all of them.
    few = sample_backward_rows(torch.tensor([0, 2]), torch.ones(6), 10, generator_for(0, 1, 0, "s"))
    assert torch.equal(few, torch.arange(6))


def test_induced_adjacency_is_the_row_and_column_slice():
    dense = np.arange(36, dtype=np.float32).reshape(6, 6) * (np.eye(6)[::-1] + np.eye(6, k=1))
    nodes = torch.tensor([0, 2, 3, 5])
    sub = induced_adjacency(sp.csr_matrix(dense), nodes)
    np.testing.assert_array_equal(sub.to_dense().numpy(), dense[np.ix_(nodes, nodes)])
