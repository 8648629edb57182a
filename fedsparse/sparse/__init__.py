"""Sparse embedding storage, byte budgets, and the mask machinery of dynamic sparse training."""

from fedsparse.sparse.budget import (dense_bytes, dense_dim_for_budget, density_for_budget,
                                     nnz_for_budget, prefix_width_for_budget, spread_mask,
                                     table_bytes)
from fedsparse.sparse.dense import DenseEmbeddingTable, EmbeddingTable
from fedsparse.sparse.masks import (mask_nnz, nmf_masks, nmf_scores, prefix_mask, random_mask,
                                    top_fraction_mask)
from fedsparse.sparse.schedules import (constant_update_fraction, cosine_update_fraction,
                                        is_update_step, update_count)
from fedsparse.sparse.storage import SparseEmbeddingTable
from fedsparse.sparse.update import (GradientAccumulator, MaskUpdate, apply_update,
                                     gradient_scores, magnitude_scores, random_scores,
                                     update_mask)

__all__ = ["DenseEmbeddingTable", "EmbeddingTable", "GradientAccumulator", "MaskUpdate",
           "SparseEmbeddingTable", "apply_update", "constant_update_fraction",
           "cosine_update_fraction", "dense_bytes", "dense_dim_for_budget", "density_for_budget", "gradient_scores", "is_update_step",
           "magnitude_scores", "mask_nnz", "nmf_masks", "nmf_scores", "nnz_for_budget",
           "prefix_mask", "prefix_width_for_budget", "random_mask", "random_scores",
           "spread_mask", "table_bytes", "top_fraction_mask", "update_count", "update_mask"]
