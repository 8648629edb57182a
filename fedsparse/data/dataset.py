"""Interaction datasets: bundled LightGCN splits, directories in the same format, and stats."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.sparse as sp

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fedsparse.data.lightgcn_format import line_of_user, read_interactions
from fedsparse.errors import DataError
from fedsparse.seeding import numpy_rng_for

#: Bundled datasets and their declared sizes (ids must stay below them).
BUNDLED_SIZES: dict[str, tuple[int, int]] = {"lastfm": (1892, 4489), "gowalla": (29858, 40981)}

_SPLIT_FILES = {"train": ("train.txt",), "test": ("test.txt",), "val": ("model_val.txt", "val.txt")}

#: Without a validation file, ``split="val"`` holds out this fraction of each user's training
#: interactions (at least one of a user's two or more; Gowalla's ``model_val.txt`` holds out
#: 8.8%, at least one per user) ...
CARVE_OUT_FRACTION = 0.1
#: ... drawn from this fixed seed, so every run and every experiment seed tunes on the same
#: validation interactions, as with a validation file.
CARVE_OUT_SEED = 0


@dataclass(frozen=True)
class InteractionData:
    """Binary implicit feedback, split into what a model trains on and what it is scored on.

    Attributes
    ----------
    train, test:
        ``(n_users, n_items)`` CSR matrices of float32 ones. ``test`` is the evaluation target:
        the test split, or the validation split when tuning.
    """

    name: str
    n_users: int
    n_items: int
    train: sp.csr_matrix
    test: sp.csr_matrix

    def stats(self) -> dict[str, float | int]:
        """Users, items, train and test interactions, and density of all interactions."""
        n_train, n_test = int(self.train.nnz), int(self.test.nnz)
        return {"users": self.n_users, "items": self.n_items, "train_interactions": n_train,
                "test_interactions": n_test,
                "density": (n_train + n_test) / (self.n_users * self.n_items)}

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Training interactions as parallel ``(users, items)`` int64 arrays, user-major."""
        coo = self.train.tocoo()
        return coo.row.astype(np.int64), coo.col.astype(np.int64)


def _find_split_file(directory: Path, split: str) -> Path | None:
    for base in _SPLIT_FILES[split]:
        for candidate in (directory / base, directory / f"{base}.gz"):
            if candidate.exists():
                return candidate
    return None


def _dataset_dir(name_or_path: str) -> tuple[str, Path, tuple[int, int] | None]:
    if name_or_path in BUNDLED_SIZES:
        bundled = Path(str(resources.files("fedsparse.data") / "bundled" / name_or_path))
        return name_or_path, bundled, BUNDLED_SIZES[name_or_path]
    path = Path(name_or_path)
    if not path.is_dir():
        raise DataError(f"{name_or_path}: not a bundled dataset ({', '.join(BUNDLED_SIZES)}) "
                        "nor a directory")
    return path.name, path, _declared_sizes(path / "dataset.toml")


def _declared_sizes(path: Path) -> tuple[int, int] | None:
    """``(n_users, n_items)`` from an optional ``dataset.toml`` beside the split files."""
    if not path.exists():
        return None
    try:
        declared = tomllib.loads(path.read_text())
        sizes = (declared["n_users"], declared["n_items"])
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise DataError(f"{path}: expected n_users and n_items ({exc})") from None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise DataError(f"{path}: n_users and n_items must be positive integers")
    return sizes


def _check_range(path: Path, users: np.ndarray, items: np.ndarray, n_users: int,
                 n_items: int) -> None:
    bad = np.flatnonzero((users >= n_users) | (items >= n_items))
    if bad.size:
        user, item = int(users[bad[0]]), int(items[bad[0]])
        line = line_of_user(path, user)
        what = f"user id {user} >= {n_users}" if user >= n_users else f"item id {item} >= {n_items}"
        raise DataError(f"{path}:{line}: {what} (out of range)")


def binary_matrix(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A binary (n_users, n_items) CSR matrix with ones at the (user, item) pairs (repeats
    count once)."""
    matrix = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def load_dataset(name_or_path: str, split: str = "test", max_items: int = 0) -> InteractionData:
    """Load a bundled dataset (``lastfm``, ``gowalla``) or a directory of LightGCN-format files.

    A directory holds ``train.txt`` and ``test.txt`` (optionally gzip-compressed as ``.gz``) and,
    for ``split="val"``, ``model_val.txt`` or ``val.txt``. An optional ``dataset.toml`` declares
    ``n_users`` and ``n_items``; without it they are the largest ids seen plus one. With
    ``split="val"`` the model trains on train minus val and is scored on val; the test file is
    not read. A dataset without a validation file (the bundled LastFM) gets a seeded carve-out
    of its training interactions instead (:func:`carve_out_validation`). ``max_items > 0``
    keeps only that many items (:func:`most_interacted_items`).

    Raises
    ------
    DataError
        Missing file, malformed line, or out-of-range id; the message names file and line.
        ``max_items`` more than the dataset's items.
    """
    if split not in ("test", "val"):
        raise DataError(f"split must be 'test' or 'val', got {split!r}")
    name, directory, sizes = _dataset_dir(name_or_path)
    files = {}
    carve_out = split == "val" and _find_split_file(directory, "val") is None
    for part in ("train",) if carve_out else ("train", split):
        found = _find_split_file(directory, part)
        if found is None:
            raise DataError(f"{directory}: missing {' or '.join(_SPLIT_FILES[part])}")
        files[part] = found
    pairs = {part: read_interactions(path) for part, path in files.items()}
    if sizes is None:
        n_users = 1 + max((int(u.max()) for u, _ in pairs.values() if u.size), default=-1)
        n_items = 1 + max((int(i.max()) for _, i in pairs.values() if i.size), default=-1)
        if n_users == 0 or n_items == 0:
            raise DataError(f"{directory}: no interactions")
    else:
        n_users, n_items = sizes
    for part, (users, items) in pairs.items():
        _check_range(files[part], users, items, n_users, n_items)
    shape = (n_users, n_items)
    train = binary_matrix(*pairs["train"], shape)
    target = carve_out_validation(train) if carve_out else binary_matrix(*pairs[split], shape)
    if split == "val":
        train = binary_matrix(*_minus(train, target), shape)
    data = InteractionData(name=name, n_users=n_users, n_items=n_items, train=train, test=target)
    return most_interacted_items(data, max_items) if max_items else data


def carve_out_validation(train: sp.csr_matrix) -> sp.csr_matrix:
    """A seeded validation split of ``train`` (binary CSR): for each user with at least two
    interactions, ``max(1, round(CARVE_OUT_FRACTION * n))`` of them, drawn without
    replacement (users in ascending id, one stream seeded by :data:`CARVE_OUT_SEED`)."""
    rng = numpy_rng_for(CARVE_OUT_SEED, 0, 0, "validation carve-out")
    users, items = [], []
    for user in range(train.shape[0]):
        row = train.indices[train.indptr[user]:train.indptr[user + 1]]    # (n,) item ids
        if len(row) < 2:
            continue
        held = rng.choice(row, size=max(1, round(CARVE_OUT_FRACTION * len(row))), replace=False)
        users.append(np.full(len(held), user))
        items.append(held)
    if not users:
        return sp.csr_matrix(train.shape, dtype=np.float32)
    return binary_matrix(np.concatenate(users), np.concatenate(items), train.shape)


def most_interacted_items(data: InteractionData, n_items: int) -> InteractionData:
    """The sub-problem of the ``n_items`` items with the most training interactions (ties:
    lower id first): train and test keep only those items, renumbered ``0..n_items-1`` in
    ascending original id; users keep their ids (some may be left without interactions).

    Raises
    ------
    DataError
        ``n_items`` is not between 1 and the dataset's item count.
    """
    if not 0 < n_items <= data.n_items:
        raise DataError(f"max_items: {n_items} is not between 1 and {data.name}'s "
                        f"{data.n_items} items")
    counts = np.bincount(data.train.indices, minlength=data.n_items)  # (n_items,) per item
    kept = np.sort(np.argsort(-counts, kind="stable")[:n_items])     # original ids, ascending
    return InteractionData(name=f"{data.name} ({n_items} most interacted items)",
                           n_users=data.n_users, n_items=n_items,
                           train=data.train[:, kept].tocsr(), test=data.test[:, kept].tocsr())


def _minus(a: sp.csr_matrix, b: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of ``a`` that are not in ``b`` (both binary)."""
    kept = (a - a.multiply(b)).tocoo()
    kept.eliminate_zeros()
    return kept.row.astype(np.int64), kept.col.astype(np.int64)


def write_dataset(data: InteractionData, directory: str | Path) -> Path:
    """Write ``data`` as a directory :func:`load_dataset` reads back: ``train.txt`` and
    ``test.txt`` in the LightGCN format and a ``dataset.toml`` with the sizes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, matrix in (("train.txt", data.train), ("test.txt", data.test)):
        lines = [" ".join(map(str, [user, *matrix[user].indices])) for user in range(data.n_users)]
        (directory / name).write_text("\n".join(lines) + "\n")
    (directory / "dataset.toml").write_text(f"n_users = {data.n_users}\nn_items = {data.n_items}\n")
    return directory
