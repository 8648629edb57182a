"""Pseudo-items for plain training replies (``fl.privacy.pseudo_items``).

After training, a device adds to its update rows it did not train on, drawn from its own
seeded stream among the items that are neither its positives nor rows it touched, and reports
for each the change of one of its positive rows (drawn too), at the pseudo row's active
entries: to a server that reads the direction of each row's change, a pseudo row looks like a
positive. The device's own training never sees them (they are added to the reply only); the
server aggregates them like any row, which is their cost to the model. Engine-neutral.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from fedsparse.sparse import SparseEmbeddingTable
from fedsparse.train.device import DeviceUpdate


def add_pseudo_items(update: DeviceUpdate, table: SparseEmbeddingTable, positives: np.ndarray,
                     per_positive: float, generator: torch.Generator) -> DeviceUpdate:
    """``update`` with ``round(per_positive * P)`` pseudo rows added, P the positive rows it
    touched; ``table`` is the slice it trained from (the values it received), ``positives``
    its training items."""
    dim = table.dim
    rows = np.unique(update.entries // dim)
    real = rows[np.isin(rows, positives)]
    wanted = int(round(per_positive * len(real)))
    candidates = np.setdiff1d(np.arange(table.n_rows), np.union1d(rows, positives))
    count = min(wanted, len(candidates))
    if count == 0:
        return update
    picks = torch.randperm(len(candidates), generator=generator)[:count].numpy()
    pseudo = np.sort(candidates[picks])                                       # (Q,)
    sources = real[torch.randint(len(real), (count,), generator=generator).numpy()]
    received = table.to_dense().detach().numpy()                             # (n_items, d)
    mask = table.mask().numpy()
    after = received[rows].copy()                                            # (T, d)
    after[mask[rows]] = update.values
    change = {int(row): after[i] - received[row] for i, row in enumerate(rows)}
    columns = mask[pseudo]                                                   # (Q, d) bool
    values = (received[pseudo] + np.stack([change[int(s)] for s in sources]))[columns]
    entries = (pseudo[:, None] * dim + np.arange(dim)[None, :])[columns]      # row-major
    order = np.argsort(np.concatenate([update.entries, entries]), kind="stable")
    return replace(update,
                   entries=np.concatenate([update.entries, entries])[order],
                   values=np.concatenate([update.values, values.astype(np.float32)])[order])
