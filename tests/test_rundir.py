"""Stale socket directories are swept by their lock, never by guessing from a pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from llmcluster.control.rundir import LOCK_NAME, RunDir, socket_root, sweep_stale_dirs

HOLDER = (
    "import sys, time\n"
    "from llmcluster.control.rundir import RunDir\n"
    "d = RunDir('test-')\n"
    "print(d.path, flush=True)\n"
    "sys.stdin.read()\n"
)


def _holder(*prefix: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([*prefix, sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_a_live_owner_keeps_its_directory_and_a_dead_one_loses_it() -> None:
    proc, path = _holder()
    try:
        assert os.stat(path).st_mode & 0o777 == 0o700
        sweep_stale_dirs()
        assert os.path.isdir(path)
    finally:
        proc.kill()
        proc.wait(10)
    sweep_stale_dirs()
    assert not os.path.exists(path)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare")  # fmt: skip
def test_an_owner_in_another_pid_namespace_is_not_mistaken_for_a_dead_one() -> None:
    proc, path = _holder("unshare", "--pid", "--fork", "--mount-proc")
    try:
        sweep_stale_dirs()  # its pid (1 or 2 in its namespace) says nothing here
        assert os.path.isdir(path)
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(10)
    sweep_stale_dirs()
    assert not os.path.exists(path)


def test_a_reused_pid_does_not_protect_an_unlocked_directory() -> None:
    path = tempfile.mkdtemp(prefix=f"llmcluster-{os.getpid()}-old-", dir=socket_root())  # alive
    open(os.path.join(path, LOCK_NAME), "w").close()  # a lock nobody holds
    sweep_stale_dirs()
    assert not os.path.exists(path)
    mine = RunDir("mine-")
    sweep_stale_dirs()
    assert os.path.isdir(mine.path)
    mine.remove()
    assert not os.path.exists(mine.path)


JANITORED = (
    "import os, sys\n"
    "from llmcluster.control.rundir import RunDir, start_janitor, stop_janitor\n"
    "d = RunDir('test-')\n"
    "j = start_janitor(d.path)\n"
    "print(d.path, j, flush=True)\n"
    "if sys.stdin.read() == 'clean':\n"
    "    d.remove()\n"
    "    stop_janitor(j)\n"
    "    print(os.path.exists(f'/proc/{j}'), flush=True)\n"
)


def _janitored() -> tuple[subprocess.Popen[str], str, int]:
    proc = subprocess.Popen([sys.executable, "-c", JANITORED], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    path, janitor = proc.stdout.readline().split()
    return proc, path, int(janitor)


def _gone(pid: int, timeout_s: float) -> bool:
    """``pid`` has exited: an orphan, it is this test process's child (the suite's subreaper)
    or init's, which reaps it."""
    deadline = time.monotonic() + timeout_s
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # not ours: init reaps it
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)  # polling for an exit that may not be ours to wait on
    return not os.path.exists(f"/proc/{pid}")


def test_a_janitor_removes_its_killed_parents_directory_and_leaves() -> None:
    proc, path, janitor = _janitored()
    assert os.path.isdir(path) and os.path.exists(f"/proc/{janitor}")
    proc.kill()  # kill -9: the parent can clean up nothing itself
    proc.wait(10)
    assert _gone(janitor, 30), "the janitor outlived its parent"
    assert not os.path.exists(path)


def test_a_parent_leaving_cleanly_ends_and_reaps_its_janitor() -> None:
    proc, path, janitor = _janitored()
    out, _ = proc.communicate("clean", timeout=30)
    assert proc.returncode == 0 and out.strip() == "False"  # no janitor, not even a zombie
    assert not os.path.exists(path) and not os.path.exists(f"/proc/{janitor}")
