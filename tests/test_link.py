"""The control link: liveness (a rank hears the coordinator through its agent's beacon), its
waits, and that nothing which arrives with an awaited message is lost."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import zmq
from own_processes import own_only  # noqa: F401  (the fixture every test here uses)

from llmcluster.control.link import Beacon, ControlLink, CoordinatorLost
from llmcluster.control.procs import fork_child
from llmcluster.wire import COORDINATOR_SRC, Kind, Message, encode
from llmcluster.wire.messages import Empty, RankOnly, Reason

pytestmark = pytest.mark.usefixtures("own_only")


def test_a_rank_counts_the_coordinator_alive_while_its_agent_hears_it(tmp_path: Path) -> None:
    ctx = zmq.Context()
    beacon = Beacon()
    link = ControlLink(ctx, endpoint=f"ipc://{tmp_path}/nobody", identity=b"r0", run_id="run",
                       src=0, timeout_s=5.0, beacon=beacon)  # fmt: skip
    try:
        link.last_heard = time.monotonic() - 10  # nothing from the coordinator itself
        beacon.mark(time.monotonic())  # but the agent has just heard it
        link.tick()
        beacon.mark(time.monotonic() - 6)  # the agent has not either, for too long
        with pytest.raises(CoordinatorLost, match="no word from the coordinator"):
            link.tick()
    finally:
        link.close()
        ctx.term()


def test_the_beacon_is_shared_across_fork() -> None:
    """What one side of a fork marks, the other reads (a private copy would not show it)."""
    beacon = Beacon()
    pid = fork_child(lambda: beacon.mark(42.0) or 0, name="llmc-t-beacon")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert beacon.heard() == 42.0


@pytest.mark.parametrize(("timeout_s", "polls"), [(3.0, range(4, 7)), (24.0, range(1, 3))])
def test_an_idle_wait_checks_for_silence_a_twelfth_of_a_long_timeout_apart(
    tmp_path: Path, timeout_s: float, polls: range
) -> None:
    """A large world's tolerance is long: its 1024 waiting ranks must not wake 4 times a
    second each (about a core of two); a short tolerance is still checked every 0.25 s."""
    ctx = zmq.Context()
    link = ControlLink(ctx, endpoint=f"ipc://{tmp_path}/nobody", identity=b"r0", run_id=None,
                       src=0, timeout_s=timeout_s)  # fmt: skip
    calls = []
    poll = link._poller.poll
    link._poller.poll = lambda ms: calls.append(ms) or poll(ms)  # type: ignore[method-assign]
    try:
        assert link.wait(1.0) == []
        assert len(calls) in polls, calls
    finally:
        link.close()
        ctx.term()


def test_a_wait_under_a_millisecond_sleeps_it_instead_of_polling_a_whole_one(
    tmp_path: Path,
) -> None:
    """A 300 µs compute sleep (a fast --speed) must not become poll's 1 ms, nor a spin."""
    ctx = zmq.Context()
    link = ControlLink(ctx, endpoint=f"ipc://{tmp_path}/nobody", identity=b"r0", run_id=None,
                       src=0, timeout_s=3.0)  # fmt: skip
    calls = []
    poll = link._poller.poll
    link._poller.poll = lambda ms: calls.append(ms) or poll(ms)  # type: ignore[method-assign]
    try:
        assert link.wait(300e-6) == []
        assert calls and max(calls) == 0 and len(calls) <= 2, calls  # slept, then one look
    finally:
        link.close()
        ctx.term()


def test_what_arrives_with_the_awaited_message_is_handled_not_dropped() -> None:
    """The coordinator sends GO and, a SIGINT later, STOP: when both are queued when the rank
    reads, the STOP must reach the rank's handler (dropped, the run trained on after Ctrl+C)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("inproc://control")  # inproc: both messages are queued once send returns
    link = ControlLink(ctx, endpoint="inproc://control", identity=b"r0", run_id="run", src=0,
                       timeout_s=5.0)  # fmt: skip
    handled: list[Message] = []
    try:
        link.send(Kind.READY, RankOnly(rank=0))
        identity, _ = router.recv_multipart()  # the rank is known to the router now
        for kind, body in ((Kind.GO, Empty()), (Kind.STOP, Reason(reason="interrupted"))):
            router.send_multipart([identity, *encode(Message(kind, "run", 0, COORDINATOR_SRC,
                                                             body))])  # fmt: skip
        go = link.await_kind(Kind.GO, 5.0, handled.extend)
        assert go is not None and go.kind is Kind.GO
        assert [msg.kind for msg in handled] == [Kind.STOP]
        assert link.await_kind(Kind.GO, 0.05, handled.extend) is None  # nothing more came
    finally:
        link.close()
        router.close(0)
        ctx.term()


def test_a_wait_reads_what_is_queued_before_it_judges_the_silence() -> None:
    """A node agent busy forking its ranks for longer than the tolerance (a 1024-rank start on
    two cores) has the coordinator's heartbeats queued: it must read them, not declare the
    coordinator lost and stop its ranks."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind("inproc://control")
    link = ControlLink(ctx, endpoint="inproc://control", identity=b"a0", run_id="run", src=0,
                       timeout_s=1.0)  # fmt: skip
    try:
        link.send(Kind.READY, RankOnly(rank=0))
        identity, _ = router.recv_multipart()
        stop = Message(Kind.STOP, "run", 0, COORDINATOR_SRC, Reason(reason="interrupted"))
        router.send_multipart([identity, *encode(stop)])  # queued while the process was busy
        link.last_heard = time.monotonic() - 5.0  # ...for five times the tolerance
        assert [msg.kind for msg in link.wait(1.0)] == [Kind.STOP]
    finally:
        link.close()
        router.close(0)
        ctx.term()
