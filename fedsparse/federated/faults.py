"""Simulated device faults: crashes, offline spells and stragglers on a simulated clock.

Every draw is keyed by (seed, round, device, purpose), so a fault happens in the same round on
the same device in every run with the same seed, whichever process asks, including after a
resume. Plain Python and NumPy (no Flower): the device half asks :func:`device_fault` before
a device trains and reports :func:`simulated_seconds`; the server counts a reply that would
arrive after ``fl.deadline_seconds`` as late.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedsparse.seeding import numpy_rng_for

@dataclass(frozen=True)
class FaultModel:
    """What can go wrong with a device in a round (all off by default).

    Attributes
    ----------
    crash_prob : float
        Probability that a sampled device crashes during the round (its work is lost).
    offline_prob : float
        Probability that an online device goes offline at the start of a round.
    offline_rounds : int
        Rounds an offline spell lasts.
    steps_per_second : float
        The device's compute speed: local steps per simulated second.
    speed_jitter : float
        Sigma of the log-normal factor on a round's simulated seconds.
    """

    crash_prob: float = 0.0
    offline_prob: float = 0.0
    offline_rounds: int = 3
    steps_per_second: float = 100.0
    speed_jitter: float = 0.0


def is_offline(fault: FaultModel, seed: int, server_round: int, device: int) -> bool:
    """Whether ``device`` is in an offline spell in ``server_round`` (rounds from 1)."""
    offline_until = 0
    for past in range(1, server_round + 1):
        if past > offline_until and fault.offline_prob > 0.0:
            draw = numpy_rng_for(seed, past, device, "offline").random()
            if draw < fault.offline_prob:
                offline_until = past + fault.offline_rounds - 1
    return server_round <= offline_until


def device_fault(fault: FaultModel, seed: int, server_round: int, device: int) -> str | None:
    """``"offline"``, ``"crash"`` or None (the device does its round)."""
    if is_offline(fault, seed, server_round, device):
        return "offline"
    if fault.crash_prob > 0.0 and \
            numpy_rng_for(seed, server_round, device, "crash").random() < fault.crash_prob:
        return "crash"
    return None


def nmf_dropout(fault: FaultModel, seed: int, iteration: int, device: int) -> bool:
    """Whether ``device`` drops out of federated NMF iteration ``iteration`` (from 1) after its
    key went out and before its masked vector does: with probability ``crash_prob``."""
    return fault.crash_prob > 0.0 and \
        numpy_rng_for(seed, iteration, device, "nmf-crash").random() < fault.crash_prob


def simulated_seconds(fault: FaultModel, steps: int, seed: int, server_round: int,
                      device: int) -> float:
    """Seconds on the simulated clock the device needs for ``steps`` local steps (without
    jitter no draw: a generator per device was 5% of a cohort's LastFM round)."""
    seconds = steps / fault.steps_per_second
    if fault.speed_jitter == 0.0:
        return seconds
    jitter = numpy_rng_for(seed, server_round, device, "speed").standard_normal()
    return seconds * math.exp(fault.speed_jitter * jitter)
