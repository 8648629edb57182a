"""Command line: ``fedsparse train | simulate | deploy-local | data | report``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from fedsparse.config import load_config
from fedsparse.data import load_dataset
from fedsparse.errors import FedsparseError, RunStopped

logger = logging.getLogger("fedsparse")


def _train(args: argparse.Namespace) -> int:
    from fedsparse.report.results import default_run_dir, write_run
    from fedsparse.train import train_centralized

    cfg = load_config(args.config, args.set)
    data = load_dataset(cfg.data.name, cfg.data.split, cfg.data.max_items)
    out_dir = Path(args.out) if args.out else default_run_dir(cfg.name)
    logger.info("training %s on %s (%d users, %d items); results -> %s", cfg.model.name,
                data.name, data.n_users, data.n_items, out_dir)
    with logging_redirect_tqdm():
        result = train_centralized(cfg, data, progress=not args.quiet)
    metrics = write_run(out_dir, cfg, data, result)
    k = cfg.train.topk
    print(f"{cfg.name}: {cfg.model.name} ({cfg.sparse.method}) on {data.name}, "
          f"{cfg.train.epochs} epochs, {metrics['seconds_per_epoch']:.2f} s/epoch\n"
          f"  recall@{k} {metrics[f'recall@{k}']:.4f}  ndcg@{k} {metrics[f'ndcg@{k}']:.4f}  "
          f"density {metrics['density']:.3f}  "
          f"model {metrics['model_bytes'] / 2**20:.2f} MiB ({cfg.model.value_dtype})  "
          f"training {metrics['train_bytes'] / 2**20:.2f} MiB (float32 with Adam)  "
          f"peak memory {metrics['peak_memory_mb']:.0f} MiB\n"
          f"  results: {out_dir}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from fedsparse.federated.methods import fleet_method
    from fedsparse.fl.simulation import simulate
    from fedsparse.report.results import default_run_dir

    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise FedsparseError("--out: not with --resume (the run continues in its own "
                                 "directory)")
        out_dir = Path(args.resume)
        if not (out_dir / "config.toml").exists():
            raise FedsparseError(f"--resume: {out_dir} holds no run (no config.toml)")
        cfg = load_config(args.config or out_dir / "config.toml", args.set, fleet=True)
    elif args.config is None:
        raise FedsparseError("simulate: needs a CONFIG (or --resume DIR)")
    else:
        cfg = load_config(args.config, args.set, fleet=True)
        out_dir = Path(args.out) if args.out else default_run_dir(cfg.name)
    with logging_redirect_tqdm():
        metrics = simulate(cfg, out_dir, resume=bool(args.resume))
    k = cfg.train.topk
    lines = [(f"{cfg.name}: federated {cfg.sparse.method} on {metrics['dataset']}, "
              f"{metrics['devices']} devices, {cfg.fl.rounds} rounds, "
              f"{metrics['runtime']['seconds_per_round']:.1f} s/round"),
             (f"  fleet recall@{k} {metrics[f'recall@{k}']:.4f}  "
              f"ndcg@{k} {metrics[f'ndcg@{k}']:.4f}  "
              f"up {metrics['up_bytes_per_round'] / 2**20:.2f} MiB/round  "
              f"down {metrics['down_bytes_per_round'] / 2**20:.2f} MiB/round  "
              f"rejected {metrics['rejected']}  failed {metrics['failed']}  "
              f"late {metrics['late']}  skipped rounds {metrics['skipped_rounds']}  "
              + ("budgets not applied (dense FedAvg)"
                 if not fleet_method(cfg.sparse.method).enforces_budget else
                 f"within budget: {'yes' if metrics['within_budget'] else 'NO'}"))]
    for name, tier in metrics["tiers"].items():
        lines.append(f"  {name:>10}: {tier['devices']} devices, budget {tier['budget_bytes']} B, "
                     f"density {tier['density']:.3f}, model <= {tier['model_bytes_max']} B, "
                     f"recall@{k} {tier[f'recall@{k}']:.4f}, ndcg@{k} {tier[f'ndcg@{k}']:.4f}")
    if "reference" in metrics:
        reference = metrics["reference"]
        lines.append(f"  centralized {reference['model']} ({reference['method']}, "
                     f"{cfg.fl.reference_config}) on the same data: recall@{k} "
                     f"{reference[f'recall@{k}']:.4f}; the fleet reaches "
                     f"{metrics[f'recall@{k}'] / reference[f'recall@{k}']:.2f}x of it "
                     f"({out_dir / 'reference'})")
    lines.append(f"  results: {out_dir}")
    print("\n".join(lines))
    return 0


def _deploy_local(args: argparse.Namespace) -> int:
    from fedsparse.federated.fleet import supernode_count
    from fedsparse.fl.deployment import LOG_DIR_NAME, deploy_local
    from fedsparse.report.results import default_run_dir

    cfg = load_config(args.config, args.set, fleet=True)
    out_dir = (Path(args.out) if args.out else default_run_dir(cfg.name)).resolve()
    flwr_home = Path(args.flwr_home) if args.flwr_home else out_dir / "flwr_home"
    status = deploy_local(Path(args.config), out_dir, args.set, flwr_home=flwr_home,
                          timeout=args.timeout)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    k = cfg.train.topk
    nodes = supernode_count(metrics["devices"], cfg.fl.devices_per_node or 1)
    print(f"{cfg.name}: run {status} on {nodes} SuperNodes ({metrics['devices']} devices), "
          f"recall@{k} {metrics[f'recall@{k}']:.4f}, ndcg@{k} {metrics[f'ndcg@{k}']:.4f}\n"
          f"  results: {out_dir}  logs: {out_dir / LOG_DIR_NAME}")
    return 0


def _data_stats(args: argparse.Namespace) -> int:
    stats = load_dataset(args.dataset, max_items=args.max_items).stats()
    for key, value in stats.items():
        print(f"{key:>20}: {value:.6f}" if isinstance(value, float) else f"{key:>20}: {value}")
    return 0


def _report_eval(args: argparse.Namespace) -> int:
    from fedsparse.report.results import reevaluate_run

    run_dir = Path(args.run_dir)
    metrics = reevaluate_run(run_dir)
    stored = json.loads((run_dir / "metrics.json").read_text())
    for key, value in metrics.items():
        print(f"{key}: {value:.6f} (metrics.json: {stored.get(key, float('nan')):.6f})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsparse", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="centralized training from a TOML config")
    train.add_argument("config", help="TOML config file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable), e.g. --set train.epochs=5")
    train.add_argument("--out", help="results directory (default runs/<name>-<timestamp>)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    simulate = commands.add_parser("simulate", help="federated device-fleet simulation on Flower")
    simulate.add_argument("config", nargs="?",
                          help="TOML config file with an [fl] section (with --resume: "
                               "default the run's own config.toml)")
    simulate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a config key (repeatable), e.g. --set fl.rounds=3")
    simulate.add_argument("--out", help="results directory (default runs/<name>-<timestamp>)")
    simulate.add_argument("--resume", metavar="DIR",
                          help="continue the killed or interrupted run in DIR from its checkpoint")
    simulate.set_defaults(handler=_simulate)

    deploy = commands.add_parser(
        "deploy-local", help="the fleet on real Flower processes on this machine: a SuperLink "
                             "and one SuperNode per device, submitted with flwr run")
    deploy.add_argument("config", help="TOML config file with an [fl] section")
    deploy.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set fl.max_devices=10")
    deploy.add_argument("--out", help="results directory (default runs/<name>-<timestamp>)")
    deploy.add_argument("--flwr-home", help="Flower's state folder (default <out>/flwr_home)")
    deploy.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds the run may take before it is stopped")
    deploy.set_defaults(handler=_deploy_local)

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    stats = data_commands.add_parser("stats", help="users, items, interactions, density")
    stats.add_argument("dataset", help="bundled name (lastfm, gowalla) or a directory")
    stats.add_argument("--max-items", type=int, default=0, metavar="N",
                       help="only the N items with the most training interactions (data.max_items)")
    stats.set_defaults(handler=_data_stats)

    report = commands.add_parser("report", help="results tools")
    report_commands = report.add_subparsers(dest="report_command", required=True)
    evaluate = report_commands.add_parser("eval", help="re-evaluate a run from its model.npz")
    evaluate.add_argument("run_dir", help="results directory")
    evaluate.set_defaults(handler=_report_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedsparse`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)   # chatty at Flower's import
    try:
        return args.handler(args)
    except FedsparseError as exc:
        print(f"fedsparse: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, RunStopped) else 2


if __name__ == "__main__":
    sys.exit(main())
