"""Checkpoints of a fleet run, and the devices' own state files, for exact resume.

In a simulation, after every round but the last, the server writes
``<out>/checkpoint/server.npz`` atomically (a temporary file, flushed, then renamed): the
global item table, each tier's mask, the growth accumulator, the server step's moments, the
round, the mask-update and skipped-round counters, the accounting ledger and the history so
far, and the resolved config it belongs to. Random streams need no saved state: every draw is
keyed by (seed, round, device, purpose), so the round number is the generators' state.

Each cohort of devices (those one SuperNode simulates; one device in a deployment) persists its
devices' private state (user rows and Adam moments) after each round it trains, to
``<state dir>/cohort_<first device>/round_<r>.npz``, and keeps the previous file: a cohort
restarted after a crash loads the newest file of a round the server's checkpoint covers, so a
round that was cut short by a kill is redone from the same state.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsparse.errors import FedsparseError
from fedsparse.report.results import write_atomically

FORMAT = 1
LEDGER_ARRAYS = ("up_bytes", "up_payload_bytes", "down_bytes", "messages", "rounds",
                 "max_train_bytes")


@dataclass
class ServerState:
    """What the server needs to continue a run after ``round``.

    Attributes
    ----------
    round : int
        The last round completed (aggregated, evaluated if due).
    item : np.ndarray
        (n_items, d) float32 global item table.
    growth : np.ndarray
        (n_items, d) accumulated growth scores since the last mask update.
    optimizer : dict[str, np.ndarray]
        The server step's per-entry state (``ServerStep.moments``: Adam's ``m`` and ``v``;
        none for SGD).
    masks : dict[str, np.ndarray]
        Tier name -> (n_items, d) bool mask.
    counters : dict[str, int]
        ``mask_updates``, ``skipped_in_a_row``.
    ledger : dict[str, np.ndarray]
        The per-device arrays of :data:`LEDGER_ARRAYS`.
    evaluation : dict[int, dict[str, float]]
        Each evaluated device's last metrics.
    history : list[dict[str, Any]]
        One row per completed round.
    init_seconds : float
        Seconds the mask initialisation took in the first run.
    """

    round: int
    item: np.ndarray
    growth: np.ndarray
    optimizer: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    counters: dict[str, int]
    ledger: dict[str, np.ndarray]
    evaluation: dict[int, dict[str, float]]
    history: list[dict[str, Any]]
    init_seconds: float


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``arrays`` as the bytes of an (uncompressed) ``.npz`` archive."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_server_state(path: Path, state: ServerState, config_text: str) -> None:
    """Write ``state`` (belonging to the run of ``config_text``) to ``path`` atomically."""
    meta = {"format": FORMAT, "round": state.round, "config": config_text,
            "counters": state.counters, "init_seconds": state.init_seconds,
            "evaluation": {str(device): values for device, values in state.evaluation.items()},
            "history": state.history, "tiers": list(state.masks),
            "optimizer": list(state.optimizer)}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
              "item": state.item, "growth": state.growth,
              **{f"optimizer_{name}": moment for name, moment in state.optimizer.items()},
              **{f"mask_{index}": mask for index, mask in enumerate(state.masks.values())},
              **{f"ledger_{key}": state.ledger[key] for key in LEDGER_ARRAYS}}
    write_atomically(path, npz_bytes(arrays))


def load_server_state(path: Path, config_text: str) -> ServerState:
    """Read a checkpoint written by :func:`save_server_state` for the run of ``config_text``.

    Raises
    ------
    FedsparseError
        One line: the file is unreadable or corrupt, or belongs to another config.
    """
    try:
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
        masks = {name: arrays.pop(f"mask_{index}") for index, name in enumerate(meta["tiers"])}
        ledger = {key: arrays.pop(f"ledger_{key}") for key in LEDGER_ARRAYS}
        item, growth = arrays.pop("item"), arrays.pop("growth")
        optimizer = {name: arrays.pop(f"optimizer_{name}") for name in meta["optimizer"]}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile,
            UnicodeDecodeError) as exc:
        raise FedsparseError(f"checkpoint {path}: corrupt or unreadable ({exc})") from None
    if meta.get("format") != FORMAT:
        raise FedsparseError(f"checkpoint {path}: format {meta.get('format')}, expected {FORMAT}")
    if meta["config"] != config_text:
        raise FedsparseError(f"checkpoint {path}: written for another config "
                             f"({first_difference(meta['config'], config_text)})")
    return ServerState(round=int(meta["round"]), item=item, growth=growth, optimizer=optimizer,
                       masks=masks,
                       counters={key: int(value) for key, value in meta["counters"].items()},
                       ledger=ledger,
                       evaluation={int(device): values
                                   for device, values in meta["evaluation"].items()},
                       history=meta["history"], init_seconds=float(meta["init_seconds"]))


def first_difference(saved: str, current: str) -> str:
    """The first line where two config texts differ, for an error message."""
    for old, new in zip(saved.splitlines(), current.splitlines()):
        if old != new:
            return f"was {old.strip()!r}, now {new.strip()!r}"
    return "one config is longer"


# ---------------------------------------------------------------------- device state files
def _cohort_dir(state_dir: str, first_device: int) -> Path:
    return Path(state_dir) / f"cohort_{first_device:06d}"


def _round_of(path: Path) -> int:
    return int(path.stem.removeprefix("round_"))


def persist_cohort_state(state_dir: str, server_round: int, arrays: dict[str, np.ndarray]) -> None:
    """Write a cohort's device state (``arrays``, with its ``devices``) after ``server_round``;
    keep the one before, delete older."""
    folder = _cohort_dir(state_dir, int(arrays["devices"][0]))
    write_atomically(folder / f"round_{server_round:06d}.npz", npz_bytes(arrays))
    earlier = sorted((path for path in folder.glob("round_*.npz")
                      if _round_of(path) < server_round), key=_round_of)
    for path in earlier[:-1]:
        path.unlink()


def restore_cohort_state(state_dir: str, devices: np.ndarray,
                         up_to_round: int) -> dict[str, np.ndarray] | None:
    """The state of the cohort of ``devices`` after the latest round <= ``up_to_round`` it
    trained in, or None.

    Raises
    ------
    FedsparseError
        The file holds other devices (the run was started with other cohorts).
    """
    folder = _cohort_dir(state_dir, int(devices[0]))
    rounds = [path for path in folder.glob("round_*.npz") if _round_of(path) <= up_to_round]
    if not rounds:
        return None
    path = max(rounds, key=_round_of)
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    if not np.array_equal(arrays["devices"], devices):
        raise FedsparseError(f"{path}: holds devices {arrays['devices'][0]}.."
                             f"{arrays['devices'][-1]}, not this cohort's")
    return arrays
