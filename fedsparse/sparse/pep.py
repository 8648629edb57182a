"""PEP's search-phase table (Liu et al., "Learnable Embedding Sizes for Recommender Systems",
ICLR 2021): dense values V and one learnable threshold s per row (PEP's "feature-wise"
granularity); the table's entries are the soft-thresholded ``sign(V) * relu(|V| - sigmoid(s))``.
Training lowers entries to exactly zero as the thresholds rise; ``fedsparse.train.dst`` then
prunes to the budget by the thresholded magnitudes and retrains the kept entries from their
initial values (PEP's lottery-ticket retraining).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fedsparse.sparse.dense import DenseEmbeddingTable


class SoftThresholdTable(DenseEmbeddingTable):
    """An (n_rows, dim) dense table with one learnable pruning threshold per row: a
    :class:`~fedsparse.sparse.dense.DenseEmbeddingTable` whose entries are soft-thresholded.

    Parameters
    ----------
    values:
        (n_rows, dim) initial V (copied).
    threshold_init:
        Initial s of every row (sigmoid(s) is the threshold; a very negative s prunes
        nothing at first).
    """

    def __init__(self, values: Tensor, threshold_init: float) -> None:
        super().__init__(values)
        self.threshold = nn.Parameter(torch.full((self.n_rows, 1), float(threshold_init)))

    @staticmethod
    def _soft(values: Tensor, threshold: Tensor) -> Tensor:
        return torch.sign(values) * torch.relu(values.abs() - torch.sigmoid(threshold))

    def gather(self, rows: Tensor) -> Tensor:
        """Soft-thresholded vectors of ``rows`` (B,) -> (B, dim)."""
        return self._soft(self.values[rows], self.threshold[rows])          # (B, dim)

    def to_dense(self) -> Tensor:
        """The (n_rows, dim) soft-thresholded table."""
        return self._soft(self.values, self.threshold)

    def mask(self) -> Tensor:
        """(n_rows, dim) bool: the entries the thresholds have not zeroed."""
        with torch.no_grad():
            return self.to_dense() != 0

    def kept_fraction(self) -> float:
        """Fraction of the entries the thresholds have not zeroed."""
        return float(self.mask().float().mean())

    def memory_bytes(self, optimizer: torch.optim.Optimizer | None = None) -> int:
        """The dense table's bytes plus the thresholds' and, when ``optimizer`` is given, its
        state for them."""
        held = [self.threshold]
        if optimizer is not None:
            state = optimizer.state.get(self.threshold, {})
            held += [value for value in state.values() if isinstance(value, Tensor)]
        return super().memory_bytes(optimizer) + sum(tensor.nbytes for tensor in held)
