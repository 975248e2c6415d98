"""Where records become output: the only module that owns a rich Console or Live.

``make_display(config)`` picks the sink: ``jsonl`` (one JSON object per line), the
scrolling ``log`` (plain text, no ANSI when piped or with NO_COLOR), or the ``live``
dashboard on a terminal. ``--record FILE.svg|.html|.txt`` saves what was shown.
``show_records`` lets the coordinator print what no rank 0 was left to show. A closed
stdout (``| head``, a hung-up terminal) is silenced, never a traceback: the run ends. What
goes to standard output goes through ``wholeline.WholeWrites``: into a pipe, each record is
one whole write, so a display killed while its reader lags leaves no half line behind.
"""

from __future__ import annotations

import functools
import json
import math
import os
import select
import shutil
import sys
import threading
from typing import Any, Protocol

from llmcluster.config import RunConfig
from llmcluster.render.cast import CastWriter
from llmcluster.render.wholeline import WholeWrites
from llmcluster.wire.records import Record, SummaryRecord, record_to_wire

LIVE_REFRESH_PER_S = 8


class Display(Protocol):
    """Shows records one by one; ``close`` restores the terminal."""

    def show(self, record: Record) -> None: ...

    def close(self) -> None: ...


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def jsonl_line(record: Record) -> str:
    """A record's compact JSON line (NaN and infinities become null)."""
    return json.dumps(_json_safe(record_to_wire(record)), separators=(",", ":"))


class JsonlDisplay:
    """One JSON object per line on stdout."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or WholeWrites()

    def show(self, record: Record) -> None:
        self.stream.write(jsonl_line(record) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def _is_bench(config: RunConfig) -> bool:
    return config.bench is not None


class LogDisplay:
    """The scrolling log: the chosen style's lines (the GPU grid every few steps in the
    default style)."""

    def __init__(self, config: RunConfig, console: Any) -> None:
        from llmcluster.render.base import framework_view
        from llmcluster.render.styles import make_style

        self.config, self.console = config, console
        view = framework_view(config.style, makes_files=config.makes_log_files)
        self.style = make_style(config.style, width=console.width, ascii_only=config.ascii_only,
                                bench=_is_bench(config), view=view,
                                smi_every=config.smi_every)  # fmt: skip

    def show(self, record: Record) -> None:
        for line in self.style.lines(record):
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        _save_recording(self.config, self.console)
        self.console.file.flush()


class LiveDisplay:
    """The dashboard on a terminal: a rich Live redrawn at a fixed rate (no flicker, no tearing)."""

    def __init__(self, config: RunConfig, console: Any) -> None:
        from rich.live import Live

        from llmcluster.render.dashboard import DashboardState

        self.config, self.console = config, console
        self.state = DashboardState(style=config.style)
        self.lock = threading.Lock()
        self.live = Live(
            get_renderable=self._renderable,
            console=console,
            refresh_per_second=LIVE_REFRESH_PER_S,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.live.start()

    def _renderable(self) -> Any:
        from llmcluster.render.dashboard import dashboard_renderable

        with self.lock:
            return dashboard_renderable(
                self.state, width=self.console.width, ascii_only=self.config.ascii_only
            )

    def show(self, record: Record) -> None:
        with self.lock:
            self.state.update(record)
        if isinstance(record, SummaryRecord):
            self._finish(record)

    def _finish(self, summary: SummaryRecord) -> None:
        from llmcluster.render.report import summary_renderable

        if self.live.is_started:
            self.live.refresh()
            self.live.stop()
            self.console.print(
                summary_renderable(self.state.run, summary, ascii_only=self.config.ascii_only)
            )

    def close(self) -> None:
        if self.live.is_started:
            self.live.stop()  # restores the cursor on every exit path
        _save_recording(self.config, self.console)
        self.console.file.flush()


def _save_recording(config: RunConfig, console: Any) -> None:
    path = config.record_path
    if not path:
        return
    if isinstance(console.file, _Tee):  # .cast: recorded as it was shown
        console.file.close()
    elif path.endswith(".svg"):
        console.save_svg(path, title="llmcluster")
    elif path.endswith(".html"):
        console.save_html(path)
    else:
        console.save_text(path)


class _Tee:
    """The terminal, and an asciicast recording of everything written to it."""

    def __init__(self, terminal: Any, cast: CastWriter) -> None:
        self.terminal, self.cast = terminal, cast

    def write(self, data: str) -> int:
        self.cast.write(data)
        return self.terminal.write(data)

    def flush(self) -> None:
        self.cast.flush()
        self.terminal.flush()

    def isatty(self) -> bool:
        return bool(self.terminal.isatty())

    def fileno(self) -> int:
        return int(self.terminal.fileno())

    def close(self) -> None:
        self.cast.close()


def make_console(config: RunConfig, *, file: Any = None) -> Any:
    """A rich Console honouring --no-color, NO_COLOR, --ascii, --record and a non-TTY stdout;
    ``--record FILE.cast`` records what it shows, with its timing, as asciicast v2."""
    no_color = config.no_color or "NO_COLOR" in os.environ
    target = file or WholeWrites()
    casting = bool(config.record_path and config.record_path.endswith(".cast"))
    width = None
    if casting:
        size = shutil.get_terminal_size()
        width = size.columns
        target = _Tee(target, CastWriter(config.record_path or "", width=size.columns,
                                         height=size.lines, title="llmcluster"))  # fmt: skip
    return _console_class()(
        file=target,
        width=width,
        no_color=no_color,
        color_system=None if no_color else "auto",
        highlight=False,
        emoji=False,
        safe_box=True,
        legacy_windows=False,
        record=bool(config.record_path) and not casting,
    )


@functools.cache
def _console_class() -> type:
    """rich's Console, except that a closed pipe raises ``BrokenPipeError`` for the caller to
    handle (rich's own ``on_broken_pipe`` exits with status 1, as if the program had failed)."""
    from rich.console import Console

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return PipeConsole


def wants_live(config: RunConfig, console: Any) -> bool:
    """``--ui live``, or ``auto`` on a terminal."""
    if config.output_format != "log" or config.ui == "log":
        return False
    return config.ui == "live" or bool(console.is_terminal)


def make_display(config: RunConfig) -> Display:
    """The display the user asked for (``--format``, ``--ui``)."""
    if config.output_format == "jsonl":
        return JsonlDisplay()
    console = make_console(config)
    if wants_live(config, console):
        return LiveDisplay(config, console)
    return LogDisplay(config, console)


def stdout_closed() -> bool:
    """Whether stdout's reader is gone (a pipe's far end closed, a terminal hung up)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # POLLERR and POLLHUP are always reported
        return bool(poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no file descriptor to tell (a test's capture)
        return False


def silence_stdout() -> None:
    """Point fd 1 at /dev/null, so what is still buffered or written later goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
    finally:
        os.close(devnull)


def show_records(config: RunConfig, records: list[Record]) -> None:
    """Show records directly (the coordinator's fallback when no rank 0 is left)."""
    if stdout_closed():
        silence_stdout()
        return
    display: Display
    if config.output_format == "jsonl":
        display = JsonlDisplay()
    else:
        display = LogDisplay(config, make_console(config))
    try:
        try:
            for record in records:
                display.show(record)
        finally:
            display.close()
    except OSError:  # closed while writing (EPIPE, or EIO from a hung-up terminal)
        silence_stdout()
