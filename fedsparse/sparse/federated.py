"""The server half of federated SparseRec, in plain NumPy: sparse aggregation, nested tier masks,
and federated NMF by multiplicative updates (DESIGN sections 3.1 and 4).

Flat entry ids are row-major, ``row * dim + col``, over the (n_items, dim) item table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fedsparse.config import SERVER_OPTIMIZERS
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


def sum_sparse_updates(global_values: np.ndarray, updates: list[SparseUpdate]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The round's per-entry sums over the devices' replies, what :class:`ServerStep` applies.

    Devices are folded in ascending device id, so the sums do not depend on the order replies
    arrived in.

    Parameters
    ----------
    global_values:
        (n_rows, dim) float32 global table the devices started from.
    updates:
        Accepted replies.

    Returns
    -------
    tuple of np.ndarray
        Flat (n_rows * dim,) float64 sums of ``n_k (v_k,e - w_e)`` and of ``n_k`` over the
        devices k that trained entry e (zero elsewhere), and the (n_rows, dim) float64 growth
        scores of the round (summed over devices).
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
    return weighted_delta, weight, growth.reshape(global_values.shape)


#: The server Adam's moment decays (FedAdam's defaults).
SERVER_BETAS = (0.9, 0.99)


class ServerStep:
    """The server's step on each entry's weighted mean delta ``d_e = sum_k n_k (v_k,e - w_e) /
    sum_k n_k``, at the entries some device trained (the others keep their value).

    ``"sgd"``: ``w_e += lr d_e``. ``"adam"``: per-entry Adam with ``d_e`` as its gradient
    (FedAdam, Reddi et al., "Adaptive Federated Optimization", ICLR 2021, without bias
    correction): ``m_e = b1 m_e + (1 - b1) d_e``, ``v_e = b2 v_e + (1 - b2) d_e^2``,
    ``w_e += lr m_e / (sqrt(v_e) + eps)``; the moments of untrained entries stay as they are.

    Parameters
    ----------
    kind:
        ``"sgd"`` or ``"adam"``.
    size:
        Entries of the table (``n_rows * dim``).
    lr:
        The step (``fl.server_lr``).
    eps:
        Adam's epsilon (``fl.server_eps``).
    """

    def __init__(self, kind: str, size: int, lr: float, eps: float = 1e-3) -> None:
        if kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"server optimizer {kind!r}: expected one of {SERVER_OPTIMIZERS}")
        self.kind, self.lr, self.eps = kind, lr, eps
        self.moments = ({"m": np.zeros(size), "v": np.zeros(size)} if kind == "adam" else {})

    def __call__(self, global_values: np.ndarray, weighted_delta: np.ndarray,
                 weight: np.ndarray) -> np.ndarray:
        """The new table (float32, shaped as ``global_values``) from the round's sums (any
        shape of ``global_values``' size: :func:`sum_sparse_updates`, or opened secure sums)."""
        flat = global_values.reshape(-1).astype(np.float64)
        weighted_delta, weight = weighted_delta.reshape(-1), weight.reshape(-1)
        touched = np.flatnonzero(weight > 0)
        mean = weighted_delta[touched] / weight[touched]                       # (T,)
        if self.kind == "sgd":
            flat[touched] += self.lr * mean
        else:
            beta1, beta2 = SERVER_BETAS
            m, v = self.moments["m"], self.moments["v"]
            m[touched] = beta1 * m[touched] + (1.0 - beta1) * mean
            v[touched] = beta2 * v[touched] + (1.0 - beta2) * mean ** 2
            flat[touched] += self.lr * m[touched] / (np.sqrt(v[touched]) + self.eps)
        return flat.astype(np.float32).reshape(global_values.shape)

    def forget(self, dropped: np.ndarray) -> None:
        """Reset the moments of the entries a mask update dropped (bool, the table's size)."""
        for moment in self.moments.values():
            moment[dropped.reshape(-1)] = 0.0


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
