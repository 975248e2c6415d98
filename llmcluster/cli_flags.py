"""The argparse parsers of ``llmcluster`` and its subcommands, and the flag value types.

Parsers never exit the process: an error raises UsageError (one line), ``--help``
and ``--version`` print and raise HelpShown. Defaults read from the environment
(``MASTER_PORT``, ``NODE_RANK``, ...) are left as None here and resolved by the CLI
inside its error handling, so a bad variable is a usage error, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from typing import NoReturn

from llmcluster import __version__
from llmcluster.config import (
    ALGORITHMS,
    FORMATS,
    UIS,
    ConfigError,
    parse_duration,
)
from llmcluster.render.styles import STYLES
from llmcluster.sim.plan import DEFAULT_STEPS
from llmcluster.worker.logspec import parse_ranks_filter, std_from_str

MAX_SIZE_BYTES = 1 << 40

COMMANDS_EPILOG = """commands:
  llmcluster [options]              a training run on this machine (the options above)
  llmcluster launch [options]       torchrun-style: the same command on every node of a job
  llmcluster bench [options]        allreduce over the real fabric, nccl-tests style
  llmcluster coordinator [options]  rendezvous and telemetry for node agents on other hosts
  llmcluster node [options]         join a coordinator as one node and run its local ranks

Run 'llmcluster COMMAND --help' for a command's options."""


class UsageError(Exception):
    """A one-line usage error (exit 2)."""


class HelpShown(Exception):
    """``--help`` or ``--version`` printed its text (exit 0)."""


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default after its help, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(formatter_class=_Help, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        if status:
            raise UsageError((message or "").strip() or f"exit {status}")
        raise HelpShown()


def _int(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _speed(text: str) -> float | None:
    return None if text.strip().lower() == "auto" else _float(text)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _start_time(text: str) -> float:
    """``--start-time``: an ISO 8601 time (local time unless it says), or ``-2h``-style."""
    value = text.strip()
    if value.startswith("-"):
        try:
            return time.time() - parse_duration(value[1:])
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError, OSError):
        raise argparse.ArgumentTypeError(
            f"expected an ISO time like 2026-11-30T09:00 or a relative one like -2h, got {text!r}"
        ) from None


def _size(text: str) -> int:
    units = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
             "g": 1 << 30, "gb": 1 << 30}  # fmt: skip
    lowered = text.strip().lower()
    number = lowered.rstrip("kmgb")
    unit = lowered[len(number) :]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        value = math.nan
    if not 0 <= value <= MAX_SIZE_BYTES:  # also NaN and infinities
        raise argparse.ArgumentTypeError(
            f"expected a size like 16M or 4096 (at most 1T), got {text!r}"
        )
    return int(value)


def join_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--flag -5s`` -> ``--flag=-5s`` for options taking a value, so a value that starts with
    a dash reaches the flag's own check instead of argparse's "expected one argument"."""
    takes_value = {
        option
        for action in parser._actions
        if action.nargs is None and action.option_strings
        for option in action.option_strings
    }
    known = {option for action in parser._actions for option in action.option_strings}
    joined: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else None
        if (
            token in takes_value
            and following is not None
            and following.startswith("-")
            and following.split("=", 1)[0] not in known
        ):
            joined.append(f"{token}={following}")
            index += 2
            continue
        joined.append(token)
        index += 1
    return joined


def _add_cluster_flags(parser: argparse.ArgumentParser, *, ranks: int | None) -> None:
    """``--ranks``/``--nproc-per-node`` (``ranks=None``: a launch, where torchrun's flags say
    the shape) and the allreduce and seed."""
    if ranks is not None:
        parser.add_argument("--ranks", "-n", type=_int, default=ranks, help="GPU ranks (processes)")
        parser.add_argument(
            "--nproc-per-node", "--nproc_per_node", type=_int, default=8, help="ranks per node"
        )
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="hierarchical",
                        help="allreduce algorithm")  # fmt: skip
    parser.add_argument("--seed", type=_int, default=None,
                        help="replay a run exactly (default: a fresh seed from the OS, "
                        "printed in the run header)")  # fmt: skip


def _std(text: str) -> str:
    """A ``--redirects``/``--tee`` value, checked by torch's own parser (its message)."""
    try:
        std_from_str(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _ranks_filter(text: str) -> str:
    try:
        parse_ranks_filter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_log_flags(parser: argparse.ArgumentParser) -> None:
    """torchrun's log options, spelled as torchrun spells them, defaults from its PET_* vars."""
    env = os.environ.get
    parser.add_argument(
        "--log-dir",
        "--log_dir",
        default=env("PET_LOG_DIR") or None,
        help="base directory for per-rank log files (torchrun's)",
    )
    parser.add_argument(
        "-r",
        "--redirects",
        type=_std,
        default=env("PET_REDIRECTS", "0"),
        help="redirect std streams into log files: 0-3 or e.g. 0:1,3:2",
    )
    parser.add_argument(
        "-t",
        "--tee",
        type=_std,
        default=env("PET_TEE", "0"),
        help="tee std streams into log files and the console",
    )
    parser.add_argument(
        "--local-ranks-filter",
        "--local_ranks_filter",
        type=_ranks_filter,
        default=env("PET_LOCAL_RANKS_FILTER", ""),
        help="only show these local ranks' logs in the console, e.g. 0,3",
    )
    parser.add_argument(
        "--role",
        default=env("PET_ROLE", "default"),
        help="the workers' role: the [<role><local_rank>]: prefix",
    )


def add_metrics_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=_int, default=None, metavar="PORT",
                        help="serve dcgm-exporter-style metrics (9400 is dcgm-exporter's port); "
                        "a local run serves node N on PORT+N (default: off)")  # fmt: skip
    parser.add_argument("--metrics-bind", default="127.0.0.1", metavar="ADDR",
                        help="address the metrics endpoints listen on")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (a training run on this machine)."""
    parser = Parser(
        prog="llmcluster",
        usage="llmcluster [launch|bench|coordinator|node] [options]",
        description="Imitate a distributed LLM training run with real processes and collectives.",
        epilog=COMMANDS_EPILOG,
    )
    add_run_flags(parser)
    add_metrics_flags(parser)
    return parser


def add_run_flags(parser: argparse.ArgumentParser, *, ranks: int | None = 64) -> None:
    """The options of a training run (``ranks=None``: without ``--ranks``/``--nproc-per-node``,
    which ``llmcluster launch`` takes as torchrun does)."""
    parser.add_argument("--version", action="version", version=f"llmcluster {__version__}")
    _add_log_flags(parser)
    _add_cluster_flags(parser, ranks=ranks)
    parser.add_argument(
        "--steps", type=_int, default=None, help=f"training steps (default: {DEFAULT_STEPS})"
    )
    parser.add_argument("--model", default=None,
                        help="model name, see --list (default: picked from the seed)")  # fmt: skip
    parser.add_argument("--gpu", default=None,
                        help="GPU type, see --list (default: picked from the seed)")  # fmt: skip
    parser.add_argument("--dataset", default=None,
                        help="dataset, see --list (default: picked from the seed)")  # fmt: skip
    parser.add_argument(
        "--speed",
        "--speed-factor",
        type=_speed,
        default=None,
        help="simulated s per wall s, or auto (default: auto, a watchable pace)",
    )
    parser.add_argument(
        "--start-time",
        type=_start_time,
        default=None,
        metavar="TIME",
        help="where the simulated timeline begins: an ISO time or -2h "
        "(default: far enough back that no timestamp is in the future)",
    )
    parser.add_argument(
        "--start-at-launch",
        action="store_true",
        help="begin the timeline now (later records are stamped in the future)",
    )
    parser.add_argument("--exit-after-time", type=_duration, default=None, metavar="DURATION",
                        help="stop after this wall time, e.g. 2m30s (default: none)")  # fmt: skip
    parser.add_argument("--format", dest="output_format", choices=FORMATS, default="log",
                        help="output format")  # fmt: skip
    parser.add_argument("--ui", choices=UIS, default="auto",
                        help="live dashboard, scrolling log, or auto: live on a "
                        "terminal")  # fmt: skip
    parser.add_argument("--style", choices=list(STYLES), default="default",
                        help="whose log format to imitate")  # fmt: skip
    parser.add_argument("--ascii", dest="ascii_only", action="store_true",
                        help="ASCII characters only (default: off)")  # fmt: skip
    parser.add_argument("--no-color", action="store_true",
                        help="no colours, as NO_COLOR (default: off)")  # fmt: skip
    parser.add_argument("--max-restarts", type=_int, default=3,
                        help="worker group restarts before the run fails")  # fmt: skip
    parser.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="FAULT",
        help="inject a fault, e.g. kill:rank=17,step=40  hang:rank=3,step=25  "
        "oom:rank=2,step=30  straggler:rank=5,slowdown=1.3  throttle:gpu=12  nan:step=60  "
        "spike:step=80 "
        "(repeatable; default: none)",
    )
    parser.add_argument("--chaos", type=_float, default=0.0, metavar="RATE",
                        help="random rank failures per step, e.g. 0.01")  # fmt: skip
    parser.add_argument("--grad-bucket", type=_size, default=0, metavar="SIZE",
                        help="extra real gradient bytes reduced per step, e.g. 16M")  # fmt: skip
    parser.add_argument("--record", dest="record_path", default=None, metavar="FILE",
                        help="save what rank 0 showed as .svg, .html or .txt "
                        "(default: none)")  # fmt: skip
    parser.add_argument("--list", action="store_true",
                        help="list models, GPUs, datasets, styles (default: off)")  # fmt: skip


def build_bench_parser() -> argparse.ArgumentParser:
    """``llmcluster bench``: the collectives alone, nccl-tests style."""
    parser = Parser(prog="llmcluster bench", description="Benchmark allreduce over the fabric.")
    _add_cluster_flags(parser, ranks=8)
    parser.add_argument("--min-bytes", "-b", type=_size, default=8, help="smallest size")
    parser.add_argument("--max-bytes", "-e", type=_size, default=16 << 20, help="largest size")
    parser.add_argument("--factor", "-f", type=_int, default=2, help="size multiplier")
    parser.add_argument("--iters", type=_int, default=20, help="timed iterations per size")
    parser.add_argument("--warmup", type=_int, default=5, help="untimed iterations per size")
    parser.add_argument("--json", action="store_true",
                        help="print JSON rows instead of the table (default: off)")  # fmt: skip
    return parser


def build_coordinator_parser() -> argparse.ArgumentParser:
    """``llmcluster coordinator``: rendezvous, health and telemetry for remote node agents."""
    parser = Parser(
        prog="llmcluster coordinator",
        description="Serve rendezvous, health and telemetry to node agents on other hosts.",
    )
    add_run_flags(parser)
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", "--master-port", dest="port", type=_int, default=None,
                        help="control port; records on port + 1 "
                        "(default: $MASTER_PORT, else 29500)")  # fmt: skip
    parser.add_argument("--nnodes", default=None,
                        help="N or MIN:MAX (default: $NNODES, else 1)")  # fmt: skip
    add_remote_flags(parser)
    add_metrics_flags(parser)  # refused: a coordinator has no GPUs to serve
    return parser


def build_node_parser() -> argparse.ArgumentParser:
    """``llmcluster node``: a node agent that joins a coordinator and runs its local ranks."""
    parser = Parser(prog="llmcluster node", description="Join a coordinator as one node.")
    parser.add_argument("--master-addr", default=None,
                        help="the coordinator's address (default: $MASTER_ADDR, "
                        "else 127.0.0.1)")  # fmt: skip
    parser.add_argument("--master-port", type=_int, default=None,
                        help="the coordinator's port "
                        "(default: $MASTER_PORT, else 29500)")  # fmt: skip
    parser.add_argument("--node-rank", default=None,
                        help="this node's rank, or auto: assigned on join "
                        "(default: $NODE_RANK, else auto)")  # fmt: skip
    parser.add_argument(
        "--nnodes", type=_int, default=0, help="nodes this node expects the run to have (0: any)"
    )
    parser.add_argument(
        "--nproc-per-node",
        "--nproc_per_node",
        type=_int,
        default=0,
        help="ranks per node this node expects (0: any)",
    )
    parser.add_argument("--heartbeat-timeout", type=_float, default=3.0,
                        help="seconds of coordinator silence before giving up")  # fmt: skip
    add_remote_flags(parser)
    add_metrics_flags(parser)
    return parser


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", default=None,
                        help="shared secret (default: $LLMCLUSTER_TOKEN, else none)")  # fmt: skip
    parser.add_argument("--join-timeout", type=_duration, default=120.0, metavar="DURATION",
                        help="how long to wait for the rendezvous, e.g. 90 or 2m")  # fmt: skip
