"""Secure summation by pairwise additive masking (Bonawitz et al., CCS 2017, without the double
mask), for the federated NMF statistics and the training updates (DESIGN section 4.2).

Every device encodes its contribution in fixed point in the ring of integers mod 2^64 and adds
one mask per neighbour in a seeded mask graph (the union of ``neighbours / 2`` random rings:
:func:`mask_graph`): the mask of a pair comes from a secret only the two devices share (an
X25519 key agreement relayed by the server, then HKDF), expanded by AES-256-CTR, added by the
lower device id and subtracted by the higher one, so the masks cancel in the sum. A single
masked contribution is uniformly distributed: the server learns only sums.

Dropouts: a device that sent its key but not its masked vector leaves its pairs' masks in the
sum; each surviving neighbour then reveals the secret of its pair with the dropped device
(never one with a survivor), and the server removes those masks. The survivors split into the
connected components of the graph without the dropped devices; only components of at least
``min_aggregate`` devices are summed (a smaller one would be unmasked, so it is left out whole).

Threat model: an honest-but-curious server that follows the protocol and does not collude with
all of a device's peers (who together hold every mask on its vector). A server that lies about who
dropped could unmask a device; Flower's SecAgg+ adds a self-mask against that (see the README
for why it is not used here).

Plain NumPy and ``cryptography`` (no Flower).
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


#: Bytes of a private key, a public key and a pair secret.
KEY_BYTES = 32
#: Largest |value| * 2^fraction_bits a contribution may encode (a sum must stay below it too:
#: :func:`decode_fixed` checks).
_ENCODE_LIMIT = 2.0 ** 62


def encode_fixed(values: np.ndarray, fraction_bits: int) -> np.ndarray:
    """``round(values * 2^fraction_bits)`` as uint64 (two's complement, mod 2^64).

    Raises
    ------
    ValueError
        A value that is not finite or too large for the ring.
    """
    scaled = np.asarray(values, dtype=np.float64) * 2.0 ** fraction_bits
    if not np.all(np.abs(scaled) < _ENCODE_LIMIT):
        raise ValueError(f"secure sum: a value is not finite or exceeds 2^{62 - fraction_bits}")
    return np.rint(scaled).astype(np.int64).view(np.uint64)


def encode_fixed_sparse(positions: np.ndarray, values: np.ndarray, size: int,
                        fraction_bits: int) -> np.ndarray:
    """The (size,) uint64 :func:`encode_fixed` of a vector that is ``values`` at
    ``positions`` and 0 elsewhere."""
    encoded = np.zeros(size, dtype=np.uint64)
    encoded[positions] = encode_fixed(values, fraction_bits)
    return encoded


def decode_fixed(total: np.ndarray, fraction_bits: int) -> np.ndarray:
    """A sum of :func:`encode_fixed` vectors (uint64, mod 2^64) back to float64.

    Raises
    ------
    ValueError
        A sum within a factor 2 of the ring's limit, where it may have wrapped around.
    """
    signed = total.view(np.int64)
    if signed.size and np.abs(signed).max() >= 2 ** 62:
        raise ValueError(f"secure sum: a sum reached 2^{62 - fraction_bits} and may have "
                         f"wrapped; lower fl.privacy.fraction_bits")
    return signed.astype(np.float64) / 2.0 ** fraction_bits


@dataclass(frozen=True)
class KeyPair:
    """A device's X25519 key pair for one secure-sum phase (raw 32-byte encodings)."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh key pair from the operating system's randomness.

        Not from the run's seed, which the server knows: the keys only decide masks that cancel
        in the sum, so results stay reproducible.
        """
        return cls.from_private(os.urandom(KEY_BYTES))

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        """The key pair of a 32-byte X25519 private key."""
        key = X25519PrivateKey.from_private_bytes(private)
        return cls(private=key.private_bytes_raw(),
                   public=key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def pair_secret(private: bytes, peer_public: bytes) -> bytes:
    """The 32-byte secret two devices share: X25519(own private, peer public), then HKDF."""
    if len(peer_public) != KEY_BYTES:
        raise ValueError(f"secure sum: a public key has {len(peer_public)} bytes, not {KEY_BYTES}")
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=b"fedsparse secure sum").derive(shared)


def pair_secrets(keys: KeyPair, peers: dict[int, bytes]) -> dict[int, bytes]:
    """Peer -> :func:`pair_secret` of ``keys`` with each of ``peers`` (peer -> public key)."""
    return {peer: pair_secret(keys.private, public) for peer, public in peers.items()}


#: Entries of a vector masked at a time (256 KB): the block of the vector and of a pair's
#: keystream stay in the CPU's cache while every pair's keystream for it is made and added,
#: where a whole keystream (2.3 MB for the LastFM fleet's training vectors, 21 MB for full
#: Gowalla's) goes out to memory and back before it is added, and so does the vector for every
#: pair. On 2 cores, one pair's mask in blocks took 0.91 (LastFM) and 0.61 (Gowalla) of the
#: time of its whole keystream; all of a cohort's pairs block by block then took 0.54 to 0.69
#: of the time of one pair after the other (a LastFM tier of 313 devices, 2 pairs each).
KEYSTREAM_BLOCK = 1 << 15


@lru_cache(maxsize=4)
def _zero_bytes(size: int) -> memoryview:
    """A read-only buffer of ``size`` zero bytes, the plaintext of every keystream."""
    return memoryview(bytes(size))


def add_masks(total: np.ndarray, masks: list[tuple[bytes, bool]], step: int) -> None:
    """Add the masks of some pairs in step ``step`` to ``total`` (uint64) in place, each
    ``(secret, subtract)`` subtracted when ``subtract``, wrapping mod 2^64. A pair's mask is the
    AES-256-CTR keystream of its secret with the step as nonce (a fresh mask every step from one
    key agreement), made and added :data:`KEYSTREAM_BLOCK` entries at a time, every pair's in a
    block before the next block."""
    nonce = step.to_bytes(16, "little")
    encryptors = [(Cipher(algorithms.AES(secret), modes.CTR(nonce)).encryptor(), subtract)
                  for secret, subtract in masks]
    block = np.empty(min(KEYSTREAM_BLOCK, total.size), dtype=np.uint64)
    for start in range(0, total.size, KEYSTREAM_BLOCK):
        part = total[start:start + KEYSTREAM_BLOCK]                   # a view: updated in place
        stream = block[:part.size]
        zeros, out = _zero_bytes(block.nbytes)[:stream.nbytes], memoryview(stream).cast("B")
        for encryptor, subtract in encryptors:
            written = encryptor.update_into(zeros, out)
            if written != stream.nbytes:
                raise RuntimeError(f"secure sum: keystream of {written} bytes, expected "
                                   f"{stream.nbytes}")
            if subtract:
                part -= stream
            else:
                part += stream


def device_masks(device: int, secrets: dict[int, bytes]) -> list[tuple[bytes, bool]]:
    """The masks of ``device``'s pairs (peer -> secret) as :func:`add_masks` takes them: added
    where the device has the lower id, subtracted where it has the higher, so they cancel in
    the sum."""
    return [(secrets[peer], device > peer) for peer in sorted(secrets)]


def mask_contribution(encoded: np.ndarray, device: int, secrets: dict[int, bytes],
                      step: int) -> np.ndarray:
    """``encoded`` (uint64) plus the masks of ``device``'s pairs (:func:`device_masks`)."""
    masked = encoded.copy()
    add_masks(masked, device_masks(device, secrets), step)
    return masked


def mask_for_peers(encoded: np.ndarray, device: int, keys: KeyPair, peers: dict[int, bytes],
                   step: int) -> np.ndarray:
    """``device``'s masked vector: ``encoded`` plus the masks it shares with each of its
    ``peers`` (peer -> public key), from its own ``keys``."""
    return mask_contribution(encoded, device, pair_secrets(keys, peers), step)


def masked_cohort_sum(size: int, contributions: dict[int, tuple[np.ndarray, np.ndarray]],
                      keys: dict[int, KeyPair], peers: dict[int, dict[int, bytes]], step: int,
                      fraction_bits: int) -> np.ndarray:
    """The sum (size,) uint64 of the masked vectors of the devices that one party adds up
    before sending (a SuperNode's cohort): each device's ``contributions`` (``values`` at the
    distinct ``positions``, encoded as :func:`encode_fixed_sparse` does) plus the masks it
    shares with its ``peers`` (device -> peer -> public key) from its ``keys``, what
    :func:`mask_for_peers` of each would add up to; pairs among the devices are not masked
    (:func:`peers_outside`)."""
    total = np.zeros(size, dtype=np.uint64)
    masks: list[tuple[bytes, bool]] = []
    for device, (positions, values) in sorted(contributions.items()):
        total[positions] += encode_fixed(values, fraction_bits)
        masks += device_masks(device, pair_secrets(keys[device],
                                                   peers_outside(peers[device], contributions)))
    add_masks(total, masks, step)
    return total


def peers_outside(peers: dict[int, bytes], summed: Collection[int]) -> dict[int, bytes]:
    """The ``peers`` (peer -> public key) not among ``summed``, the devices whose masked
    vectors one party adds up before sending (a SuperNode's cohort): a pair inside it adds and
    subtracts the same mask there, which cancels exactly (mod 2^64), so neither is made."""
    return {peer: public for peer, public in peers.items() if peer not in summed}


def mask_graph(devices: list[int], neighbours: int,
               rng: np.random.Generator) -> dict[int, list[int]]:
    """The mask graph: the union of ``neighbours / 2`` random rings over ``devices`` (each ring
    an order drawn from ``rng``, each device paired with the devices before and after it), so
    a device has at most ``neighbours`` peers (fewer where two rings pair it with the same
    peer); every device paired with all others when there are too few. Device -> sorted peers.

    Random rings keep the survivors of dropouts connected where one ring with ``neighbours /
    2`` on either side falls apart: with 1,878 devices and ``neighbours = 4``, 30% dropped
    leaves 99% of the survivors in components of 100 or more (one ring: none), 50% dropped 85%.
    """
    order = np.asarray(devices, dtype=np.int64)
    count = len(order)
    peers: dict[int, set[int]] = {int(device): set() for device in order}
    if count - 1 <= neighbours:
        return {device: sorted(set(peers) - {device}) for device in peers}
    for _ in range(neighbours // 2):
        ring = rng.permutation(order)
        for device, other in zip(ring.tolist(), np.roll(ring, -1).tolist()):
            peers[device].add(other)
            peers[other].add(device)
    return {device: sorted(linked) for device, linked in peers.items()}


def summed_components(peers: dict[int, list[int]], survivors: set[int],
                      min_aggregate: int) -> list[list[int]]:
    """The connected components of the mask graph without the dropped devices that have at
    least ``min_aggregate`` survivors (each a sorted device list): the sums the server may
    learn."""
    nodes = sorted(survivors)
    if not nodes:
        return []
    index = {device: position for position, device in enumerate(nodes)}
    edges = [(index[a], index[b]) for a in nodes for b in peers[a] if b in index]
    rows, cols = (np.array(side, dtype=np.int64) for side in zip(*edges)) if edges else \
        (np.zeros(0, np.int64), np.zeros(0, np.int64))
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for device, label in zip(nodes, labels):
        groups.setdefault(int(label), []).append(device)
    return [group for group in groups.values() if len(group) >= min_aggregate]


def dangling_masks(revealed: dict[tuple[int, int], bytes], step: int, size: int) -> np.ndarray:
    """What the survivors' masks with dropped peers add to their sum, from the revealed
    secrets ((survivor, dropped) -> secret); subtract it from the sum."""
    total = np.zeros(size, dtype=np.uint64)
    add_masks(total, [(secret, survivor > dropped)
                      for (survivor, dropped), secret in sorted(revealed.items())], step)
    return total
