"""The control link's liveness: a rank hears the coordinator through its agent's beacon."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import zmq
from own_processes import own_only  # noqa: F401  (the fixture every test here uses)

from llmcluster.control.link import Beacon, ControlLink, CoordinatorLost
from llmcluster.control.procs import fork_child

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
