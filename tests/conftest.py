"""Shared fixtures: run the CLI, watch this test's own processes, reap orphans.

Every test gets a fresh marker, ``LLMCLUSTER_TEST_MARK=<uuid>``, in the environment
of whatever it starts; a process belongs to the test when its ``/proc/PID/environ``
carries that marker (agents and ranks forked from a marked coordinator inherit the
exec-time environment, so they carry it too), or when it is a child this process
forked itself without exec. Nothing is ever identified by its name, so a demo
running beside the suite is left alone.

The test process makes itself a child subreaper, so that processes orphaned by
a killed coordinator are re-parented to it and can be seen and reaped here
instead of disappearing into pid 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

PR_SET_CHILD_SUBREAPER = 36
MARK = "LLMCLUSTER_TEST_MARK"


@pytest.fixture(scope="session", autouse=True)
def _subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "LLMCLUSTER_TOKEN", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def test_mark(monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's marker, set in the environment every process it starts inherits."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK, mark)
    return mark


def reap_zombies() -> None:
    """Collect any exited child (orphans re-parented to this subreaper included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@dataclass(frozen=True)
class Proc:
    """One live process as /proc shows it."""

    pid: int
    comm: str
    state: str
    ppid: int
    mark: str | None  # its LLMCLUSTER_TEST_MARK, None when it has none (or is a zombie)


def _read_proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:  # gone, or another user's
        return None
    prefix = MARK.encode() + b"="
    marks = [item[len(prefix) :].decode() for item in environ if item.startswith(prefix)]
    after = stat[stat.rindex(")") + 2 :].split()
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    return Proc(pid, comm, after[0], int(after[1]), marks[-1] if marks else None)


def processes_marked(mark: str) -> list[Proc]:
    """Live processes whose environment carries ``mark``, and zombies they have not reaped."""
    table = [p for p in map(_read_proc, _pids()) if p is not None]
    marked = [p for p in table if p.mark == mark]
    parents = {p.pid for p in marked}
    return marked + [p for p in table if p.state == "Z" and p.ppid in parents]


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def own_processes() -> list[Proc]:
    """The current test's processes: marked with its marker, or forked here without exec."""
    me = os.getpid()
    inherited = _read_proc(me)
    mine = processes_marked(os.environ[MARK])
    seen = {p.pid for p in mine}
    forked = [
        p
        for p in map(_read_proc, _pids())
        if p is not None
        and p.pid not in seen
        and p.ppid == me
        and (p.state == "Z" or (inherited is not None and p.mark == inherited.mark))
    ]
    return [p for p in mine + forked if p.pid != me]


def wait_until_clean(timeout_s: float = 5.0) -> list[Proc]:
    """Reap and poll until none of this test's processes is left (returns those left)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reap_zombies()
        left = own_processes()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@contextlib.contextmanager
def owned_table() -> Iterator[None]:
    """Assert that the body leaves none of this test's processes behind; kill what it left."""
    assert wait_until_clean(5.0) == [], "processes of this test were alive before it started"
    yield
    left = wait_until_clean(5.0)
    for proc in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    wait_until_clean(2.0)
    assert left == [], f"processes left behind: {left}"


@pytest.fixture
def clean_table(test_mark: str) -> Iterator[None]:
    """The test leaves none of its processes behind (others' processes are not looked at)."""
    with owned_table():
        yield


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
    """A CLI process whose JSONL output is read line by line (wait on records, never sleeps).

    stderr is drained by a thread all along, so a chatty run never blocks on a full pipe."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            cli(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.seen: list[dict[str, Any]] = []
        self._stderr: list[str] = []
        self._stderr_reader = threading.Thread(
            target=lambda: self._stderr.extend(self.proc.stderr or ()), daemon=True
        )
        self._stderr_reader.start()

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
        """Wait for exit (killing the run after ``timeout_s``); return code, all records, stderr.

        The rest of stdout is read through the same buffered stream as ``wait_for``, so no
        line already buffered there is lost."""
        assert self.proc.stdout is not None
        watchdog = threading.Timer(timeout_s, self.proc.kill)
        watchdog.start()
        try:
            rest = self.proc.stdout.read()
            self.proc.wait(timeout=timeout_s)
        finally:
            watchdog.cancel()
        self.seen.extend(records(rest))
        return self.proc.returncode, self.seen, self.stderr_text(timeout_s)

    def stderr_lines_so_far(self) -> list[str]:
        """The lines the run has written to stderr until now (it may still be running)."""
        return list(self._stderr)

    def stderr_text(self, timeout_s: float = 10.0) -> str:
        """Everything the run wrote to stderr (waits for the stream to end)."""
        self._stderr_reader.join(timeout_s)
        return "".join(self._stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._stderr_reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
