"""Reader for the LightGCN interaction format: one line ``user item item ...`` per user."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fedsparse.errors import DataError


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path, "rt")


def read_interactions(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a LightGCN-format file into parallel ``(users, items)`` int64 arrays.

    Blank lines are skipped; a line with a user id only has no interactions. Duplicate pairs
    are kept here (the dataset builder binarises).

    Raises
    ------
    DataError
        The file is missing, or a line holds a non-integer or negative id (file and line named).
    """
    path = Path(path)
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    try:
        with _open_text(path) as lines:
            for line_no, line in enumerate(lines, start=1):
                tokens = line.split()
                if not tokens:
                    continue
                try:
                    ids = np.array([int(token) for token in tokens], dtype=np.int64)
                except ValueError:
                    bad = next(t for t in tokens if not t.lstrip("-").isdigit())
                    raise DataError(f"{path}:{line_no}: id {bad!r} is not an integer") from None
                if (ids < 0).any():
                    raise DataError(f"{path}:{line_no}: negative id {int(ids[ids < 0][0])}")
                users.append(np.full(len(ids) - 1, ids[0], dtype=np.int64))
                items.append(ids[1:])
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if not users:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(users), np.concatenate(items)


def line_of_user(path: str | Path, user: int) -> int:
    """Line number (1-based) of the first line of ``user`` in ``path``, or 0 if absent."""
    with _open_text(Path(path)) as lines:
        for line_no, line in enumerate(lines, start=1):
            tokens = line.split(maxsplit=1)
            if tokens and tokens[0] == str(user):
                return line_no
    return 0
