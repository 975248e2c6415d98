"""The argparse parsers of ``llmcluster`` and its subcommands (value types: ``cli_values``).

Parsers never exit the process: an error raises UsageError (one line), ``--help``
and ``--version`` print and raise HelpShown. Defaults read from the environment
(``MASTER_PORT``, ``NODE_RANK``, ...) are left as None here and resolved by the CLI
inside its error handling, so a bad variable is a usage error, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from llmcluster import __version__
from llmcluster.cli_values import (
    duration_value,
    float_value,
    int_value,
    interval_value,
    ranks_filter_value,
    size_value,
    speed_value,
    start_time_value,
    std_value,
)
from llmcluster.config import (
    ALGORITHMS,
    FORMATS,
    UIS,
)
from llmcluster.render.styles import STYLES
from llmcluster.sim.plan import DEFAULT_STEPS

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
        parser.add_argument(
            "--ranks", "-n", type=int_value, default=ranks, help="GPU ranks (processes)"
        )
        parser.add_argument(
            "--nproc-per-node", "--nproc_per_node", type=int_value, default=8, help="ranks per node"
        )
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="hierarchical",
                        help="allreduce algorithm")  # fmt: skip
    parser.add_argument("--seed", type=int_value, default=None,
                        help="replay a run exactly (default: a fresh seed from the OS, "
                        "printed in the run header)")  # fmt: skip


def _add_log_flags(parser: argparse.ArgumentParser, *, inherit: bool = False) -> None:
    """torchrun's log options, spelled as torchrun spells them, defaults from its PET_* vars
    (``inherit``: a node's, whose unset options are the coordinator's: default None)."""

    def env(name: str, default: str | None = None) -> str | None:
        return os.environ.get(name, None if inherit else default)

    parser.add_argument(
        "--log-dir",
        "--log_dir",
        default=env("PET_LOG_DIR") or None,
        help="base directory for per-rank log files (torchrun's)",
    )
    parser.add_argument(
        "-r",
        "--redirects",
        type=std_value,
        default=env("PET_REDIRECTS", "0"),
        help="redirect std streams into log files: 0-3 or e.g. 0:1,3:2",
    )
    parser.add_argument(
        "-t",
        "--tee",
        type=std_value,
        default=env("PET_TEE", "0"),
        help="tee std streams into log files and the console",
    )
    parser.add_argument(
        "--local-ranks-filter",
        "--local_ranks_filter",
        type=ranks_filter_value,
        default=env("PET_LOCAL_RANKS_FILTER", ""),
        help="only show these local ranks' logs in the console, e.g. 0,3",
    )
    parser.add_argument(
        "--role",
        default=env("PET_ROLE", "default"),
        help="the workers' role: the [<role><local_rank>]: prefix",
    )


def add_metrics_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int_value, default=None, metavar="PORT",
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
        "--steps", type=int_value, default=None, help=f"training steps (default: {DEFAULT_STEPS})"
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
        type=speed_value,
        default=None,
        help="simulated s per wall s, or auto (default: auto, a watchable pace)",
    )
    parser.add_argument(
        "--start-time",
        type=start_time_value,
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
    parser.add_argument("--exit-after-time", type=duration_value, default=None, metavar="DURATION",
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
    parser.add_argument("--max-restarts", type=int_value, default=3,
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
    parser.add_argument("--chaos", type=float_value, default=0.0, metavar="RATE",
                        help="random rank failures per step, e.g. 0.01")  # fmt: skip
    parser.add_argument("--grad-bucket", type=size_value, default=0, metavar="SIZE",
                        help="extra real gradient bytes reduced per step, e.g. 16M")  # fmt: skip
    parser.add_argument("--smi-every", type=int_value, default=None, metavar="N",
                        help="print node 0's nvidia-smi table every N steps, as a job that "
                        "shells out to nvidia-smi (default: never)")  # fmt: skip
    parser.add_argument("--tensorboard", dest="tensorboard_dir", default=None, metavar="DIR",
                        help="write the run's scalars as TensorBoard event files (needs the "
                        "tensorboard extra; default: none)")  # fmt: skip
    parser.add_argument("--record", dest="record_path", default=None, metavar="FILE",
                        help="save what rank 0 showed as .svg, .html or .txt "
                        "(default: none)")  # fmt: skip
    parser.add_argument("--list", action="store_true",
                        help="list models, GPUs, datasets, styles (default: off)")  # fmt: skip


def build_bench_parser() -> argparse.ArgumentParser:
    """``llmcluster bench``: the collectives alone, nccl-tests style."""
    parser = Parser(prog="llmcluster bench", description="Benchmark allreduce over the fabric.")
    _add_cluster_flags(parser, ranks=8)
    parser.add_argument("--min-bytes", "-b", type=size_value, default=8, help="smallest size")
    parser.add_argument("--max-bytes", "-e", type=size_value, default=16 << 20, help="largest size")
    parser.add_argument("--factor", "-f", type=int_value, default=2, help="size multiplier")
    parser.add_argument("--iters", type=int_value, default=20, help="timed iterations per size")
    parser.add_argument("--warmup", type=int_value, default=5, help="untimed iterations per size")
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
    parser.add_argument("--port", "--master-port", dest="port", type=int_value, default=None,
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
    parser.add_argument("--master-port", type=int_value, default=None,
                        help="the coordinator's port "
                        "(default: $MASTER_PORT, else 29500)")  # fmt: skip
    parser.add_argument("--node-rank", default=None,
                        help="this node's rank, or auto: assigned on join "
                        "(default: $NODE_RANK, else auto)")  # fmt: skip
    parser.add_argument(
        "--nnodes",
        type=int_value,
        default=0,
        help="nodes this node expects the run to have (0: any)",
    )
    parser.add_argument(
        "--nproc-per-node",
        "--nproc_per_node",
        type=int_value,
        default=0,
        help="ranks per node this node expects (0: any)",
    )
    parser.add_argument("--heartbeat-timeout", type=float_value, default=3.0,
                        help="seconds of coordinator silence before giving up")  # fmt: skip
    parser.add_argument("--monitor-interval", type=interval_value, default=0.1,
                        help="how often this node's agent checks its ranks, in seconds, as "
                        "torchrun's (default: 0.1)")  # fmt: skip
    _add_log_flags(parser, inherit=True)  # this node's ranks (default: the coordinator's)
    add_remote_flags(parser)
    add_metrics_flags(parser)
    return parser


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", default=None,
                        help="shared secret (default: $LLMCLUSTER_TOKEN, else none)")  # fmt: skip
    parser.add_argument("--join-timeout", type=duration_value, default=120.0, metavar="DURATION",
                        help="how long to wait for the rendezvous, e.g. 90 or 2m")  # fmt: skip
