"""The slots of a Slurm step of one task per rank, without Slurm: a node agent's end
(``SlotStarter``) and slot tasks started as processes of their own, as srun starts them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llmcluster.comm.memfd import SharedRegion
from llmcluster.worker.slots import SlotStarter, check_private, receive, send

SLOT = "from llmcluster.worker.slot import Slot; import sys; sys.exit(Slot({!r}, {}, []).run(20))"


def _slot(path: str, local_rank: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SLOT.format(path, local_rank)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_a_memfd_sent_over_the_socket_maps_the_same_pages() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    region = SharedRegion.create("test", 8192)
    try:
        send(left, "start", {"size": 8192}, [region.fd])
        frame = receive(right)
        assert frame is not None
        kind, body, fds = frame
        assert (kind, body, len(fds)) == ("start", {"size": 8192}, 1)
        other = SharedRegion(fds[0], body["size"])
        other.buffer[100:105] = b"hello"
        assert region.buffer[100:105] == b"hello"
        other.close()
        left.close()
        assert receive(right) is None  # the peer went away
    finally:
        region.close()
        right.close()


def test_slots_join_before_or_after_the_agent_and_exit_with_its_code(tmp_path: Path) -> None:
    path = str(tmp_path / "step")
    early = _slot(path, 1)  # the agent's socket is not there yet: it waits for it
    starter = SlotStarter(path, 3)
    late = _slot(path, 2)
    try:
        why = starter.ready(20, lambda: False)
        assert why is None, (why, early.poll(), late.poll())
        assert sorted(starter.slots) == [1, 2] and oct(os.stat(path).st_mode & 0o777) == "0o700"
    finally:
        starter.close(7)  # BYE with the job's exit code
    assert early.wait(timeout=20) == 7 and late.wait(timeout=20) == 7
    assert not os.path.exists(path)  # socket and directory gone


def test_a_slot_whose_agent_vanishes_leaves_saying_why(tmp_path: Path) -> None:
    path = str(tmp_path / "step")
    starter = SlotStarter(path, 2)
    slot = _slot(path, 1)
    try:
        assert starter.ready(20, lambda: False) is None
        starter.slots[1].close()  # the agent's end goes without a BYE (as a killed agent's)
        del starter.slots[1]
        _, err = slot.communicate(timeout=20)
        assert slot.returncode == 1 and "the node agent is gone" in err, err
    finally:
        starter.close(0)


def test_missing_slots_are_named_in_one_line(tmp_path: Path) -> None:
    starter = SlotStarter(str(tmp_path / "step"), 4)
    try:
        why = starter.ready(0.3, lambda: False)
        assert why is not None and "local rank(s) [1, 2, 3] never connected" in why
        assert "\n" not in why
        assert starter.ready(5, lambda: True) == ""  # a stop signal ends the wait at once
    finally:
        starter.close(1)


def test_a_step_directory_others_may_enter_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "step"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(OSError, match="not a private directory"):
        check_private(str(shared))
    starter = SlotStarter(str(shared), 2)
    why = starter.ready(5, lambda: False)
    starter.close(1)
    assert why is not None and "not a private directory" in why and "\n" not in why
    assert shared.is_dir()  # not its to remove
