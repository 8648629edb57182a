"""Reproducible randomness: every random draw comes from a generator keyed by its purpose.

``generator_for(seed, round, device, purpose)`` derives an independent stream from the run seed,
the round (or epoch), the device (0 for centralized training) and a purpose string, through
NumPy's ``SeedSequence``. The purpose string is turned into an integer with CRC-32, which is
stable across processes (unlike ``hash()``).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _seed_sequence(seed: int, round: int, device: int, purpose: str) -> np.random.SeedSequence:
    if min(seed, round, device) < 0:
        raise ValueError(f"seed, round and device must be >= 0, got {seed}, {round}, {device}")
    return np.random.SeedSequence([seed, round, device, zlib.crc32(purpose.encode())])


def generator_for(seed: int, round: int, device: int, purpose: str) -> torch.Generator:
    """A seeded ``torch.Generator`` (CPU) for one (seed, round, device, purpose)."""
    state = _seed_sequence(seed, round, device, purpose).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def numpy_rng_for(seed: int, round: int, device: int, purpose: str) -> np.random.Generator:
    """A seeded ``numpy.random.Generator`` for one (seed, round, device, purpose)."""
    return np.random.default_rng(_seed_sequence(seed, round, device, purpose))
