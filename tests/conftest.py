"""Shared fixtures: run the CLI, watch the process table, reap orphans.

The test process makes itself a child subreaper, so that processes orphaned by
a killed coordinator are re-parented to it and can be seen and reaped here
instead of disappearing into pid 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

PR_SET_CHILD_SUBREAPER = 36
MARK = f"LLMCLUSTER_TEST_SESSION={os.getpid()}-{time.time_ns()}"
os.environ[MARK.split("=")[0]] = MARK.split("=")[1]  # inherited by every process we start


def _ours(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return MARK.encode() in f.read().split(b"\0")
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def _subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "LLMCLUSTER_TOKEN", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


def reap_zombies() -> None:
    """Collect any exited child (orphans re-parented to this subreaper included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def llmc_processes() -> list[tuple[int, str, str]]:
    """Live processes of any run (comm llmc-*), as (pid, comm, state)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state = stat[stat.rindex(")") + 2]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        zombie_of_ours = state == "Z" and ppid == os.getpid()
        if comm.startswith("llmc-") and (zombie_of_ours or _ours(entry)):
            found.append((int(entry), comm, state))
    return found


def wait_until_clean(timeout_s: float = 5.0) -> list[tuple[int, str, str]]:
    """Reap and poll until no llmc-* process is left (returns what is left on timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reap_zombies()
        left = llmc_processes()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture
def clean_table() -> Iterator[None]:
    """Assert that a test leaves no process of any run behind, and kill what it left."""
    assert wait_until_clean(5.0) == [], "processes of an earlier run were still alive"
    yield
    left = wait_until_clean(5.0)
    for pid, _, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    wait_until_clean(2.0)
    assert left == [], f"processes left behind: {left}"


def cli(*args: str) -> list[str]:
    """The command line for ``python -m llmcluster ARGS``."""
    return [sys.executable, "-m", "llmcluster", *args]


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion with a timeout; capture text output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        cli(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def records(stdout: str) -> list[dict[str, Any]]:
    """Parse JSONL output."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


class Running:
    """A CLI process whose JSONL output is read line by line (wait on records, never sleeps)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            cli(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.seen: list[dict[str, Any]] = []

    def wait_for(self, predicate: Any, timeout_s: float = 30.0) -> dict[str, Any]:
        """Read records until ``predicate(record)`` holds (the pytest timeout bounds the read)."""
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(
                    f"output ended before the expected record; seen {len(self.seen)}"
                )
            record = json.loads(line)
            self.seen.append(record)
            if predicate(record):
                return record
        raise AssertionError("expected record did not arrive in time")

    def finish(self, timeout_s: float = 10.0) -> tuple[int, list[dict[str, Any]], str]:
        """Wait for exit; return code, all records, stderr."""
        out, err = self.proc.communicate(timeout=timeout_s)
        self.seen.extend(records(out))
        return self.proc.returncode, self.seen, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)
