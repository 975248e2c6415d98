"""Where records become output: the only module that owns a rich Console or Live.

``make_display(config)`` picks the sink: ``jsonl`` (one JSON object per line),
a scrolling ``log`` (plain text, no ANSI when piped or with NO_COLOR), or the
``live`` dashboard on a terminal. ``receive_records`` is rank 0's subscriber
loop; ``show_records`` lets the coordinator print what no rank 0 was left to show.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from typing import Any, Protocol

import zmq

from llmcluster.config import RunConfig
from llmcluster.wire import DecodeError, Kind, decode

GRID_EVERY_STEPS = 10


class Display(Protocol):
    """Shows records one by one; ``close`` restores the terminal."""

    def show(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class JsonlDisplay:
    """One JSON object per line on stdout (NaN and infinities become null)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout

    def show(self, record: dict[str, Any]) -> None:
        self.stream.write(json.dumps(_json_safe(record), separators=(",", ":")) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class LogDisplay:
    """The scrolling log: the chosen style's lines, the GPU grid every few steps."""

    def __init__(self, config: RunConfig, console: Any) -> None:
        from llmcluster import render

        self.render = render
        self.config = config
        self.console = console
        self.style = render.STYLES[config.style]
        self.run: dict[str, Any] | None = None

    def _print(self, lines: list[str]) -> None:
        for line in lines:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def show(self, record: dict[str, Any]) -> None:
        kind, render, run = record.get("type"), self.render, self.run
        if kind == "run":
            self.run = record
            self._print(render.launcher_lines(record))
            self._print(render.nccl_init_lines(record, 0))
            self._print(render.gpu_detect_lines(record))
            self._print(self.style.preamble(record))
            return
        if run is None:
            return
        width = self.console.width
        if kind == "step":
            self._print(self.style.step_line(run, record))
        elif kind == "ranks" and (record["step"] % GRID_EVERY_STEPS == 0 or record["step"] == 1):
            self._print(
                render.grid_lines(run, record, width=width, ascii_only=self.config.ascii_only)
            )
        elif kind == "eval":
            self._print(self.style.eval_lines(run, record))
        elif kind == "checkpoint":
            self._print(self.style.checkpoint_lines(run, record))
        elif kind == "failure":
            self._print(render.failure_lines(run, record))
        elif kind == "restart":
            self._print(render.restart_lines(run, record))
        elif kind == "summary":
            self._print(
                render.summary_lines(run, record, width=width, ascii_only=self.config.ascii_only)
            )
        elif kind == "log":
            self._print([f"{record.get('level', 'INFO')}: {record.get('text', '')}"])

    def close(self) -> None:
        self.console.file.flush()


def make_console(config: RunConfig, *, file: Any = None) -> Any:
    """A rich Console honouring --no-color, NO_COLOR, --ascii and a non-TTY stdout."""
    from rich.console import Console

    no_color = config.no_color or "NO_COLOR" in os.environ
    return Console(
        file=file or sys.stdout,
        no_color=no_color,
        color_system=None if no_color else "auto",
        highlight=False,
        emoji=False,
        safe_box=True,
        legacy_windows=False,
    )


def make_display(config: RunConfig) -> Display:
    """The display the user asked for (``--format``, ``--ui``)."""
    if config.output_format == "jsonl":
        return JsonlDisplay()
    return LogDisplay(config, make_console(config))


def show_records(config: RunConfig, records: list[dict[str, Any]]) -> None:
    """Show records directly (the coordinator's fallback when no rank 0 is left)."""
    display = make_display(config)
    try:
        for record in records:
            display.show(record)
    finally:
        display.close()


def receive_records(
    ctx: zmq.Context,
    endpoint: str,
    run_id: str,
    display: Display,
    *,
    subscribed: threading.Event,
    stopping: threading.Event,
) -> None:
    """Subscribe to the coordinator's records and show them until the summary (or stop)."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.MAXMSGSIZE, 16 * 1024 * 1024)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    subscribed.set()
    try:
        while not stopping.is_set():
            if not sub.poll(100):
                continue
            try:
                msg = decode(sub.recv_multipart(), run_id=run_id, max_buffers=0)
            except DecodeError:
                continue
            if msg.kind is not Kind.RECORD:
                continue
            record = msg.body["record"]
            display.show(record)
            if record.get("type") == "summary":
                return
    finally:
        sub.close(0)
