"""Simulated device faults: seeded, with the configured rates and spell lengths."""

import numpy as np
import pytest

from fedsparse.federated.faults import FaultModel, device_fault, is_offline, simulated_seconds


def test_faults_are_the_same_in_every_run():
    fault = FaultModel(crash_prob=0.3, offline_prob=0.1, offline_rounds=2)
    draws = [[device_fault(fault, 7, r, d) for d in range(50)] for r in range(1, 6)]
    assert draws == [[device_fault(fault, 7, r, d) for d in range(50)] for r in range(1, 6)]
    assert draws != [[device_fault(fault, 8, r, d) for d in range(50)] for r in range(1, 6)]


@pytest.mark.parametrize("probability", [0.1, 0.3, 0.5])
def test_crash_rate_is_the_configured_probability(probability):
    fault = FaultModel(crash_prob=probability)
    crashes = [device_fault(fault, 0, r, d) == "crash" for r in range(1, 5) for d in range(1000)]
    assert abs(np.mean(crashes) - probability) < 0.03


def test_no_faults_by_default():
    assert all(device_fault(FaultModel(), 0, r, d) is None for r in range(1, 4) for d in range(200))


def test_offline_spells_last_the_configured_rounds():
    fault = FaultModel(offline_prob=0.05, offline_rounds=3)
    lengths = []
    for device in range(60):
        offline = [is_offline(fault, 0, r, device) for r in range(1, 21)]
        run = 0
        for state in offline:                     # spells still running at round 20 left out
            if state:
                run += 1
            elif run:
                lengths.append(run)
                run = 0
    assert len(lengths) >= 10 and min(lengths) >= 3
    assert device_fault(fault, 0, 5, 0) == ("offline" if is_offline(fault, 0, 5, 0) else None)


def test_simulated_seconds_are_steps_over_speed_times_a_seeded_jitter():
    assert simulated_seconds(FaultModel(steps_per_second=20.0), 10, 0, 1, 3) == 0.5
    jittery = FaultModel(steps_per_second=20.0, speed_jitter=0.5)
    times = [simulated_seconds(jittery, 10, 0, 1, d) for d in range(500)]
    assert times == [simulated_seconds(jittery, 10, 0, 1, d) for d in range(500)]
    assert min(times) < 0.5 < max(times)
    assert abs(np.median(np.log(times)) - np.log(0.5)) < 0.1
