"""Interaction data: LightGCN-format loader, bundled datasets, synthetic generator."""

from fedsparse.data.dataset import (BUNDLED_SIZES, InteractionData, load_dataset,
                                    most_interacted_items, write_dataset)
from fedsparse.data.synthetic import synthetic_dataset

__all__ = ["BUNDLED_SIZES", "InteractionData", "load_dataset", "most_interacted_items",
           "synthetic_dataset", "write_dataset"]
