"""The node board: tiny reductions inside a node through shared memory and futexes.

A step's loss/step-time reduction is a few numbers. Sent as ZeroMQ messages inside a
node, each one wakes three threads (sender's I/O thread, receiver's I/O thread,
receiver); on a busy 2-core machine those wake-ups are most of the step's collective
time. On the board, a local rank writes its values into its own slot, marks its own word
and adds one to the arrivals counter; the last arrival (the one that reads the full count
back) wakes the leader, asleep on the counter with ``FUTEX_WAIT``, so a sleeping leader is
woken once per collective, not once per rank, and a spinning one costs the arrivals no
syscall. The counter is a process-shared POSIX semaphore that nobody waits on: glibc's
``sem_post`` is the atomic add (a locked instruction in user space, which Python has no
other way to issue), and its count is the first 32-bit word of the ``sem_t``, where the
leader sleeps. The leader resets the counter and publishes the result on one word that
every local rank sleeps on.

Layout (one anonymous shared mapping per node, made by the node agent before it forks,
so every local rank inherits it; one cache line per word)::

    word[i] for local rank i | result word | arrivals | slot[i]: BOARD_VALUES float64
    | result slot

Each word but the counter has one writer, so plain aligned 32-bit stores suffice; x86-64's
store ordering makes the data visible before the word (and the locked add everything
before the counter). A rank arrives only after it has seen the previous result, so every
arrival counted after a reset belongs to the current collective. Elsewhere (not x86-64
Linux, or a libc whose semaphores count differently) ``board_supported()`` is False and
collectives use the sockets.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from llmcluster.comm.shm import anonymous

BOARD_VALUES = 32  # float64 values per slot: enough for any fused step reduction
LINE = 64
_SYS_FUTEX = 202  # x86_64
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared: the waiters are other processes
_WAKE_ALL = 0x7FFFFFFF
SPIN_S = 100e-6  # a waiter yields the CPU this long before it sleeps: on an oversubscribed
# machine the poster is often runnable on this very core, and a futex wake-up across cores
# costs more; a busy run queue makes each yield long, so the spin ends after a few
_libc = ctypes.CDLL(None, use_errno=True) if platform.system() == "Linux" else None
_syscall = None
if _libc is not None:  # syscall(SYS_futex, uaddr, op, val, timeout or val2, uaddr2, val3)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
    _syscall.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_long, ctypes.c_long,
                         ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]  # fmt: skip
_sem_post = getattr(_libc, "sem_post", None)
if _sem_post is not None:
    _sem_post.argtypes = [ctypes.c_void_p]


def _counting_semaphore() -> bool:
    """True if ``sem_post`` on a zeroed ``sem_t`` (as a fresh or cleared board holds) counts
    in its first 32-bit word and touches nothing else (glibc's layout on x86-64)."""
    if _sem_post is None:
        return False
    cell = (ctypes.c_uint32 * 8)()
    posted = [_sem_post(ctypes.addressof(cell)) for _ in range(2)]
    return posted == [0, 0] and list(cell) == [2, 0, 0, 0, 0, 0, 0, 0]


_SEMAPHORE_COUNTS = _counting_semaphore()


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def board_supported() -> bool:
    """True where the futex path is correct: Linux on x86-64 (total store order) with
    glibc's semaphores."""
    return _SEMAPHORE_COUNTS and platform.machine() == "x86_64"


def board_bytes(local_ranks: int) -> int:
    """Size of a node's board."""
    return (local_ranks + 2) * LINE + (local_ranks + 1) * BOARD_VALUES * 8


def create_board(local_ranks: int, allocate: Callable[[int], Any] = anonymous) -> Any:
    """The node agent's board (None where unsupported or pointless); ``allocate`` as for
    ``shm.create_region``."""
    if local_ranks < 2 or not board_supported():
        return None
    return allocate(board_bytes(local_ranks))


def clear_board(region: Any) -> None:
    """Zero every word and slot (an agent does this before each attempt's ranks start)."""
    region[:] = bytes(len(region))


def tag_of(attempt: int, seq: int, phase: int = 0) -> int:
    """The word value that marks ``phase`` (0-7) of collective ``seq`` of ``attempt``
    (never 0)."""
    return ((attempt & 0xFF) << 24) | ((seq << 3 | phase) & 0xFFFFFF) or 1


def _futex(address: int, op: int, value: int, timeout_at: int | None) -> None:
    """FUTEX_WAIT (sleep while the word holds ``value``, at most the timespec at address
    ``timeout_at``) or FUTEX_WAKE (``value`` waiters)."""
    assert _syscall is not None  # guarded by board_supported()
    _syscall(_SYS_FUTEX, address, op, value, timeout_at, None, 0)


class NodeBoard:
    """One rank's handle on its node's board."""

    def __init__(self, region: Any, local_ranks: int) -> None:
        self.local_ranks = local_ranks
        words = range(local_ranks + 2)  # one per rank, the result word, the arrivals counter
        self._cells = [ctypes.c_uint32.from_buffer(region, i * LINE) for i in words]
        self._addresses = [ctypes.addressof(cell) for cell in self._cells]
        self._arrivals, self._arrivals_at = self._cells[-1], self._addresses[-1]
        slots_at = (local_ranks + 2) * LINE
        self._view = memoryview(region)  # values go in and out with struct: no numpy per call
        self._slot_at = [slots_at + i * BOARD_VALUES * 8 for i in range(local_ranks + 1)]
        self._formats = [struct.Struct(f"={n}d") for n in range(BOARD_VALUES + 1)]
        self._blocks: dict[int, struct.Struct] = {}  # count -> the other ranks' slots at once

    def _put(self, index: int, values: Sequence[float]) -> None:
        self._formats[len(values)].pack_into(self._view, self._slot_at[index], *values)

    def post(self, index: int, tag: int, values: Sequence[float]) -> None:
        """Write ``values`` into slot ``index`` (the result slot is ``local_ranks``) and wake
        whoever waits on it."""
        self._put(index, values)
        self._cells[index].value = tag
        _futex(self._addresses[index], _FUTEX_WAKE, _WAKE_ALL, None)

    def arrive(self, index: int, tag: int, values: Sequence[float] = ()) -> None:
        """A non-leader's part: ``values`` into slot ``index``, ``tag`` on its word, and one
        more on the arrivals counter (waking the leader if this was the last arrival)."""
        if len(values):
            self._put(index, values)
        self._cells[index].value = tag
        assert _sem_post is not None  # guarded by board_supported()
        _sem_post(self._arrivals_at)  # the atomic add; only the last arrival makes a syscall
        if self._arrivals.value == self.local_ranks - 1:
            _futex(self._arrivals_at, _FUTEX_WAKE, 1, None)

    def await_arrivals(
        self, idle: Callable[[], None], slice_s: float, spin_s: float = SPIN_S
    ) -> None:
        """The leader's part: sleep until every other local rank has arrived, then reset the
        counter for the next collective (``idle``, ``slice_s``, ``spin_s``: as ``await_tag``)."""
        self._await_word(self.local_ranks + 1, self.local_ranks - 1, idle, slice_s, spin_s)
        self._arrivals.value = 0

    def missing(self, tag: int) -> int | None:
        """The first local rank (index > 0) whose word does not hold ``tag``, if any."""
        for index in range(1, self.local_ranks):
            if self._cells[index].value != tag:
                return index
        return None

    def others(self, count: int) -> tuple[float, ...]:
        """The first ``count`` values of every non-leader's slot, rank after rank, in one
        read (the leader folds them in this order)."""
        block = self._blocks.get(count)
        if block is None:
            gap = f"{(BOARD_VALUES - count) * 8}x"
            block = struct.Struct("=" + gap.join([f"{count}d"] * (self.local_ranks - 1)))
            self._blocks[count] = block
        return block.unpack_from(self._view, self._slot_at[1])

    def values(self, index: int, count: int) -> tuple[float, ...]:
        """The first ``count`` values of slot ``index``, as floats."""
        return self._formats[count].unpack_from(self._view, self._slot_at[index])

    def await_tag(
        self,
        index: int,
        tag: int,
        idle: Callable[[], None],
        slice_s: float,
        spin_s: float = SPIN_S,
    ) -> None:
        """Sleep until word ``index`` holds ``tag``; ``idle()`` runs between sleeps of at most
        ``slice_s`` (it serves control messages and raises on a timeout). ``spin_s``: how
        long to yield first (0 where the wait is known to be long)."""
        self._await_word(index, tag, idle, slice_s, spin_s)

    def _await_word(
        self,
        index: int,
        wanted: int,
        idle: Callable[[], None],
        slice_s: float,
        spin_s: float = SPIN_S,
    ) -> None:
        """Yield the CPU for up to ``spin_s`` (a peer on this core may be the one to post),
        then sleep on the word with FUTEX_WAIT until it holds ``wanted``."""
        cell, address = self._cells[index], self._addresses[index]
        spin_until = time.monotonic() + spin_s
        while cell.value != wanted:
            if time.monotonic() >= spin_until:
                break
            os.sched_yield()
        else:
            return
        pause = _Timespec(int(slice_s), int(slice_s % 1 * 1e9))
        pause_at = ctypes.addressof(pause)
        next_idle = time.monotonic() + slice_s
        while True:
            seen = cell.value
            if seen == wanted:
                return
            _futex(address, _FUTEX_WAIT, seen, pause_at)
            if time.monotonic() >= next_idle:
                idle()
                next_idle = time.monotonic() + slice_s
