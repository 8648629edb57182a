"""When the mask is updated, and what fraction of the active entries each update moves.

A "step" is whatever the engine counts between mask updates: an optimizer step in centralized
training, a round in federated training (DESIGN section 3: every dT steps, or dR rounds).
Both fraction schedules take the same arguments, so either can be passed where the other is.
"""

from __future__ import annotations

import math


def _check(step: int, initial_fraction: float, end_step: int) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0.0 <= initial_fraction <= 1.0:
        raise ValueError(f"initial_fraction must be in [0, 1], got {initial_fraction}")
    if end_step < 1:
        raise ValueError(f"end_step must be >= 1, got {end_step}")


def cosine_update_fraction(step: int, *, initial_fraction: float, end_step: int) -> float:
    """RigL's cosine decay: ``zeta_0 / 2 * (1 + cos(pi * t / T_end))``, and 0 after ``T_end``.

    Parameters
    ----------
    step:
        t >= 0.
    initial_fraction:
        zeta_0 in [0, 1], the fraction at step 0.
    end_step:
        T_end >= 1, the step at which the fraction reaches 0.
    """
    _check(step, initial_fraction, end_step)
    if step >= end_step:
        return 0.0
    return initial_fraction / 2 * (1 + math.cos(math.pi * step / end_step))


def constant_update_fraction(step: int, *, initial_fraction: float, end_step: int) -> float:
    """``initial_fraction`` up to and including ``end_step``, 0 after it."""
    _check(step, initial_fraction, end_step)
    return initial_fraction if step <= end_step else 0.0


def is_update_step(step: int, interval: int, end_step: int) -> bool:
    """True every ``interval`` steps (``step`` a positive multiple of it), up to ``end_step``.

    Never at step 0 (nothing has been trained or accumulated yet) and never after ``end_step``.
    """
    if step < 0 or interval < 1:
        raise ValueError(f"need step >= 0 and interval >= 1, got {step}, {interval}")
    return 0 < step <= end_step and step % interval == 0


def update_count(n_active: int, fraction: float) -> int:
    """Active entries one update moves: ``round(fraction * n_active)``."""
    if n_active < 0 or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"need n_active >= 0 and fraction in [0, 1], got {n_active}, {fraction}")
    return round(fraction * n_active)
