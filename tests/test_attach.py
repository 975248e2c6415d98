"""``llmcluster attach`` in real terminals: two observers on one run, one joining late.

The run prints JSONL on a pipe, read by a thread that stamps each record on arrival; the
attachers run in ptys (pexpect). Losses are a function of the seed, so "the run did not
notice" is checked against the same run with no observer at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pexpect
import pytest
from conftest import cli, run_cli
from private_dirs import private_dirs  # noqa: F401 - a fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
STEPS, JOIN_STEP = 30, 20


class StampedRun:
    """A run whose JSONL records are read by a thread and stamped with arrival times."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)  # fmt: skip
        self.records: list[tuple[float, dict[str, Any]]] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.records.append((time.monotonic(), json.loads(line)))
                self.changed.notify_all()

    def arrival(self, predicate: Any, timeout_s: float = 90) -> float:
        """When the first record matching ``predicate`` arrived (waits for it)."""
        with self.changed:
            found = self.changed.wait_for(
                lambda: next((t for t, r in self.records if predicate(r)), None)
                or not self.reader.is_alive(), timeout_s)  # fmt: skip
        stamp = next((t for t, r in self.records if predicate(r)), None)
        assert found and stamp is not None, f"the record never came; {self.stderr()}"
        return stamp

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "the run is still going"
        return self.proc.stderr.read()[-2000:]

    def finish(self) -> tuple[int, list[dict[str, Any]]]:
        code = self.proc.wait(timeout=120)
        self.reader.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code, [r for _, r in self.records]


def attacher(*args: str) -> pexpect.spawn:
    argv = ["-m", "llmcluster", "attach", *args]
    return pexpect.spawn(sys.executable, argv, env=dict(os.environ), dimensions=(50, 160),
                         encoding="utf-8", timeout=60)  # fmt: skip


def trace(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What the seed decides: the step losses and the end of the run."""
    steps = [("step", r["step"], r["loss"]) for r in records if r["type"] == "step"]
    summary = next(r for r in records if r["type"] == "summary")
    return [*steps, ("summary", summary["steps"], summary["final_loss"], summary["exit"])]


@pytest.mark.usefixtures("private_dirs", "clean_table")
def test_two_attachers_one_late_one_detaching() -> None:
    common = ("--ranks", "16", "--steps", str(STEPS), "--seed", "5", "--format", "jsonl")
    run = StampedRun(*common)
    early = late = None
    try:
        run.arrival(lambda r: r["type"] == "run")
        listed = run_cli("ps")
        run_id = next(r for _, r in run.records if r["type"] == "run")["run_id"]
        assert run_id in listed.stdout, listed.stdout
        early = attacher("--view", "grid")
        early.expect("GPUs @ step 2 ")
        run.arrival(lambda r: r["type"] == "step" and r["step"] == JOIN_STEP)
        late = attacher(run_id[:6], "--view", "grid")
        for terminal in (late, early):
            terminal.expect(f"GPUs @ step {JOIN_STEP} ")
        seen = time.monotonic()
        next_step = run.arrival(lambda r: r["type"] == "step" and r["step"] == JOIN_STEP + 1)
        assert seen < next_step, "an attacher showed the grid only after the next step"
        piped = subprocess.Popen([sys.executable, "-m", "llmcluster", "attach"],
                                 stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
        assert piped.stdout is not None and piped.stdout.readline()  # as `attach | head -1`:
        # the default view on a pipe is the log, line by line (a dashboard shows only its end)
        piped.stdout.close()
        assert piped.wait(timeout=60) == 141  # a closed pipe ends it as SIGPIPE would
        early.sendintr()  # detach mid-run
        early.expect(pexpect.EOF)
        early.close()
        assert early.exitstatus == 130
        late.expect("Exit")  # the summary table, then the attacher ends by itself
        late.expect(pexpect.EOF)
        late.close()
        assert late.exitstatus == 0
        code, records = run.finish()
    finally:
        for terminal in (early, late):
            if terminal is not None and terminal.isalive():
                terminal.terminate(force=True)
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(10)
    alone = run_cli(*common, "--speed", "100000", timeout=120)
    assert code == alone.returncode == 0, alone.stderr
    assert trace(records) == trace([json.loads(x) for x in alone.stdout.splitlines()])


@pytest.mark.usefixtures("private_dirs")
def test_attach_without_a_run_says_so() -> None:
    done = run_cli("attach")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("llmcluster attach: no live run")
    assert "Traceback" not in done.stderr
    assert run_cli("ps").stdout.strip() == "no live runs"
    bad = run_cli("attach", "--view", "top")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
