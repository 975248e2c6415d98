"""The telemetry plane: the display rank's reliable channel and any number of observers."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import zmq
from conftest import Running

from llmcluster.telemetry.client import RecordClient
from llmcluster.wire.records import RanksRecord, Record, StepRecord


def _run_file(runs: Path, pid: int, timeout_s: float = 20.0) -> dict:
    """The run file of the run with coordinator ``pid`` (written once its hub is bound)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in runs.glob("llmcluster/*.json"):
            info = json.loads(path.read_text())
            if info["pid"] == pid:
                assert path.stat().st_mode & 0o777 == 0o600
                return info
        time.sleep(0.02)
    raise AssertionError("no run file appeared")


class Observer(threading.Thread):
    """Collects every record an observer gets until the summary (or a timeout)."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.ctx, self.endpoint = ctx, endpoint
        self.records: list[Record] = []
        self.connected = threading.Event()

    def run(self) -> None:
        client = RecordClient(self.ctx, self.endpoint, role="observer", silence_s=20.0)
        self.connected.set()
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline:
                for _, record in client.receive(0.1):
                    self.records.append(record)
                    if record.TYPE == "summary":
                        return
        finally:
            client.close()


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.timeout(120)
def test_two_observers_and_the_display_see_every_record_across_a_rank0_kill(
    clean_table: None, runtime_dir: Path
) -> None:
    run = Running(
        "--ranks",
        "8",
        "--nproc-per-node",
        "4",
        "--steps",
        "40",
        "--format",
        "jsonl",
        "--model",
        "Llama-3-8B",
        "--gpu",
        "H100-SXM",
        "--speed",
        "300",
        "--seed",
        "7",  # a plan with no failure of its own: rank 0 is the one that dies
    )
    ctx = zmq.Context()
    try:
        info = _run_file(runtime_dir, run.proc.pid)
        observers = [Observer(ctx, info["records"]) for _ in range(2)]
        for observer in observers:
            observer.start()
            observer.connected.wait(5)
        first = run.wait_for(lambda r: r["type"] == "run")
        run.wait_for(lambda r: r["type"] == "step" and r["step"] >= 5)
        os.kill(first["pids"][0], signal.SIGKILL)  # rank 0: the display itself
        code, recs, err = run.finish(timeout_s=90)
        assert code == 0, err
        for observer in observers:
            observer.join(30)
        kinds = [r["type"] for r in recs]
        assert "failure" in kinds and "restart" in kinds and kinds[-1] == "summary"
        failure = next(r for r in recs if r["type"] == "failure")
        assert failure["rank"] == 0 and failure["signal"] == "SIGKILL"
        steps = sorted({r["step"] for r in recs if r["type"] == "step"})
        assert steps == list(range(1, 41))
        for observer in observers:
            seen = [r.TYPE for r in observer.records]
            assert "failure" in seen and "restart" in seen and seen[-1] == "summary"
            observed = {r.step for r in observer.records if isinstance(r, StepRecord)}
            assert observed == set(steps)
            summary = observer.records[-1]
            assert summary.restarts == recs[-1]["restarts"] >= 1
            assert summary.final_loss == recs[-1]["final_loss"]
    finally:
        run.kill()
        ctx.destroy(linger=0)  # observer threads' sockets too: never wait on them


@pytest.mark.timeout(120)
def test_an_observer_joining_late_has_the_whole_grid_before_the_next_step(
    clean_table: None, runtime_dir: Path
) -> None:
    run = Running(
        "--ranks",
        "16",
        "--steps",
        "60",
        "--format",
        "jsonl",
        "--model",
        "Llama-3-8B",
        "--gpu",
        "H100-SXM",
        "--speed",
        "40",
    )
    ctx = zmq.Context()
    try:
        info = _run_file(runtime_dir, run.proc.pid)
        run.wait_for(lambda r: r["type"] == "step" and r["step"] >= 30, timeout_s=90)
        client = RecordClient(ctx, info["records"], role="observer")
        before_next: list[Record] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = [r for _, r in client.receive(0.1)]
            upto = next(
                (i for i, r in enumerate(got) if isinstance(r, StepRecord) and r.step >= 31), None
            )
            before_next += got if upto is None else got[:upto]
            if upto is not None:
                break
        client.close()
        kinds = [r.TYPE for r in before_next]
        assert "run" in kinds, kinds  # the snapshot came first
        grids = [r for r in before_next if isinstance(r, RanksRecord)]
        assert grids and len(grids[-1].ranks) == 16
        assert [s.rank for s in grids[-1].ranks] == list(range(16))
        run.proc.send_signal(signal.SIGINT)
        code, _, _ = run.finish(timeout_s=30)
        assert code == 130
    finally:
        run.kill()
        ctx.destroy(linger=0)  # observer threads' sockets too: never wait on them


@pytest.mark.timeout(120)
def test_a_kill_during_rendezvous_restarts_and_completes(clean_table: None) -> None:
    run = Running(
        "--ranks",
        "8",
        "--nproc-per-node",
        "4",
        "--steps",
        "6",
        "--format",
        "jsonl",
        "--speed",
        "1000000",
        "--inject",
        "kill:rank=5,step=0",
        "--max-restarts",
        "1",
    )
    try:
        code, recs, err = run.finish(timeout_s=90)
        assert code == 0, err
        kinds = [r["type"] for r in recs]
        failure = kinds.index("failure")
        assert "ready" not in kinds[:failure]  # it struck before the first barrier
        assert recs[failure]["rank"] == 5 and recs[failure]["signal"] == "SIGKILL"
        assert kinds.index("restart") > failure and recs[-1]["exit"] == "completed"
        assert sorted({r["step"] for r in recs if r["type"] == "step"}) == list(range(1, 7))
    finally:
        run.kill()
