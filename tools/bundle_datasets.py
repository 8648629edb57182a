"""Copy the shared LightGCN splits into ``fedsparse/data/bundled/`` as gzip files.

Run once by a maintainer from the repository root::

    python tools/bundle_datasets.py ../shared/data

Gowalla files are copied byte for byte (gzip-compressed). LastFM's ``user<TAB>item<TAB>count``
triples (1-based ids) are converted to the LightGCN line format (0-based ids, one line per user,
items in file order); see ``fedsparse/data/bundled/PROVENANCE.md``.
"""

from __future__ import annotations

import gzip
import sys
from collections import defaultdict
from pathlib import Path

BUNDLE_DIR = Path(__file__).resolve().parent.parent / "fedsparse" / "data" / "bundled"


def write_gzip(text: bytes, target: Path) -> None:
    """Write ``text`` to ``target`` with a fixed gzip mtime so the bytes are reproducible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(text)


def lastfm_to_lightgcn(triples_file: Path) -> bytes:
    """Convert ``user<TAB>item<TAB>count`` (1-based) to ``u i1 i2 ...`` lines (0-based)."""
    items_of: dict[int, list[int]] = defaultdict(list)
    for line in triples_file.read_text().splitlines():
        user, item, _count = line.split("\t")
        items_of[int(user) - 1].append(int(item) - 1)
    lines = [" ".join(map(str, [user, *items])) for user, items in sorted(items_of.items())]
    return ("\n".join(lines) + "\n").encode()


def main(shared_data: Path) -> None:
    gowalla = shared_data / "gowalla_lightgcn"
    for name in ("train.txt", "test.txt", "model_val.txt"):
        write_gzip((gowalla / name).read_bytes(), BUNDLE_DIR / "gowalla" / f"{name}.gz")
    lastfm = shared_data / "lastfm_lightgcn"
    write_gzip(lastfm_to_lightgcn(lastfm / "data1.txt"), BUNDLE_DIR / "lastfm" / "train.txt.gz")
    write_gzip(lastfm_to_lightgcn(lastfm / "test1.txt"), BUNDLE_DIR / "lastfm" / "test.txt.gz")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
