"""The server half of federated SparseRec, in plain NumPy: sparse aggregation, nested tier masks,
and federated NMF by multiplicative updates (DESIGN sections 3.1 and 4).

Flat entry ids are row-major, ``row * dim + col``, over the (n_items, dim) item table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fedsparse.seeding import numpy_rng_for
from fedsparse.sparse.masks import mask_nnz, top_fraction_mask

logger = logging.getLogger(__name__)

#: Added to denominators of the multiplicative updates.
NMF_EPS = 1e-10


@dataclass(frozen=True)
class SparseUpdate:
    """One device's accepted training reply, decoded.

    Attributes
    ----------
    device : int
        Device id (aggregation runs in ascending device id).
    weight : float
        Aggregation weight (the device's training examples).
    entries : np.ndarray
        (E,) int64 sorted distinct flat ids of the values it trained.
    values : np.ndarray
        (E,) float32 its values at ``entries`` after local training.
    grow_entries : np.ndarray
        (G,) int64 distinct flat ids of inactive entries it scores for growth.
    grow_scores : np.ndarray
        (G,) float32 accumulated |grad| at ``grow_entries``.
    """

    device: int
    weight: float
    entries: np.ndarray
    values: np.ndarray
    grow_entries: np.ndarray
    grow_scores: np.ndarray


def aggregate_sparse_updates(global_values: np.ndarray, updates: list[SparseUpdate], *,
                             server_lr: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-entry weighted average of the devices' deltas, applied to the global table.

    For every entry e touched by a set D_e of devices, ``w_e += server_lr * sum_k n_k (v_k,e -
    w_e) / sum_k n_k``; untouched entries keep their value. Devices are folded in ascending
    device id, so the result does not depend on the order replies arrived in.

    Parameters
    ----------
    global_values:
        (n_rows, dim) float32 global table the devices started from.
    updates:
        Accepted replies.
    server_lr:
        Step on the averaged delta.

    Returns
    -------
    tuple of np.ndarray
        The new (n_rows, dim) float32 table and the (n_rows, dim) float64 growth scores of the
        round (summed over devices).
    """
    size = global_values.size
    flat = global_values.reshape(-1).astype(np.float64)
    weighted_delta = np.zeros(size)
    weight = np.zeros(size)
    growth = np.zeros(size)
    for update in sorted(updates, key=lambda u: u.device):
        delta = update.values.astype(np.float64) - flat[update.entries]          # (E,)
        weighted_delta[update.entries] += update.weight * delta
        weight[update.entries] += update.weight
        growth[update.grow_entries] += update.grow_scores
    return (apply_weighted_deltas(global_values, weighted_delta, weight, server_lr=server_lr),
            growth.reshape(global_values.shape))


def apply_weighted_deltas(global_values: np.ndarray, weighted_delta: np.ndarray,
                          weight: np.ndarray, *, server_lr: float = 1.0) -> np.ndarray:
    """``w_e += server_lr * weighted_delta_e / weight_e`` at every entry with weight > 0
    (the sums over devices of ``n_k (v_k,e - w_e)`` and of ``n_k``, any shape of
    ``global_values``' size); returns the new table, float32, shaped as ``global_values``."""
    flat = global_values.reshape(-1).astype(np.float64)
    weighted_delta, weight = weighted_delta.reshape(-1), weight.reshape(-1)
    touched = weight > 0
    flat[touched] += server_lr * weighted_delta[touched] / weight[touched]
    return flat.astype(np.float32).reshape(global_values.shape)


def nested_tier_masks(top_mask: np.ndarray, weights: np.ndarray, growth: np.ndarray,
                      densities: dict[str, float]) -> dict[str, np.ndarray]:
    """One mask per tier, nested: each keeps the top entries of ``top_mask`` by |w|.

    Entries inside ``top_mask`` are ranked by ``1 + |w|`` (so they all outrank the entries
    outside it, which score 0), ties (newly grown entries, at 0) broken by ``growth``. Because
    every tier keeps a prefix of one ranking (each row's best entry first), a smaller tier's
    active set is a subset of a larger tier's; the largest tier gets ``top_mask`` itself.

    Parameters
    ----------
    top_mask:
        (n_rows, dim) bool mask of the densest tier (>= 1 entry per row).
    weights:
        (n_rows, dim) global values.
    growth:
        (n_rows, dim) accumulated growth scores (tie-break).
    densities:
        Tier name -> density, none needing more entries (:func:`mask_nnz`) than ``top_mask``
        has; a tier needing exactly as many gets ``top_mask``.
    """
    scores = np.where(top_mask, 1.0 + np.abs(weights.astype(np.float64)), 0.0)
    top_nnz = int(top_mask.sum())
    masks = {}
    for name, density in densities.items():
        nnz = mask_nnz(*top_mask.shape, density)
        if nnz > top_nnz:
            raise ValueError(f"tier {name}: density {density} needs {nnz} entries, the top mask "
                             f"has {top_nnz}")
        masks[name] = (top_mask.copy() if nnz == top_nnz
                       else top_fraction_mask(scores, density, tie_break=growth))
    return masks


def initial_nmf_row(seed: int, device: int, rank: int) -> np.ndarray:
    """A device's starting NMF row W_u: uniform in [0.5, 1.5) from its own seeded stream."""
    return 0.5 + numpy_rng_for(seed, 0, device, "nmf-w").random(rank)


def initial_nmf_items(seed: int, rank: int, n_items: int) -> np.ndarray:
    """The server's starting H (rank, n_items): uniform in [0.5, 1.5), seeded."""
    return 0.5 + numpy_rng_for(seed, 0, 0, "nmf-h").random((rank, n_items))


def nmf_user_step(w_user: np.ndarray, h_items: np.ndarray, gram_h: np.ndarray) -> np.ndarray:
    """One multiplicative update of a device's own NMF row, ``w <- w * (R_u H^T) / (w H H^T)``.

    Parameters
    ----------
    w_user:
        (d,) the device's current row of W, >= 0.
    h_items:
        (d, n_u) the columns of the current H at the device's items (R_u is 1 there, 0
        elsewhere, so R_u H^T is their sum).
    gram_h:
        (d, d) ``H @ H.T``.
    """
    numerator = h_items.sum(axis=1)                           # (d,) = R_u H^T
    return w_user * numerator / (w_user @ gram_h + NMF_EPS)


def nmf_item_step(h: np.ndarray, numerator: np.ndarray, gram_w: np.ndarray) -> np.ndarray:
    """The server's update ``H <- H * (W^T R) / (W^T W H)`` from the devices' summed statistics.

    Parameters
    ----------
    h:
        (d, n_items) current H.
    numerator:
        (d, n_items) sum over devices of W_u^T R_u (a device's W_u^T R_u is its row ``w_u`` at
        the columns of its items, zero elsewhere).
    gram_w:
        (d, d) sum over devices of W_u^T W_u.
    """
    return h * numerator / (gram_w @ h + NMF_EPS)


def nmf_multiplicative(train: sp.csr_matrix, w: np.ndarray, h: np.ndarray,
                       iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Centralized Lee-Seung multiplicative updates of R ~ W H (W first, then H, per iteration).

    The reference that federated NMF (:func:`nmf_user_step` per device, :func:`nmf_item_step`
    on the summed statistics) reproduces.

    Parameters
    ----------
    train:
        (n_users, n_items) binary matrix.
    w, h:
        (n_users, d) and (d, n_items) non-negative starting factors.
    iterations:
        Updates of both factors.
    """
    r = sp.csr_matrix(train, dtype=np.float64)
    w, h = w.astype(np.float64), h.astype(np.float64)
    for _ in range(iterations):
        w = w * (r @ h.T) / (w @ (h @ h.T) + NMF_EPS)
        h = h * np.asarray(r.T @ w).T / ((w.T @ w) @ h + NMF_EPS)
    return w, h


def nmf_item_scores(h: np.ndarray, gram_w: np.ndarray) -> np.ndarray:
    """(n_items, d) item-table entry scores from H, components balanced as in
    :func:`~fedsparse.sparse.masks.nmf_scores`: each ``H[k]`` is scaled by
    ``sqrt(||W[:, k]|| / ||H[k]||)``, with ``||W[:, k]||^2`` the diagonal of W^T W (which the
    server has from the devices' sums); a component that is zero in either factor scores 0."""
    w_norm = np.sqrt(np.clip(np.diag(gram_w), 0.0, None))               # (d,)
    h_norm = np.linalg.norm(h, axis=1)                                  # (d,)
    live = (w_norm > 0) & (h_norm > 0)
    factor = np.zeros_like(h_norm)
    factor[live] = np.sqrt(w_norm[live] / h_norm[live])
    return (h.T * factor).astype(np.float32)
