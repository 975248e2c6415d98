"""Command line: torchrun-flavoured flags -> RunConfig, then launch or bench.

Usage errors print one line (``llmcluster: error: ...``) and exit 2; nothing is
started before the whole configuration has been checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import NoReturn

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
    parser.add_argument("--steps", type=_int, default=None, help="training steps (default 200)")
    parser.add_argument("--model", default=None, help="model name (see --list)")
    parser.add_argument("--gpu", default=None, help="GPU type (see --list)")
    parser.add_argument("--dataset", default=None, help="dataset name (see --list)")
    parser.add_argument(
        "--speed", "--speed-factor", type=_float, default=None, help="simulated s per wall s"
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
    return parser


def build_bench_parser() -> argparse.ArgumentParser:
    """``llmcluster bench``: the collectives alone, nccl-tests style."""
    parser = _Parser(prog="llmcluster bench", description="Benchmark allreduce over the fabric.")
    _add_cluster_flags(parser)
    parser.set_defaults(ranks=8, algorithm="ring")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmcluster`` command; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list[:1] == ["bench"]:
            from llmcluster.worker.bench import run_bench

            bench_args = build_bench_parser().parse_args(args_list[1:])
            return run_bench(bench_args)
        args = build_parser().parse_args(args_list)
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
    from llmcluster.coordinator.launch import run_local

    return run_local(config, build_setup(config).plan)
