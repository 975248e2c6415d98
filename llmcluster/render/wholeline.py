"""Whole writes into a pipe: a display killed while its reader lags leaves no half record.

A blocking write into a full pipe stops part-way through the data and waits there; a display
killed at that moment (a restart or an abort kills rank 0) leaves half a line in the pipe,
and the next writer (the next attempt's display, or the coordinator) continues it: one
corrupt record for ``llmcluster --format jsonl | shipper`` whenever the shipper is slow.

Into a pipe, ``write_whole`` first waits, asleep in short polls (the writer stays killable,
and nothing of the data is written yet), until the pipe has room for all of it, and grows
the pipe (``F_SETPIPE_SZ``) when it could never hold it; the write then finds room and cannot
stop part-way. Linux counts a pipe's room in page-sized slots, and a slot that is partly
filled may take no more data, so the room asked for is the data plus two pages, beside
twice the bytes already queued. Anything else (a terminal, a file) is written as it is.

``write_line`` is the same care for standard error, which a node's ranks and agent share: a
line and its newline in one write (``print`` writes them apart under PYTHONUNBUFFERED).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import select
import stat
import struct
import sys
import termios
import time
from typing import Any

F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032  # Linux's fcntl commands
PAGE = mmap.PAGESIZE
POLL_S = 0.005  # how often a writer waiting for room looks again


def is_pipe(fd: int) -> bool:
    """Whether ``fd`` is a pipe or FIFO."""
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def queued(fd: int) -> int:
    """Bytes written into the pipe ``fd`` and not yet read."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0])


def room_needed(nbytes: int) -> int:
    """The pipe capacity that ``nbytes`` written at once take at most: their pages, the one
    their remainder may open, and the last page it could not join."""
    return nbytes + 2 * PAGE


def fits(capacity: int, queued_bytes: int, nbytes: int) -> bool:
    """Whether a write of ``nbytes`` finds room in a pipe of ``capacity`` now holding
    ``queued_bytes`` (counted twice: the slots they fill may be half empty)."""
    return 2 * queued_bytes + room_needed(nbytes) <= capacity


def _capacity_for(fd: int, nbytes: int) -> int:
    """The pipe's capacity, grown (to a power of two, as far as the system lets this user)
    when it is too small to ever take ``nbytes`` at once."""
    capacity = int(fcntl.fcntl(fd, F_GETPIPE_SZ))
    wanted = 1 << (2 * room_needed(nbytes) - 1).bit_length()
    if wanted > capacity:
        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: as it is
            capacity = int(fcntl.fcntl(fd, F_SETPIPE_SZ, wanted))
    return capacity


def _reader_gone(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR: the read end is closed
    return bool(poller.poll(0))


def write_whole(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``; into a pipe, only once it has room for all of it
    (BrokenPipeError if its reader goes meanwhile). Data no pipe of this system can hold
    waits for an empty pipe, then is written as any write is."""
    if data and is_pipe(fd):
        capacity = _capacity_for(fd, len(data))
        while not fits(capacity, queued(fd), len(data)):
            if room_needed(len(data)) > capacity and queued(fd) == 0:
                break
            if _reader_gone(fd):
                raise BrokenPipeError(f"the reader of fd {fd} is gone")
            time.sleep(POLL_S)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class WholeWrites:
    """A text stream over standard output whose every flush is one whole write (what the
    display shows of one record); anything buffered in ``sys.stdout`` goes first."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self._pending: list[str] = []

    def write(self, text: str) -> int:
        self._pending.append(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # no descriptor (a test's capture)
            self.stream.write(text)
            self.stream.flush()
            return
        write_whole(fd, text.encode(self.encoding, "replace"))

    @property
    def encoding(self) -> str:
        return str(getattr(self.stream, "encoding", None) or "utf-8")

    def fileno(self) -> int:
        return int(self.stream.fileno())

    def isatty(self) -> bool:
        return bool(self.stream.isatty())


def write_line(text: str, stream: Any = None) -> None:
    """``text`` and its newline in one write to ``stream`` (standard error by default), then
    flushed. Under PYTHONUNBUFFERED (the project's image sets it) ``print`` writes the text
    and the newline apart, and the lines of processes sharing a stream (the ranks and agent
    of a node) interleave in the middle."""
    out = stream or sys.stderr
    out.write(text + "\n")
    out.flush()
