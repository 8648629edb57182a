"""A trained model's tables at a value precision (``model.value_dtype``, the codec in
:mod:`fedsparse.sparse.precision`): their stored values, bytes and scores."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fedsparse.models import Recommender
from fedsparse.sparse import EmbeddingTable
from fedsparse.sparse.precision import StoredValues, dequantize, quantize
from fedsparse.train.dst import model_tables


def stored_bytes(table: EmbeddingTable, stored: StoredValues) -> int:
    """The table's measured ``memory_bytes()`` with its float32 values replaced by
    ``stored``'s codes and scales (the index is held as it is)."""
    return table.memory_bytes() - table.values.nbytes + stored.nbytes


@contextmanager
def values_at_precision(model: Recommender, dtype: str) -> Iterator[dict[str, StoredValues]]:
    """Within the block, ``model``'s tables hold their values as stored at ``dtype`` (decoded
    back to float32); yields each table's :class:`StoredValues` (``"user"``, ``"item"``).
    The trained values come back afterwards."""
    tables = model_tables(model)
    trained = {name: table.values.detach().clone() for name, table in tables.items()}
    stored = {}
    with torch.no_grad():
        for name, table in tables.items():
            groups, count = table.scale_groups()
            stored[name] = quantize(trained[name].numpy().reshape(-1), groups, count, dtype)
            table.values.copy_(torch.from_numpy(dequantize(stored[name], groups))
                               .reshape(table.values.shape))
    try:
        yield stored
    finally:
        with torch.no_grad():
            for name, table in tables.items():
                table.values.copy_(trained[name])
