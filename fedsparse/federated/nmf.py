"""Federated NMF under secure summation: the device half and the server half (DESIGN 4.2).

H's update needs only the sums over devices of W_u^T R_u (d, n_items) and W_u^T W_u (d, d).
Each device computes its row W_u from H itself, encodes the two as one fixed-point vector
(:func:`nmf_contribution`) and sends it masked (:mod:`fedsparse.federated.secure_sum`); the
server adds the masked vectors up, removes the masks of dropped devices' pairs from the secrets
their neighbours reveal, and sees only the sum over at least ``fl.privacy.min_aggregate``
devices. Nothing a device sends names its items: down comes the whole H, up a uniform-looking
vector of fixed length.

Engine-neutral (no Flower): the engine (:mod:`fedsparse.fl`) carries these calls' inputs and
outputs in its messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsparse.data import InteractionData
from fedsparse.federated.devices import items_of
from fedsparse.federated.faults import FaultModel, nmf_dropout
from fedsparse.federated.secure_sum import (KeyPair, masked_cohort_sum, pair_secrets,
                                            summed_components)
from fedsparse.sparse.federated import (initial_nmf_items, initial_nmf_row, nmf_item_step,
                                        nmf_user_step)


def contribution_size(rank: int, n_items: int) -> int:
    """Length of a device's NMF contribution: W_u^T R_u (rank, n_items), then W_u^T W_u."""
    return rank * n_items + rank * rank


def nmf_contribution(w_user: np.ndarray, items: np.ndarray,
                     n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """A device's W_u^T R_u and W_u^T W_u, flattened and concatenated, as the (positions (N,)
    int64, values (N,) float64) of the vector's nonzero entries (of
    :func:`contribution_size`; distinct positions).

    ``w_user`` (d,) is its row; R_u is 1 at ``items`` (distinct) and 0 elsewhere, so W_u^T R_u
    is ``w_user`` in the columns of its items.
    """
    rank = len(w_user)
    columns = (np.arange(rank)[:, None] * n_items + items[None, :]).reshape(-1)   # (d * n_u,)
    positions = np.concatenate([columns, rank * n_items + np.arange(rank * rank)])
    values = np.concatenate([np.repeat(w_user, len(items)), np.outer(w_user, w_user).ravel()])
    return positions, values


@dataclass(frozen=True)
class MaskedStep:
    """What the devices of a cohort need for one masked NMF step.

    Attributes
    ----------
    step : int
        The iteration (from 1), the masks' nonce.
    h : np.ndarray | None
        (d, n_items) the server's H; None in the first step (each device makes the seeded H0).
    peers : dict[int, dict[int, bytes]]
        Device -> its mask peers' public keys.
    fraction_bits : int
        Fixed-point fraction bits.
    """

    step: int
    h: np.ndarray | None
    peers: dict[int, dict[int, bytes]]
    fraction_bits: int


def nmf_row_steps(data: InteractionData, users: np.ndarray, rows: dict[int, np.ndarray],
                  devices: list[int], seed: int, rank: int, task: MaskedStep,
                  fault: FaultModel) -> list[int]:
    """One NMF step of each of ``devices``: it updates its own row W_u (``rows``, in place)
    from the task's H. Returns those that send (ascending); a device that drops out in this
    step (:func:`~fedsparse.federated.faults.nmf_dropout`) keeps its row and sends nothing."""
    h = initial_nmf_items(seed, rank, data.n_items) if task.h is None else task.h
    if h.shape != (rank, data.n_items):
        raise ValueError(f"federated NMF: H has shape {h.shape}, expected {(rank, data.n_items)}")
    gram_h = h @ h.T                                                       # (d, d)
    senders = [device for device in sorted(devices)
               if not nmf_dropout(fault, seed, task.step, device)]
    for device in senders:
        items = items_of(data, "train", int(users[device]))
        w_user = rows[device] if device in rows else initial_nmf_row(seed, device, rank)
        rows[device] = nmf_user_step(w_user, h[:, items], gram_h)          # h[:, items] (d, n_u)
    return senders


def masked_nmf_sum(data: InteractionData, users: np.ndarray, rows: dict[int, np.ndarray],
                   keys: dict[int, KeyPair], devices: list[int], rank: int,
                   task: MaskedStep) -> np.ndarray:
    """The sum (uint64, mod 2^64) of ``devices``' masked contributions from their current
    rows: what they send, added up by the cohort that simulates them (pairs among ``devices``
    are not masked, their masks would cancel in the sum:
    :func:`~fedsparse.federated.secure_sum.peers_outside`)."""
    contributions = {device: nmf_contribution(
        rows[device], items_of(data, "train", int(users[device])), data.n_items)
        for device in devices}
    return masked_cohort_sum(contribution_size(rank, data.n_items), contributions, keys,
                             task.peers, task.step, task.fraction_bits)


def reveal_secrets(keys: dict[int, KeyPair], device: int, dropped: dict[int, bytes],
                   component_size: int, min_aggregate: int) -> dict[int, bytes]:
    """The secrets of ``device``'s pairs with its ``dropped`` peers (peer -> public key), so
    that the server can remove their masks; refused unless the sum they open covers at least
    ``min_aggregate`` devices.

    Raises
    ------
    ValueError
        ``component_size`` below ``min_aggregate``.
    """
    if component_size < min_aggregate:
        raise ValueError(f"secure sum: asked to open a sum over {component_size} devices, "
                         f"fewer than fl.privacy.min_aggregate = {min_aggregate}")
    return pair_secrets(keys[device], dropped)


@dataclass(frozen=True)
class Unmasking:
    """How the server opens one step's sum, given who sent (:func:`plan_unmasking`).

    Attributes
    ----------
    components : list[list[int]]
        The survivors' components of the mask graph with at least ``min_aggregate`` devices:
        the sums that are opened.
    excluded : list[int]
        Survivors in smaller components: their masked vectors are taken back out of the sum.
    reveal : dict[int, list[int]]
        Surviving device (in a kept component) -> its dropped peers, whose pair secrets it
        reveals.
    """

    components: list[list[int]]
    excluded: list[int]
    reveal: dict[int, list[int]]

    def component_size(self, device: int) -> int:
        """Devices in the opened sum ``device`` belongs to."""
        return next(len(group) for group in self.components if device in group)


def plan_unmasking(peers: dict[int, list[int]], survivors: set[int],
                   min_aggregate: int) -> Unmasking:
    """Which sums to open and which secrets to ask for, when ``survivors`` sent their masked
    vectors and the other devices of the mask graph ``peers`` did not."""
    components = summed_components(peers, survivors, min_aggregate)
    kept = {device for group in components for device in group}
    reveal = {device: [peer for peer in peers[device] if peer not in survivors]
              for device in sorted(kept)}
    return Unmasking(components=components, excluded=sorted(survivors - kept),
                     reveal={device: dropped for device, dropped in reveal.items() if dropped})


def nmf_server_step(h: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H's update from the opened sum ``total`` (float64, :func:`contribution_size`): returns
    the new H (d, n_items) and W^T W (d, d)."""
    rank, n_items = h.shape
    numerator = total[:rank * n_items].reshape(rank, n_items)               # sum W_u^T R_u
    gram = total[rank * n_items:].reshape(rank, rank)                       # sum W_u^T W_u
    return nmf_item_step(h, numerator, gram), gram
