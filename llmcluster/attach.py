"""``llmcluster attach`` and ``llmcluster ps``: a second terminal onto a running cluster.

``attach`` subscribes to the run's record hub as a read-only observer (a local run is
found by its run file, a remote one by ``--master-addr``/``--master-port``: records are
on the port after the master port, reached with the run's token over CurveZMQ). The hub
sends the cluster's snapshot first, so a late attach shows the current state at once; it
ends when the run ends (the summary) or when the coordinator goes silent. Detaching
(Ctrl+C, a closed terminal) only drops one observer: the run never waits for one. Views:
the live dashboard (on a terminal; on a pipe, the log), the GPU grid, one node's
``nvidia-smi`` table, or the log in the run's style. The grid and the table show the latest
state at most ``REDRAW_S`` apart (as ``watch`` or ``nvidia-smi -l`` do), never a frame per
record: a fast run sends hundreds a second, and drawing each cost the run's own CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from llmcluster.config import RunConfig
from llmcluster.control.security import CurveKeys
from llmcluster.launch.runfile import RunFile, live_runs
from llmcluster.render.styles import STYLES
from llmcluster.wire.records import RanksRecord, Record, RunRecord, SummaryRecord

VIEWS = ("dashboard", "grid", "smi", "log")
SILENCE_S = 6.0  # the hub beats every second; this long without a word means it is gone
POLL_S = 0.2
REDRAW_S = 0.25  # rich Live's default rate: 4 frames a second


class AttachError(Exception):
    """A one-line reason to give up (exit 1), e.g. no live run."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_attach_parser() -> argparse.ArgumentParser:
    """``llmcluster attach [RUN_ID]``."""
    parser = _Parser(prog="llmcluster attach", description="Watch a running cluster, read-only.")
    parser.add_argument("run_id", nargs="?", default=None, help="a live run (see llmcluster ps)")
    parser.add_argument("--view", choices=VIEWS, default="dashboard",
                        help="what to show (default: the dashboard on a terminal, the log "
                        "lines on a pipe)")  # fmt: skip
    parser.add_argument("--node", type=int, default=0, help="the node --view smi shows")
    parser.add_argument("--master-addr", default=None, help="a remote coordinator's address")
    parser.add_argument("--master-port", type=int, default=29500)
    parser.add_argument("--token", default=None,
                        help="a remote run's token (default: $LLMCLUSTER_TOKEN)")  # fmt: skip
    parser.add_argument("--style", choices=list(STYLES), default="default", help="--view log")
    parser.add_argument("--ascii", dest="ascii_only", action="store_true")
    parser.add_argument("--no-color", action="store_true")
    return parser


def find_run(run_id: str | None) -> RunFile:
    """The live local run named (by id or its prefix), or the only one."""
    runs = live_runs()
    if run_id is not None:
        runs = [r for r in runs if r.run_id.startswith(run_id)]
    if not runs:
        named = f" {run_id!r}" if run_id else ""
        raise AttachError(f"no live run{named} on this machine (llmcluster ps lists them)")
    if len(runs) > 1:
        raise AttachError(f"{len(runs)} runs are live ({', '.join(r.run_id for r in runs)}); "
                          "name one")  # fmt: skip
    return runs[0]


def attach_main(argv: Sequence[str]) -> int:
    """Entry point of ``llmcluster attach``."""
    args = build_attach_parser().parse_args(list(argv))
    if not 1 <= args.master_port <= 65534:
        print("llmcluster attach: error: --master-port must be between 1 and 65534",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        if args.master_addr:
            endpoint = f"tcp://{args.master_addr}:{args.master_port + 1}"
        else:
            endpoint = find_run(args.run_id).records
    except AttachError as exc:
        print(f"llmcluster attach: {exc}", file=sys.stderr)
        return 1
    config = RunConfig(style=args.style, ascii_only=args.ascii_only, no_color=args.no_color,
                       ui="auto" if args.view == "dashboard" else "log")  # fmt: skip
    token = args.token if args.token is not None else os.environ.get("LLMCLUSTER_TOKEN", "")
    curve = CurveKeys.from_token(token) if args.master_addr else None
    if args.master_addr and curve is None:
        print("llmcluster attach: error: a remote run needs its --token (or LLMCLUSTER_TOKEN)",
              file=sys.stderr)  # fmt: skip
        return 2
    return watch(endpoint, config, args.view, args.node, curve)


def ps_main(argv: Sequence[str]) -> int:
    """Entry point of ``llmcluster ps``: the live local runs, oldest first."""
    if argv:
        print(f"llmcluster ps: error: ps takes no arguments, got {' '.join(argv)!r}",
              file=sys.stderr)  # fmt: skip
        return 2
    runs = live_runs()
    if not runs:
        print("no live runs")
        return 0
    print(f"{'RUN_ID':<14}{'PID':>8}{'RANKS':>7}  {'STARTED':<19}  UPTIME")
    now = time.time()
    for run in runs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started))
        print(f"{run.run_id:<14}{run.pid:>8}{run.world_size:>7}  {started:<19}  "
              f"{_uptime(now - run.started)}")  # fmt: skip
    return 0


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def detach_on_hangup() -> None:
    """A closed terminal (SIGHUP) or SIGTERM detaches like Ctrl+C does."""

    def detach(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, detach)


class _Screen:
    """A view redrawn from the latest records (the grid, or one node's nvidia-smi)."""

    def __init__(self, config: RunConfig, console: Any, view: str, node: int) -> None:
        self.config, self.console, self.view, self.node = config, console, view, node
        self.run: RunRecord | None = None
        self.pending: RanksRecord | None = None  # the latest state, not drawn yet
        self.drawn_at = -math.inf

    def show(self, record: Record) -> None:
        from llmcluster import render

        if isinstance(record, RunRecord):
            if self.view == "smi" and not 0 <= self.node < record.nnodes:
                raise AttachError(f"--node {self.node}: the run has nodes 0 to {record.nnodes - 1}")
            self.run = record
        elif isinstance(record, RanksRecord) and self.run:
            self.pending = record
            self.tick()
        elif isinstance(record, SummaryRecord):
            self.tick(final=True)  # the last state first, then the summary under it
            width = self.console.width
            self._print(render.summary_lines(self.run, record, width=width,
                                             ascii_only=self.config.ascii_only))  # fmt: skip

    def tick(self, *, final: bool = False) -> None:
        """Draw the latest state if it is not on screen and the last frame is REDRAW_S old
        (``final``: whatever its age)."""
        from llmcluster import render

        now = time.monotonic()
        record = self.pending
        if record is None or self.run is None or (not final and now - self.drawn_at < REDRAW_S):
            return
        self.pending, self.drawn_at = None, now
        if self.view == "smi":
            from llmcluster.render.smi import smi_lines

            lines = smi_lines(self.run, record, self.node)
        else:
            lines = render.grid_lines(self.run, record, width=self.console.width,
                                      ascii_only=self.config.ascii_only)  # fmt: skip
        self._draw(lines)

    def _draw(self, lines: list[str]) -> None:
        if self.console.is_terminal:
            self.console.clear()
        self._print(lines)

    def _print(self, lines: list[str]) -> None:
        # one print for the frame: rich's per-call cost, once per line, was most of a redraw
        self.console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()

    def close(self) -> None:
        self.console.file.flush()


class _Sink:
    """The run's own displays."""

    def __init__(self, display: Any) -> None:
        self.display = display

    def show(self, record: Record) -> None:
        self.display.show(record)

    def tick(self) -> None:
        """Nothing to catch up on: the run's displays show every record as it comes."""

    def close(self) -> None:
        self.display.close()


def _view(config: RunConfig, view: str, node: int) -> _Screen | _Sink:
    from llmcluster.render.sinks import LiveDisplay, LogDisplay, make_console, wants_live

    console = make_console(config)
    if view in ("grid", "smi"):
        return _Screen(config, console, view, node)
    if view == "dashboard" and wants_live(config, console):
        return _Sink(LiveDisplay(config, console))
    return _Sink(LogDisplay(config, console))


def watch(endpoint: str, config: RunConfig, view: str, node: int,
          curve: CurveKeys | None = None) -> int:  # fmt: skip
    """Show the run at ``endpoint`` until it ends; returns the exit code."""
    import zmq

    from llmcluster.telemetry.client import HubSilent, RecordClient

    detach_on_hangup()
    screen = _view(config, view, node)
    ctx = zmq.Context()
    client = RecordClient(ctx, endpoint, role="observer", silence_s=SILENCE_S, curve=curve)
    try:
        while True:
            for _, record in client.receive(POLL_S):
                screen.show(record)
                if isinstance(record, SummaryRecord):
                    return 0
            screen.tick()
    except HubSilent as exc:
        print(f"llmcluster attach: {exc}; detaching", file=sys.stderr)
        return 1
    except AttachError as exc:
        print(f"llmcluster attach: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): what a shell reports for SIGPIPE
        return 128 + signal.SIGPIPE
    finally:
        with contextlib.suppress(BrokenPipeError):
            screen.close()
        client.close()
        ctx.term()
