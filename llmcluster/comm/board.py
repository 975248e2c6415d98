"""The node board: tiny reductions inside a node through shared memory and futexes.

A step's loss/step-time reduction is a few numbers. Sent as ZeroMQ messages inside a
node, each one wakes three threads (sender's I/O thread, receiver's I/O thread,
receiver); on a busy 2-core machine those wake-ups are most of the step's collective
time. On the board, a local rank writes its values into its own slot and bumps its own
word; its leader sleeps on that word with ``FUTEX_WAIT`` and is woken directly. The
leader publishes the result the same way on one word that every local rank sleeps on.

Layout (one anonymous shared mapping per node, made by the node agent before it forks,
so every local rank inherits it; one cache line per word)::

    word[i] for local rank i | result word | slot[i]: BOARD_VALUES float64 | result slot

Each word only ever has one writer, so plain aligned 32-bit stores suffice; x86-64's
store ordering makes the data visible before the word. Elsewhere (or without the
futex syscall) ``board_supported()`` is False and collectives use the sockets.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import time
from collections.abc import Callable

import numpy as np

BOARD_VALUES = 32  # float64 values per slot: enough for any fused step reduction
LINE = 64
_SYS_FUTEX = 202  # x86_64
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared (not PRIVATE): the waiters are other processes
_WAKE_ALL = 0x7FFFFFFF
_libc = ctypes.CDLL(None, use_errno=True) if platform.system() == "Linux" else None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def board_supported() -> bool:
    """True where the futex path is correct: Linux on x86-64 (total store order)."""
    return _libc is not None and platform.machine() == "x86_64"


def board_bytes(local_ranks: int) -> int:
    """Size of a node's board."""
    return (local_ranks + 1) * (LINE + BOARD_VALUES * 8)


def create_board(local_ranks: int) -> mmap.mmap | None:
    """The node agent's board (None where unsupported or pointless)."""
    if local_ranks < 2 or not board_supported():
        return None
    return mmap.mmap(-1, board_bytes(local_ranks))


def clear_board(region: mmap.mmap) -> None:
    """Zero every word and slot (an agent does this before each attempt's ranks start)."""
    region[:] = bytes(len(region))


def tag_of(attempt: int, seq: int, phase: int = 0) -> int:
    """The word value that marks ``phase`` (0-7) of collective ``seq`` of ``attempt``
    (never 0)."""
    return ((attempt & 0xFF) << 24) | ((seq << 3 | phase) & 0xFFFFFF) or 1


def _futex(address: int, op: int, value: int, timeout: _Timespec | None) -> None:
    """FUTEX_WAIT (sleep while the word holds ``value``) or FUTEX_WAKE (``value`` waiters)."""
    assert _libc is not None  # guarded by board_supported()
    _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(address), op, ctypes.c_uint32(value),
                  ctypes.byref(timeout) if timeout is not None else None, None, 0)  # fmt: skip


class NodeBoard:
    """One rank's handle on its node's board."""

    def __init__(self, region: mmap.mmap, local_ranks: int) -> None:
        self.local_ranks = local_ranks
        words = range(local_ranks + 1)
        self._cells = [ctypes.c_uint32.from_buffer(region, i * LINE) for i in words]
        self._addresses = [ctypes.addressof(cell) for cell in self._cells]
        self._slots = np.ndarray(
            (local_ranks + 1, BOARD_VALUES), dtype=np.float64, buffer=region,
            offset=(local_ranks + 1) * LINE,
        )  # fmt: skip

    def post(self, index: int, tag: int, values: np.ndarray) -> None:
        """Write ``values`` into slot ``index`` (the result slot is ``local_ranks``) and wake
        whoever waits on it."""
        self._slots[index, : values.size] = values
        self._cells[index].value = tag
        _futex(self._addresses[index], _FUTEX_WAKE, _WAKE_ALL, None)

    def signal(self, index: int, tag: int) -> None:
        """Set word ``index`` to ``tag`` (no values) and wake whoever waits on it."""
        self._cells[index].value = tag
        _futex(self._addresses[index], _FUTEX_WAKE, _WAKE_ALL, None)

    def read(self, index: int, count: int) -> np.ndarray:
        """A copy of the first ``count`` values of slot ``index``."""
        return self._slots[index, :count].copy()

    def rows(self, indices: range, count: int) -> np.ndarray:
        """Slots ``indices`` as rows (a view: read them before anyone posts again)."""
        return self._slots[indices.start : indices.stop, :count]

    def await_tag(self, index: int, tag: int, idle: Callable[[], None], slice_s: float) -> None:
        """Sleep until word ``index`` holds ``tag``; ``idle()`` runs between sleeps of at most
        ``slice_s`` (it serves control messages and raises on a timeout)."""
        cell, address = self._cells[index], self._addresses[index]
        pause = _Timespec(int(slice_s), int(slice_s % 1 * 1e9))
        next_idle = time.monotonic() + slice_s
        while True:
            seen = cell.value
            if seen == tag:
                return
            _futex(address, _FUTEX_WAIT, seen, pause)
            if time.monotonic() >= next_idle:
                idle()
                next_idle = time.monotonic() + slice_s
