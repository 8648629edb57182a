"""Checkpoints: round trip, refusal of corrupt or foreign ones, device state files, and a real
``kill -9`` of a simulation resumed to the same files, byte for byte."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fedsparse.config import dump_config
from fedsparse.errors import FedsparseError
from fedsparse.federated.checkpoint import (LEDGER_ARRAYS, ServerState, load_server_state,
                                            persist_cohort_state, restore_cohort_state,
                                            save_server_state)
from fedsparse.federated.devices import CohortState


def _state(round_=3):
    rng = np.random.default_rng(0)
    return ServerState(
        round=round_, item=rng.normal(size=(5, 4)).astype(np.float32), growth=rng.random((5, 4)),
        optimizer={"m": rng.normal(size=20), "v": rng.random(20)},
        masks={"small": rng.random((5, 4)) < 0.3, "large": rng.random((5, 4)) < 0.6},
        counters={"mask_updates": 1, "skipped_in_a_row": 0, "devices_per_node": 5},
        ledger={key: np.arange(6, dtype=np.int64) for key in LEDGER_ARRAYS},
        evaluation={2: {"recall@20": 0.25, "n-test": 3.0}},
        history=[{"round": 1, "loss": 0.5, "seconds": 1.25}, {"round": 2, "loss": float("nan")}],
        init_seconds=4.5)


def test_server_state_round_trips(tmp_path):
    path = tmp_path / "server.npz"
    save_server_state(path, _state(), "seed = 0\n")
    loaded = load_server_state(path, "seed = 0\n")
    assert loaded.round == 3 and loaded.counters == _state().counters
    assert np.array_equal(loaded.item, _state().item) and loaded.item.dtype == np.float32
    assert list(loaded.masks) == ["small", "large"]
    assert list(loaded.optimizer) == ["m", "v"]
    assert all(np.array_equal(loaded.optimizer[k], _state().optimizer[k]) for k in "mv")
    assert all(np.array_equal(loaded.masks[k], _state().masks[k]) for k in loaded.masks)
    assert loaded.evaluation == {2: {"recall@20": 0.25, "n-test": 3.0}}
    assert loaded.history[0] == {"round": 1, "loss": 0.5, "seconds": 1.25}
    assert np.isnan(loaded.history[1]["loss"]) and loaded.init_seconds == 4.5
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_or_foreign_checkpoints_are_refused_in_one_line(tmp_path):
    path = tmp_path / "server.npz"
    save_server_state(path, _state(), "seed = 0\nname = \"a\"\n")
    with pytest.raises(FedsparseError, match="another config .*was 'seed = 0', now 'seed = 1'"):
        load_server_state(path, "seed = 1\nname = \"a\"\n")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(FedsparseError, match="corrupt or unreadable") as error:
        load_server_state(path, "seed = 0\nname = \"a\"\n")
    assert "\n" not in str(error.value)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(FedsparseError, match="corrupt or unreadable"):
        load_server_state(path, "seed = 0\nname = \"a\"\n")


def test_a_cohort_restores_its_latest_state_the_checkpoint_covers(tmp_path):
    def state(value):
        cohort = CohortState.initial(range(7, 10), seed=0, dim=4, init_std=0.1)
        cohort.step[:] = value
        return cohort.arrays()

    state_dir, devices = str(tmp_path), np.arange(7, 10)
    assert restore_cohort_state(state_dir, devices, 10) is None
    for server_round in (2, 5, 6):
        persist_cohort_state(state_dir, server_round, state(server_round))
    kept = sorted(p.name for p in (tmp_path / "cohort_000007").iterdir())
    assert kept == ["round_000005.npz", "round_000006.npz"]        # the one before is kept
    assert (restore_cohort_state(state_dir, devices, 5)["step"] == 5).all()   # 6 was cut short
    assert (restore_cohort_state(state_dir, devices, 9)["step"] == 6).all()
    assert restore_cohort_state(state_dir, np.arange(8, 10), 9) is None
    with pytest.raises(FedsparseError, match="not this cohort's"):
        restore_cohort_state(state_dir, np.arange(7, 9), 9)


def test_resume_and_unfinished_runs_are_checked_before_anything_starts(fleet_config, tmp_path,
                                                                      capsys):
    from fedsparse.cli import main
    from fedsparse.config import config_toml

    config = tmp_path / "fleet.toml"
    dump_config(fleet_config(), config)
    assert main(["simulate", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no run (no config.toml)" in capsys.readouterr().err

    out = tmp_path / "run"
    save_server_state(out / "checkpoint" / "server.npz", _state(), config_toml(fleet_config()))
    (out / "config.toml").write_text(config_toml(fleet_config()))
    assert main(["simulate", str(config), "--out", str(out)]) == 2
    assert "holds an unfinished run; continue it with --resume" in capsys.readouterr().err
    assert main(["simulate", "--resume", str(out), "--set", "fl.rounds=7"]) == 2
    assert "started with another config (was 'rounds = 2', now 'rounds = 7')" in \
        capsys.readouterr().err
    assert main(["simulate", "--resume", str(out)]) == 2              # devices' files are gone
    assert "devices' state after round 3 cannot be restored" in capsys.readouterr().err
    stopped = _state()
    stopped.counters["skipped_in_a_row"] = 3
    save_server_state(out / "checkpoint" / "server.npz", stopped, config_toml(fleet_config()))
    assert main(["simulate", "--resume", str(out)]) == 1
    assert "stopped after round 3 (3 rounds in a row skipped); it does not resume" in \
        capsys.readouterr().err
    (out / "checkpoint" / "server.npz").write_bytes(b"garbage")
    assert main(["simulate", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "corrupt or unreadable" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------- kill -9
def _simulate(*args, **popen):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.Popen([sys.executable, "-m", "fedsparse.cli", "simulate", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **popen)


def _finish(process, timeout=300):
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]


def _round_in_checkpoint(path):
    try:
        return load_server_state(path, (path.parents[1] / "config.toml").read_text()).round
    except (FedsparseError, FileNotFoundError):
        return 0


@pytest.mark.slow
def test_a_killed_simulation_resumes_to_the_same_files(fleet_config, tmp_path):
    """Killed on cohorts of 5 devices (5, 5, 5, 5, 4), resumed: the files of an uninterrupted
    run with one device per SuperNode (with the server's Adam, whose moments resume too)."""
    fleet = ("fl.rounds=12", "fl.clients_per_round=12", "fl.crash_prob=0.2",
             "fl.speed_jitter=0.5", "fl.deadline_seconds=0.09", "fl.eval_every=5",
             "fl.server_optimizer=adam", "fl.server_lr=0.05")
    config, alone = tmp_path / "fleet.toml", tmp_path / "alone.toml"
    dump_config(fleet_config(*fleet, "fl.devices_per_node=5"), config)
    dump_config(fleet_config(*fleet, "fl.devices_per_node=1"), alone)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _finish(_simulate(str(alone), "--out", str(whole)))

    process = _simulate(str(config), "--out", str(killed))
    checkpoint = killed / "checkpoint" / "server.npz"
    deadline = time.monotonic() + 240
    while _round_in_checkpoint(checkpoint) < 4:
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)                    # kill -9 the whole run
    process.wait()
    assert not (killed / "metrics.json").exists()
    assert _round_in_checkpoint(checkpoint) < 12
    with pytest.raises(subprocess.CalledProcessError):        # no silent restart over it
        subprocess.run([sys.executable, "-m", "fedsparse.cli", "simulate", str(config), "--out",
                        str(killed)], check=True, capture_output=True, timeout=120)

    _finish(_simulate("--resume", str(killed)))
    for name in ("metrics.json", "clients.csv", "model.npz"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
