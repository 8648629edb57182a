"""PEP's search-phase table (Liu et al., "Learnable Embedding Sizes for Recommender Systems",
ICLR 2021): dense values V and one learnable threshold s per row (PEP's "feature-wise"
granularity); the table's entries are the soft-thresholded ``sign(V) * relu(|V| - sigmoid(s))``.
Training lowers entries to exactly zero as the thresholds rise; ``fedsparse.train.dst`` then
prunes to the budget by the thresholded magnitudes and retrains the kept entries from their
initial values (PEP's lottery-ticket retraining).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class SoftThresholdTable(nn.Module):
    """An (n_rows, dim) dense table with one learnable pruning threshold per row.

    Parameters
    ----------
    values:
        (n_rows, dim) initial V (copied).
    threshold_init:
        Initial s of every row (sigmoid(s) is the threshold; a very negative s prunes
        nothing at first).
    """

    def __init__(self, values: Tensor, threshold_init: float) -> None:
        super().__init__()
        self.n_rows, self.dim = values.shape
        self.values = nn.Parameter(values.detach().float().clone())
        self.threshold = nn.Parameter(torch.full((self.n_rows, 1), float(threshold_init)))

    @staticmethod
    def _soft(values: Tensor, threshold: Tensor) -> Tensor:
        return torch.sign(values) * torch.relu(values.abs() - torch.sigmoid(threshold))

    @property
    def nnz(self) -> int:
        """Number of held values: all of them (the search phase is dense)."""
        return self.values.numel()

    @property
    def density(self) -> float:
        """1.0: the search phase holds every value."""
        return 1.0

    def extra_repr(self) -> str:
        return f"n_rows={self.n_rows}, dim={self.dim}"

    def forward(self, rows: Tensor | None = None) -> Tensor:
        """``gather(rows)``, or the whole table when ``rows`` is None."""
        return self.to_dense() if rows is None else self.gather(rows)

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

    def scale_groups(self) -> tuple[np.ndarray, int]:
        """The precision codec's groups, its rows (as a dense table's)."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), self.dim), self.n_rows

    def floor_bytes(self) -> int:
        """4 bytes per value."""
        return 4 * self.nnz

    def memory_bytes(self, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Bytes of the values and thresholds plus, when ``optimizer`` is given, its state for
        both."""
        held = [self.values, self.threshold]
        if optimizer is not None:
            for parameter in (self.values, self.threshold):
                state = optimizer.state.get(parameter, {})
                held += [value for value in state.values() if isinstance(value, Tensor)]
        return sum(tensor.nbytes for tensor in held)
