"""Command line: torchrun-flavoured flags -> RunConfig, then launch or bench.

Usage errors print one line (``llmcluster: error: ...``) and exit 2; nothing is
started before the whole configuration has been checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from llmcluster import __version__
from llmcluster.config import (
    ALGORITHMS,
    FORMATS,
    STYLE_NAMES,
    UIS,
    ConfigError,
    RunConfig,
    parse_duration,
)

if TYPE_CHECKING:
    from llmcluster.exporters.prometheus_server import MetricsSettings


class UsageError(Exception):
    """Raised instead of argparse's exit so the message stays on one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _int(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _speed(text: str) -> float | None:
    return None if text.strip().lower() == "auto" else _float(text)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> int:
    units = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30}
    lowered = text.strip().lower()
    number = lowered.rstrip("kmgb")
    unit = lowered[len(number) :]
    try:
        return int(float(number) * units[unit])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"expected a size like 16M or 4096, got {text!r}"
        ) from None


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ranks", "-n", type=_int, default=64, help="GPU ranks (processes)")
    parser.add_argument(
        "--nproc-per-node", "--nproc_per_node", type=_int, default=8, help="ranks per node"
    )
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="hierarchical")
    parser.add_argument("--seed", type=_int, default=0, help="reproduce a run exactly")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (training run) with the ``bench`` subcommand."""
    parser = _Parser(
        prog="llmcluster",
        description="Imitate a distributed LLM training run with real processes and collectives.",
    )
    parser.add_argument("--version", action="version", version=f"llmcluster {__version__}")
    _add_cluster_flags(parser)
    parser.add_argument("--steps", type=_int, default=None, help="training steps (default 250)")
    parser.add_argument("--model", default=None, help="model name (see --list)")
    parser.add_argument("--gpu", default=None, help="GPU type (see --list)")
    parser.add_argument("--dataset", default=None, help="dataset name (see --list)")
    parser.add_argument(
        "--speed",
        "--speed-factor",
        type=_speed,
        default=None,
        help="simulated s per wall s, or auto (the default: a watchable pace)",
    )
    parser.add_argument("--exit-after-time", type=_duration, default=None, metavar="DURATION")
    parser.add_argument("--format", dest="output_format", choices=FORMATS, default="log")
    parser.add_argument("--ui", choices=UIS, default="auto")
    parser.add_argument("--style", choices=STYLE_NAMES, default="default")
    parser.add_argument("--ascii", dest="ascii_only", action="store_true")
    parser.add_argument("--no-color", action="store_true")
    parser.add_argument("--max-restarts", type=_int, default=3)
    parser.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="FAULT",
        help="inject a fault, e.g. kill:rank=17,step=40  hang:rank=3,step=25  "
        "straggler:rank=5,slowdown=1.3  throttle:gpu=12  nan:step=60  spike:step=80",
    )
    parser.add_argument("--chaos", type=_float, default=0.0, metavar="RATE",
                        help="random rank failures per step (e.g. 0.01)")  # fmt: skip
    parser.add_argument("--grad-bucket", type=_size, default=0, metavar="SIZE")
    parser.add_argument("--record", dest="record_path", default=None, metavar="FILE")
    parser.add_argument("--list", action="store_true", help="list models, GPUs, datasets, styles")
    _add_metrics_flags(parser)
    return parser


def _add_metrics_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=_int, default=None, metavar="PORT",
                        help="serve dcgm-exporter-style metrics (9400 is dcgm-exporter's port); "
                        "a local run serves node N on PORT+N")  # fmt: skip
    parser.add_argument("--metrics-bind", default="127.0.0.1", metavar="ADDR",
                        help="address the metrics endpoints listen on")  # fmt: skip


def _metrics(args: argparse.Namespace, nnodes: int) -> MetricsSettings | None:
    from llmcluster.exporters.prometheus_server import MetricsSettings

    if args.metrics_port is None:
        return None
    if not 1 <= args.metrics_port <= 65536 - nnodes:
        raise ConfigError(f"--metrics-port must be between 1 and {65536 - nnodes} (one port per "
                          f"node from it), got {args.metrics_port}")  # fmt: skip
    return MetricsSettings(port=args.metrics_port, bind=args.metrics_bind)


def build_bench_parser() -> argparse.ArgumentParser:
    """``llmcluster bench``: the collectives alone, nccl-tests style."""
    parser = _Parser(prog="llmcluster bench", description="Benchmark allreduce over the fabric.")
    _add_cluster_flags(parser)
    parser.set_defaults(ranks=8, algorithm="hierarchical")
    parser.add_argument("--min-bytes", "-b", type=_size, default=8)
    parser.add_argument("--max-bytes", "-e", type=_size, default=16 << 20)
    parser.add_argument("--factor", "-f", type=_int, default=2)
    parser.add_argument("--iters", type=_int, default=20)
    parser.add_argument("--warmup", type=_int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    return parser


def _fail(message: str) -> int:
    print(f"llmcluster: error: {message}", file=sys.stderr)
    return 2


def build_coordinator_parser() -> argparse.ArgumentParser:
    """``llmcluster coordinator``: rendezvous, health and telemetry for remote node agents."""
    parser = build_parser()
    parser.prog = "llmcluster coordinator"
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", "--master-port", dest="port", type=_int,
                        default=int(os.environ.get("MASTER_PORT", "29500")))  # fmt: skip
    parser.add_argument("--nnodes", default=os.environ.get("NNODES", "1"), help="N or MIN:MAX")
    _add_remote_flags(parser)
    return parser


def build_node_parser() -> argparse.ArgumentParser:
    """``llmcluster node``: a node agent that joins a coordinator and runs its local ranks."""
    parser = _Parser(prog="llmcluster node", description="Join a coordinator as one node.")
    parser.add_argument("--master-addr", default=os.environ.get("MASTER_ADDR", "127.0.0.1"))
    parser.add_argument("--master-port", type=_int,
                        default=int(os.environ.get("MASTER_PORT", "29500")))  # fmt: skip
    parser.add_argument("--node-rank", default=os.environ.get("NODE_RANK", "auto"),
                        help="this node's rank, or auto (assigned on join)")  # fmt: skip
    parser.add_argument("--heartbeat-timeout", type=_float, default=3.0)
    _add_remote_flags(parser)
    _add_metrics_flags(parser)
    return parser


def _add_remote_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", default=os.environ.get("LLMCLUSTER_TOKEN", ""),
                        help="shared secret (env LLMCLUSTER_TOKEN)")  # fmt: skip
    parser.add_argument("--join-timeout", type=_duration, default=120.0, metavar="DURATION")


def _nnodes(text: str) -> int:
    low, _, high = text.partition(":")
    try:
        count = int(high or low)
    except ValueError:
        raise ConfigError(f"--nnodes must be N or MIN:MAX, got {text!r}") from None
    if not 1 <= count <= 512:
        raise ConfigError(f"--nnodes must be between 1 and 512, got {count}")
    return count


def _loopback(address: str) -> bool:
    return address in ("localhost", "::1") or address.startswith("127.")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmcluster`` command; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list[:1] in (["bench"], ["coordinator"], ["node"]) else "run"
    if args_list[:1] == ["schema"]:
        return _schema(args_list[1:])
    if args_list[:1] in (["attach"], ["ps"]):
        from llmcluster.attach import attach_main, ps_main

        return (attach_main if args_list[0] == "attach" else ps_main)(args_list[1:])
    try:
        if command == "bench":
            return _bench(build_bench_parser().parse_args(args_list[1:]))
        if command == "node":
            return _node(build_node_parser().parse_args(args_list[1:]))
        parser = build_coordinator_parser() if command == "coordinator" else build_parser()
        args = parser.parse_args(args_list[1:] if command == "coordinator" else args_list)
        if command == "coordinator":
            args.ranks = _nnodes(args.nnodes) * args.nproc_per_node
            if not _loopback(args.bind) and not args.token:
                raise ConfigError(
                    "--token (or LLMCLUSTER_TOKEN) is required when binding to a "
                    "non-loopback address"
                )
            if args.metrics_port is not None:
                raise ConfigError("the coordinator has no GPUs: give --metrics-port to each "
                                  "`llmcluster node`")  # fmt: skip
    except UsageError as exc:
        return _fail(str(exc))
    except ConfigError as exc:
        return _fail(str(exc))
    if args.list:
        from llmcluster.listing import print_listing

        print_listing()
        return 0
    try:
        config = RunConfig(
            ranks=args.ranks,
            nproc_per_node=args.nproc_per_node,
            steps=args.steps,
            seed=args.seed,
            model=args.model,
            gpu=args.gpu,
            dataset=args.dataset,
            speed=args.speed,
            exit_after_s=args.exit_after_time,
            algorithm=args.algorithm,
            output_format=args.output_format,
            ui=args.ui,
            style=args.style,
            ascii_only=args.ascii_only,
            no_color=args.no_color,
            max_restarts=args.max_restarts,
            inject=tuple(args.inject),
            chaos=args.chaos,
            grad_bucket_bytes=args.grad_bucket,
            record_path=args.record_path,
        )
        config.validate()
        metrics = _metrics(args, config.nnodes)
        from llmcluster.control.limits import check_capacity

        check_capacity(config.ranks, config.nnodes)
        from llmcluster.sim.faults import build_setup

        plan = build_setup(config).plan
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc))
    # ranks rebuild the identical plan from the resolved names without re-running the picks
    config = dataclasses.replace(
        config, model=plan.model.name, gpu=plan.gpu.name, dataset=plan.dataset.name
    )
    if command == "coordinator":  # what ranks on every node see as MASTER_ADDR/MASTER_PORT
        wildcard = args.bind in ("0.0.0.0", "*", "::")
        master = (os.environ.get("MASTER_ADDR") or socket.gethostname()) if wildcard else args.bind
        config = dataclasses.replace(config, master_addr=master, master_port=args.port)
    if command == "coordinator":
        from llmcluster.launch.remote import run_coordinator

        return run_coordinator(
            config, plan, bind=args.bind, port=args.port,
            token=args.token, join_timeout_s=args.join_timeout,
        )  # fmt: skip
    from llmcluster.exporters.prometheus_server import MetricsError
    from llmcluster.launch.local import run_local

    try:
        return run_local(config, plan, metrics)
    except MetricsError as exc:
        return _fail(str(exc))


def _schema(rest: list[str]) -> int:
    """``llmcluster schema``: the JSON Schema of one ``--format jsonl`` line."""
    if rest:
        return _fail(f"schema takes no arguments, got {' '.join(rest)!r}")
    import json

    from llmcluster.wire.records import records_json_schema

    print(json.dumps(records_json_schema(), indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from llmcluster.config import BenchSettings
    from llmcluster.launch.bench import run_bench

    bench = BenchSettings(min_bytes=args.min_bytes, max_bytes=args.max_bytes, factor=args.factor,
                          iters=args.iters, warmup=args.warmup, json=args.json)  # fmt: skip
    config = RunConfig(ranks=args.ranks, nproc_per_node=args.nproc_per_node,
                       algorithm=args.algorithm, seed=args.seed, bench=bench)  # fmt: skip
    try:
        config.validate()
        bench.validate()
        return run_bench(config)
    except ConfigError as exc:
        print(f"llmcluster bench: error: {exc}", file=sys.stderr)
        return 2


def _node(args: argparse.Namespace) -> int:
    from llmcluster.exporters.prometheus_server import MetricsError
    from llmcluster.launch.remote import run_node

    if args.node_rank != "auto" and not args.node_rank.isdigit():
        return _fail(f"--node-rank must be a number or auto, got {args.node_rank!r}")
    try:
        metrics = _metrics(args, 1)
    except ConfigError as exc:
        return _fail(str(exc))
    try:
        return run_node(
            master_addr=args.master_addr,
            master_port=args.master_port,
            node_rank=-1 if args.node_rank == "auto" else int(args.node_rank),
            token=args.token,
            join_timeout_s=args.join_timeout,
            heartbeat_timeout_s=args.heartbeat_timeout,
            metrics=metrics,
        )
    except MetricsError as exc:
        return _fail(str(exc))
