"""Local processes started for a deployment, and every process they start, tracked with
psutil (Flower's servers start ``flower-superexec`` children, some in sessions of their own,
and those start the ServerApp and ClientApp processes) and stopped together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

#: Seconds the processes get to exit after SIGTERM before SIGKILL.
STOP_GRACE_SECONDS = 10.0


def is_running(process: int | psutil.Process) -> bool:
    """Whether a process (pid or handle) is live; a zombie (exited, not reaped) counts as gone."""
    try:
        if isinstance(process, int):
            process = psutil.Process(process)
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _program_name(arguments: list[str]) -> str:
    """The program a command line runs: the script after a Python interpreter, else the
    executable."""
    if len(arguments) > 1 and Path(arguments[0]).name.startswith("python"):
        return Path(arguments[1]).name
    return Path(arguments[0]).name if arguments else "?"


@dataclass
class TrackedProcess:
    """A process started here, or a descendant of one.

    Attributes
    ----------
    process : psutil.Process
        Its handle (it knows when the pid has been reused).
    pgid : int
        Its process group, which is signalled as a whole.
    role : str
        ``superlink``, ``supernode-<i>``, ``run``, or ``<parent's role>/<program>``.
    command : str
        Its command line.
    log : str
        The log file of the started process it descends from.
    """

    process: psutil.Process
    pgid: int
    role: str
    command: str
    log: str

    def __str__(self) -> str:
        return f"{self.role} ({self.process.pid})"

    def entry(self) -> dict[str, Any]:
        """Its entry in ``processes.json``."""
        return {"pid": self.process.pid, "pgid": self.pgid, "role": self.role,
                "command": self.command, "log": self.log}


@dataclass
class LocalProcesses:
    """Flower processes started here, each in a session of its own, and everything they start.

    Attributes
    ----------
    log_dir : Path
        Where each started process's output goes (``<role>.log``), and ``processes.json``.
    env : dict of str to str
        Their environment.
    started : dict of str to psutil.Popen
        The started processes, by role.
    tracked : dict of int to TrackedProcess
        Those and every descendant of them seen, by pid.
    """

    log_dir: Path
    env: dict[str, str]
    started: dict[str, psutil.Popen] = field(default_factory=dict)
    tracked: dict[int, TrackedProcess] = field(default_factory=dict)

    def start(self, role: str, command: list[str]) -> psutil.Popen:
        """Start ``command`` as ``role`` in a session of its own, output to ``<role>.log``."""
        log_path = self.log_dir / f"{role}.log"
        with open(log_path, "ab") as log:                 # the child keeps its own descriptor
            process = psutil.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=self.env,
                                   start_new_session=True)
        self.started[role] = process
        self.tracked[process.pid] = TrackedProcess(process, process.pid, role,
                                                   " ".join(command), str(log_path))
        logger.debug("started %s (pid %d): %s", role, process.pid, " ".join(command))
        return process

    def track(self) -> None:
        """Record every current descendant of the started processes (Flower starts
        ``flower-superexec`` children, some in sessions of their own, and they start the apps).

        Call it while they run: a process whose parent has died is no descendant any more.
        """
        for started in self.started.values():
            root = self.tracked[started.pid]
            try:
                descendants = started.children(recursive=True)     # parents before children
            except psutil.NoSuchProcess:
                continue
            for child in descendants:
                if child.pid in self.tracked:
                    continue
                try:
                    parent = self.tracked.get(child.ppid(), root)
                    arguments, pgid = child.cmdline(), os.getpgid(child.pid)
                except (psutil.Error, ProcessLookupError):                # gone already
                    continue
                self.tracked[child.pid] = TrackedProcess(
                    child, pgid, f"{parent.role}/{_program_name(arguments)}",
                    " ".join(arguments), root.log)

    def exited(self) -> dict[str, int]:
        """``role -> exit code`` of the started processes that have ended."""
        return {role: code for role, process in self.started.items()
                if (code := process.poll()) is not None}

    def alive(self) -> list[TrackedProcess]:
        """The tracked processes still running."""
        return [tracked for tracked in self.tracked.values() if is_running(tracked.process)]

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM every tracked process group, SIGKILL what is left after ``grace`` seconds,
        reap the started processes and write ``processes.json``."""
        self.track()
        try:
            left = self._signal_and_wait(signal.SIGTERM, grace)
            if left:
                logger.warning("killing %d Flower processes that ignored SIGTERM: %s",
                               len(left), ", ".join(map(str, left)))
                left = self._signal_and_wait(signal.SIGKILL, grace)
        finally:
            for process in self.started.values():
                process.poll()                            # reap
            entries = [tracked.entry() for tracked in self.tracked.values()]
            (self.log_dir / "processes.json").write_text(json.dumps(entries, indent=2) + "\n")
        if left:
            logger.error("Flower processes still running: %s", ", ".join(map(str, left)))

    def _signal_and_wait(self, signum: int, timeout: float) -> list[TrackedProcess]:
        """Send ``signum`` to the group of every live tracked process (never to this process's
        own group) and wait up to ``timeout`` seconds; returns the processes still running.

        The wait goes in short rounds because zombies count as gone: ``wait_procs`` waits for
        a zombie that is not our child until it is reaped, and not every init reaps orphans.
        """
        for pgid in {tracked.pgid for tracked in self.alive()} - {os.getpgrp()}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signum)
        deadline = time.monotonic() + timeout
        while (left := self.alive()) and (remaining := deadline - time.monotonic()) > 0:
            psutil.wait_procs([tracked.process for tracked in left], timeout=min(remaining, 1.0))
        return left
