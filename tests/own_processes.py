"""Processes a test started, found by parentage (never by name): the fixture ``own_only``.

The suite's process is a child subreaper (conftest), so anything a test forked or spawned,
and any orphan of those, is a child of it until reaped. A test using ``own_only`` fails if
one of them outlives it, and ends those alone: processes of other runs on the host (a live
demo, another suite) are neither looked at nor touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest


def children() -> list[int]:
    """Live, unreaped children of this process (zombies are reaped on the way)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as src:
                fields = src.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.append(int(entry))
    return found


def wait_for_no_children(timeout_s: float) -> list[int]:
    """Poll (reaping) until this process has no child left; returns those still alive."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = children()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture
def own_only() -> Iterator[None]:
    """Fail if a process this test started outlives it; kill only those, by PID."""
    before = set(children())
    yield
    left = [pid for pid in wait_for_no_children(5.0) if pid not in before]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for_no_children(2.0)
    assert left == [], f"processes left behind: {left}"
