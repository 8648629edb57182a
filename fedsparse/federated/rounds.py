"""The round loop of a fleet run, engine-neutral: training rounds, the evaluation cadence,
checkpoints and the stop rule. An engine (:mod:`fedsparse.fl.server_app` on Flower) supplies
what a round does on its transport (:class:`RoundEngine`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from tqdm.auto import tqdm

from fedsparse.config import ExperimentConfig
from fedsparse.errors import RunStopped
from fedsparse.federated.server import FleetServer

logger = logging.getLogger(__name__)


class RoundEngine(Protocol):
    """What the round loop needs of an engine."""

    def train_round(self, server_round: int) -> dict[str, Any]:
        """Send the round's training messages, collect the replies, give the server half the
        outcomes; returns ``sampled`` and the server's counts (:meth:`FleetServer.accept_round`)."""

    def evaluate(self, server_round: int, *, final: bool) -> dict[str, float]:
        """Every device ranks all items (the final evaluation also collects the user rows);
        returns the fleet metrics (:meth:`FleetServer.evaluation_summary`)."""


def run_rounds(server: FleetServer, engine: RoundEngine, cfg: ExperimentConfig, *,
               done: int, history: list[dict[str, Any]],
               checkpoint: Callable[[int, list[dict[str, Any]]], None] | None = None
               ) -> list[dict[str, Any]]:
    """Rounds ``done + 1 .. fl.rounds``: each trains, evaluates every ``fl.eval_every`` rounds
    and after the last, appends its row to ``history`` and, but for the last, calls
    ``checkpoint(round, history)``; returns ``history``.

    Raises
    ------
    RunStopped
        ``fl.max_skipped_rounds`` rounds in a row had too few successful devices.
    """
    bar = tqdm(range(done + 1, cfg.fl.rounds + 1), desc=f"simulate {cfg.name}", unit="round",
               initial=done, total=cfg.fl.rounds)
    for server_round in bar:
        start, down_before = time.perf_counter(), int(server.ledger.down_bytes.sum())
        counts = engine.train_round(server_round)
        row = {"round": server_round, **counts,
               "down-bytes": int(server.ledger.down_bytes.sum()) - down_before,
               "mask-updates": server.mask_updates, "seconds": time.perf_counter() - start}
        final = server_round == cfg.fl.rounds
        if final or (cfg.fl.eval_every and server_round % cfg.fl.eval_every == 0):
            eval_start = time.perf_counter()
            row.update(engine.evaluate(server_round, final=final))
            row["eval-seconds"] = time.perf_counter() - eval_start
        history.append(row)
        logger.info("round %d/%d: %s", server_round, cfg.fl.rounds,
                    ", ".join(f"{key} {value:.4g}" for key, value in row.items() if key != "round"))
        bar.set_postfix(loss=f"{row['loss']:.4f}", ok=row["succeeded"])
        if checkpoint is not None and not final:
            checkpoint(server_round, history)
        if server.skipped_in_a_row >= cfg.fl.max_skipped_rounds:
            raise RunStopped(
                f"stopped after round {server_round}: {server.skipped_in_a_row} rounds in a "
                f"row skipped, fewer than fl.min_success = {cfg.fl.min_success:g} of the sampled "
                f"devices succeeded (last: {row['succeeded']} of {row['sampled']})")
    return history
