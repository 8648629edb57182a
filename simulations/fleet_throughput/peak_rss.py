"""Run a command and record the peak resident memory of it and every process it starts (the
ServerApp, Ray's processes and its client actors), sampled every half second.

    python simulations/fleet_throughput/peak_rss.py OUT.json -- fedsparse simulate ...
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

INTERVAL_SECONDS = 0.5


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of ``root`` and its live descendants."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:                           # exited meanwhile
            pass
    return total


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: peak_rss.py OUT.json -- COMMAND ...")
    out, command = Path(argv[0]), argv[2:]
    child = subprocess.Popen(command)
    root, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, tree_rss(root))
        except psutil.NoSuchProcess:
            break
        time.sleep(INTERVAL_SECONDS)
    code = child.wait()
    out.write_text(json.dumps({"peak_rss_mb": peak / 2**20, "command": command}, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
