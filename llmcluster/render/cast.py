"""asciicast v2 recording (``--record run.cast``): what the terminal showed, with its timing.

Format (https://docs.asciinema.org/manual/asciicast/v2): newline-delimited JSON; line 1 the
header ``{"version": 2, "width": W, "height": H, "timestamp": ..., "env": {...}}``, then one
event per line ``[time, "o", data]`` where ``time`` is float seconds since the recording began
(absolute, not a delta) and ``data`` the output text (escapes included). ``asciinema play``
replays it and svg-term converts it. ``CastWriter`` is a write-only text stream, so a rich
``Console(file=CastWriter(...))`` records everything it prints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO


class CastWriter:
    """Writes an asciicast v2 file as output arrives (each event flushed: a killed run's
    recording stays playable up to its last event)."""

    def __init__(
        self,
        path: str,
        *,
        width: int,
        height: int,
        title: str | None = None,
        env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        timestamp: int | None = None,
    ) -> None:
        self.clock = clock
        self.started = clock()
        self.out: TextIO = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        header: dict[str, object] = {
            "version": 2,
            "width": width,
            "height": height,
            "timestamp": int(time.time()) if timestamp is None else timestamp,
            "env": env if env is not None else {"TERM": "xterm-256color", "SHELL": "/bin/bash"},
        }
        if title:
            header["title"] = title
        self.out.write(json.dumps(header) + "\n")
        self.out.flush()

    def _event(self, code: str, data: str) -> None:
        elapsed = round(max(0.0, self.clock() - self.started), 6)
        self.out.write(json.dumps([elapsed, code, data], ensure_ascii=True) + "\n")
        self.out.flush()

    def write(self, data: str) -> int:
        """An output event (``"o"``); newlines become CRLF, as a terminal in raw mode sees them."""
        if data and not self.out.closed:
            self._event("o", data.replace("\r\n", "\n").replace("\n", "\r\n"))
        return len(data)

    def flush(self) -> None:
        if not self.out.closed:
            self.out.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if not self.out.closed:
            self.out.close()

    def __enter__(self) -> CastWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
