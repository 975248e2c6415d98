"""The node board: futex wake-ups across processes, attempt-safe tags, timeouts."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from own_processes import own_only  # noqa: F401  (the fixture every test here uses)

from llmcluster.comm.board import (
    BOARD_VALUES,
    NodeBoard,
    board_supported,
    clear_board,
    create_board,
    tag_of,
)
from llmcluster.control.procs import fork_child

pytestmark = [
    pytest.mark.skipif(not board_supported(), reason="the board needs x86-64 Linux"),
    pytest.mark.usefixtures("own_only"),
]


def test_tags_differ_between_attempts_and_are_never_zero() -> None:
    assert tag_of(0, 5) != tag_of(1, 5)
    assert tag_of(3, 1 << 24) != 0 and tag_of(0, 0) != 0
    assert len({tag_of(a, s) for a in range(4) for s in range(1, 200)}) == 4 * 199


def test_a_post_in_another_process_wakes_the_waiter() -> None:
    region = create_board(2)
    assert region is not None
    board = NodeBoard(region, 2)
    tag = tag_of(0, 7)

    def child() -> int:
        mine = NodeBoard(region, 2)
        mine.await_tag(0, tag, lambda: None, 0.05)  # the parent's values first
        mine.post(1, tag, [2 * v for v in mine.values(0, 3)])
        return 0

    pid = fork_child(child, name="llmc-board")
    board.post(0, tag, np.array([1.0, 2.0, 3.0]))
    idles = []
    board.await_tag(1, tag, lambda: idles.append(1), 0.05)
    assert board.values(1, 3) == (2.0, 4.0, 6.0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_waiting_for_a_silent_slot_runs_idle_until_it_raises() -> None:
    region = create_board(2)
    assert region is not None
    board = NodeBoard(region, 2)
    calls = []

    def idle() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise TimeoutError("peer gone")

    with pytest.raises(TimeoutError):
        board.await_tag(1, tag_of(0, 1), idle, 0.01)
    assert len(calls) == 3


def test_clearing_forgets_every_earlier_word() -> None:
    region = create_board(3)
    assert region is not None
    board = NodeBoard(region, 3)
    board.post(2, tag_of(0, 9), np.ones(BOARD_VALUES))
    clear_board(region)
    fresh = NodeBoard(region, 3)
    assert fresh.values(2, BOARD_VALUES) == (0.0,) * BOARD_VALUES
    with pytest.raises(TimeoutError):
        fresh.await_tag(2, tag_of(0, 9), lambda: (_ for _ in ()).throw(TimeoutError()), 0.01)


def test_the_leader_wakes_once_every_rank_has_arrived() -> None:
    region = create_board(4)
    assert region is not None
    tag = tag_of(2, 11)

    def follower(index: int) -> int:
        mine = NodeBoard(region, 4)
        mine.arrive(index, tag, np.full(3, float(index)))
        mine.await_tag(4, tag, lambda: None, 0.05)
        return 0 if mine.values(4, 3) == (6.0, 6.0, 6.0) else 1

    pids = [fork_child(lambda i=i: follower(i), name=f"llmc-board{i}") for i in (1, 2, 3)]
    board = NodeBoard(region, 4)
    board.await_arrivals(lambda: None, 0.05)
    assert board.missing(tag) is None
    rows = [board.values(i, 3) for i in (1, 2, 3)]
    board.post(4, tag, [sum(column) for column in zip(*rows, strict=True)])
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert codes == [0, 0, 0]


def test_a_rank_that_never_arrives_is_named_and_the_wait_gives_up() -> None:
    region = create_board(4)
    assert region is not None
    board = NodeBoard(region, 4)
    tag = tag_of(0, 3)
    board.arrive(1, tag, np.ones(2))
    board.arrive(3, tag)
    assert board.missing(tag) == 2

    def idle() -> None:
        raise TimeoutError("rank 2 is silent")

    with pytest.raises(TimeoutError):
        board.await_arrivals(idle, 0.01)
    board.arrive(2, tag)  # the late one completes the count; the wait now returns at once
    board.await_arrivals(lambda: None, 0.01)
    assert board.missing(tag) is None


def _asleep_in_a_futex(pid: int) -> bool:
    with open(f"/proc/{pid}/wchan") as src:
        return "futex" in src.read()  # futex_wait_queue, futex_do_wait: by kernel version


@pytest.mark.timeout(120)
def test_a_sleeping_leader_is_woken_by_the_last_arrival_alone() -> None:
    """The leader sleeps at once (no spin) with a slice longer than the test's patience, and
    the ranks arrive only once the kernel shows it asleep: it returns only if the last
    arrival's wake-up reaches it (the earlier arrivals make no syscall; the count they
    leave tells the last one it is last)."""
    region = create_board(4)
    assert region is not None
    tag, leader = tag_of(1, 2), os.getpid()

    def follower(index: int) -> int:
        mine = NodeBoard(region, 4)
        deadline = time.monotonic() + 30
        while not _asleep_in_a_futex(leader):  # polling an observable state, not a sleep
            if time.monotonic() > deadline:
                return 2
            os.sched_yield()
        mine.arrive(index, tag, [float(index)])
        return 0

    pids = [fork_child(lambda i=i: follower(i), name=f"llmc-board{i}") for i in (1, 2, 3)]

    def gave_up() -> None:
        raise AssertionError("the leader was not woken")

    board = NodeBoard(region, 4)
    board.await_arrivals(gave_up, 60.0, spin_s=0.0)
    assert [board.values(i, 1)[0] for i in (1, 2, 3)] == [1.0, 2.0, 3.0]
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert codes == [0, 0, 0]
