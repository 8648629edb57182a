"""Sparse backward by sampling important rows (DESIGN section 3, idea 3).

Each step, gradient flows only into a set S of rows: the batch's own rows plus ``extra`` rows
drawn without replacement with probability proportional to an importance weight. The weight
mixes two normalised terms: the row's accumulated gradient norm (rows that mattered before) and
a degree prior ``degree + 1`` (so rows never touched yet, isolated ones included, can be drawn).

For LightGCN, the model propagates once over the whole graph without autograd and adds a
gradient path over the subgraph induced by S only (:func:`induced_adjacency`); see
``fedsparse.models.lightgcn.LightGCN.loss``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


def importance_weights(grad_norms: Tensor, degree: Tensor) -> Tensor:
    """Sampling weights over rows: ``g / sum(g) + (degree + 1) / sum(degree + 1)``.

    Parameters
    ----------
    grad_norms:
        (N,) >= 0 accumulated gradient norm of each row (all zero before any step).
    degree:
        (N,) >= 0 degree of each row in the interaction graph.

    Returns
    -------
    Tensor
        (N,) float64, every entry > 0.
    """
    prior = degree.double() + 1.0
    weights = prior / prior.sum()
    total = float(grad_norms.sum())
    if total > 0:
        weights = weights + grad_norms.double() / total
    return weights


def sample_backward_rows(required: Tensor, weights: Tensor, extra: int,
                         generator: torch.Generator) -> Tensor:
    """The rows that get gradient this step: ``required`` plus ``extra`` rows drawn by weight.

    Parameters
    ----------
    required:
        Row ids that must be in the set (any shape, may repeat): the batch's rows.
    weights:
        (N,) > 0 sampling weights over all rows (see :func:`importance_weights`).
    extra:
        Rows to draw without replacement from the others (fewer when fewer are left).
    generator:
        Seeded generator of the draw.

    Returns
    -------
    Tensor
        (|S|,) int64, sorted and distinct.
    """
    required = torch.unique(required.reshape(-1).long())                  # (R,) sorted
    available = weights.double().clone()
    available[required] = 0.0
    count = min(extra, int((available > 0).sum()))
    if count == 0:
        return required
    drawn = torch.multinomial(available, count, replacement=False, generator=generator)  # (extra,)
    return torch.unique(torch.cat([required, drawn]))


def induced_adjacency(adjacency: sp.csr_matrix, nodes: Tensor) -> Tensor:
    """``adjacency`` restricted to rows and columns ``nodes``, as a coalesced torch COO tensor.

    Parameters
    ----------
    adjacency:
        (N, N) scipy CSR matrix.
    nodes:
        (S,) int64 node ids.

    Returns
    -------
    Tensor
        (S, S) float32 sparse, entry (a, b) = ``adjacency[nodes[a], nodes[b]]``.
    """
    index = nodes.cpu().numpy()
    sub = adjacency[index][:, index].tocoo()                              # (S, S)
    coordinates = torch.from_numpy(np.vstack([sub.row, sub.col]).astype(np.int64))
    values = torch.from_numpy(sub.data.astype(np.float32))
    return torch.sparse_coo_tensor(coordinates, values, (len(index), len(index)),
                                   check_invariants=False).coalesce()
