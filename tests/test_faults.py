"""Failures for real: killed and hung ranks, dead agents, restarts from the checkpoint."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import Running, records, run_cli

FAST = ("--speed", "2000")


def _by_type(recs: list[dict], kind: str) -> list[dict]:
    return [r for r in recs if r["type"] == kind]


def _assert_consistent_steps(recs: list[dict], total: int) -> None:
    """Every completed step bit-identical on all ranks; steps continue from the checkpoint."""
    for ranks in _by_type(recs, "ranks"):
        assert len({x["loss"] for x in ranks["ranks"]}) == 1
    steps = [s["step"] for s in _by_type(recs, "step")]
    restarts = _by_type(recs, "restart")
    assert steps[-1] == total
    for restart in restarts:  # after a restart the step numbers resume right after the checkpoint
        index = next(i for i, r in enumerate(recs) if r is restart)
        following = next(r["step"] for r in recs[index:] if r["type"] == "step")
        assert following == restart["resume_step"]
    assert sorted(set(steps)) == list(range(1, total + 1))


def test_killed_rank_restarts_from_the_checkpoint(clean_table: None) -> None:
    done = run_cli(
        "--ranks", "8", "--steps", "30", "--format", "jsonl", *FAST,
        "--inject", "kill:rank=5,step=15", timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    recs = records(done.stdout)
    (failure,) = _by_type(recs, "failure")
    assert failure["rank"] == 5 and failure["signal"] == "SIGKILL" and failure["exitcode"] == -9
    (restart,) = _by_type(recs, "restart")
    interval = recs[0]["plan"]["checkpoint_interval"]
    assert restart["resume_step"] == (15 // interval) * interval + 1 if interval < 15 else 1
    assert restart["attempt"] == 1 and restart["lost_s"] > 0
    _assert_consistent_steps(recs, 30)
    summary = recs[-1]
    assert summary["restarts"] == 1 and summary["exit"] == "completed"
    assert summary["lost_s"] == pytest.approx(restart["lost_s"])
    pids = [r["pids"] for r in _by_type(recs, "run")]
    assert pids[0][5] != pids[1][5]  # a new process plays rank 5


def test_hung_rank_is_detected_killed_and_replaced(clean_table: None) -> None:
    done = run_cli(
        "--ranks", "4", "--steps", "12", "--format", "jsonl", *FAST,
        "--inject", "hang:rank=2,step=7", timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    recs = records(done.stdout)
    (failure,) = _by_type(recs, "failure")
    assert failure["rank"] == 2 and "stopped answering" in failure["reason"]
    _assert_consistent_steps(recs, 12)


def test_restart_limit_ends_the_run_with_the_report(clean_table: None) -> None:
    done = run_cli(
        "--ranks", "4", "--steps", "40", "--format", "jsonl", *FAST, "--max-restarts", "1",
        "--inject", "kill:rank=1,step=5;kill:rank=3,step=9", timeout=100,
    )  # fmt: skip
    assert done.returncode == 1
    recs = records(done.stdout)
    assert [f["rank"] for f in _by_type(recs, "failure")] == [1, 3]
    assert len(_by_type(recs, "restart")) == 1
    assert recs[-1]["type"] == "summary" and recs[-1]["exit"] == "failed"


def test_killed_node_agent_takes_its_ranks_and_the_run_restarts(clean_table: None) -> None:
    run = Running("--ranks", "8", "--nproc-per-node", "4", "--steps", "400", "--format", "jsonl",
                  "--model", "Llama-3-8B", "--gpu", "H100-SXM", "--speed", "500")  # fmt: skip
    try:
        run.wait_for(lambda r: r["type"] == "step" and r["step"] >= 3)
        agent = next(p for p in _agents() if p[1] == "llmc-agent1")
        os.kill(agent[0], signal.SIGKILL)
        failure = run.wait_for(lambda r: r["type"] == "failure")
        assert failure["node"] == 1
        restart = run.wait_for(lambda r: r["type"] == "restart")
        resumed = run.wait_for(lambda r: r["type"] == "ranks" and r["phase"] is None)
        assert resumed["step"] == restart["resume_step"]
        assert {x["node"] for x in resumed["ranks"]} == {0, 1}
        run.proc.send_signal(signal.SIGINT)
        code, _, _ = run.finish()
        assert code == 130
    finally:
        run.kill()


def _agents() -> list[tuple[int, str]]:
    from conftest import own_processes

    return [(p.pid, p.comm) for p in own_processes() if p.comm.startswith("llmc-agent")]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("kil:rank=1,step=2", "unknown fault"),
        ("kill:rank=1", "missing step"),
        ("kill:rank=99,step=2", "rank must be between 0 and 7"),
        ("straggler:rank=1,slowdown=abc", "slowdown must be a number"),
        ("kill:rank=1,step=2,color=red", "unknown or malformed"),
    ],
)
def test_bad_inject_is_a_usage_error(spec: str, message: str) -> None:
    done = run_cli("--ranks", "8", "--inject", spec)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr
