"""Sparse embedding storage: tables that hold only active values, and byte budgets for them."""

from fedsparse.sparse.budget import density_for_budget, nnz_for_budget, spread_mask, table_bytes
from fedsparse.sparse.storage import SparseEmbeddingTable

__all__ = ["SparseEmbeddingTable", "density_for_budget", "nnz_for_budget", "spread_mask",
           "table_bytes"]
