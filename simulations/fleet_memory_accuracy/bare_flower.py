"""A bare Flower simulation of the same fleet size: the transport's own cost per round.

Every round sends one empty TRAIN message to each of N virtual SuperNodes, whose ClientApp
replies at once, on the same backend settings as ``fedsparse simulate`` (Ray, 1 CPU per
client). Writes ``results/<name>/metrics.json`` (or ``--out DIR``) with the median seconds
per round.

Usage: python simulations/fleet_memory_accuracy/bare_flower.py --devices 1878 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedsparse.fl.server_app import wait_for_nodes
from fedsparse.fl.simulation import run_flower_simulation

HERE = Path(__file__).resolve().parent

client_app = ClientApp()


@client_app.train()
def reply_at_once(msg: Message, context: Context) -> Message:
    return Message(content=RecordDict({"reply": MetricRecord({"ok": 1})}), reply_to=msg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=0,
                        help="nodes sampled per round, seeded (0: all)")
    parser.add_argument("--name", default="bare_flower")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default: results/<name> beside this script)")
    args = parser.parse_args()
    seconds: list[float] = []
    server_app = ServerApp()

    @server_app.main()
    def run(grid: Grid, context: Context) -> None:
        nodes = wait_for_nodes(grid, args.devices)
        for server_round in range(1, args.rounds + 1):
            start = time.perf_counter()
            sampled = nodes
            if 0 < args.per_round < len(nodes):
                rng = np.random.default_rng([server_round, args.per_round])
                picks = rng.choice(len(nodes), size=args.per_round, replace=False)
                sampled = [nodes[int(i)] for i in sorted(picks)]      # node ids stay Python ints
            messages = [
                Message(content=RecordDict({"config": ConfigRecord({"round": server_round})}),
                        dst_node_id=node, message_type=MessageType.TRAIN)
                for node in sampled]
            replies = list(grid.send_and_receive(messages))
            assert len(replies) == len(sampled) and not any(r.has_error() for r in replies)
            seconds.append(time.perf_counter() - start)

    run_flower_simulation(server_app, client_app, args.devices, num_cpus=os.cpu_count() or 1,
                          client_cpus=1.0)
    out = args.out or HERE / "results" / args.name
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"devices": args.devices, "per_round": args.per_round or args.devices,
               "rounds": args.rounds,
               "seconds_per_round": float(np.median(seconds)), "seconds": seconds}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
