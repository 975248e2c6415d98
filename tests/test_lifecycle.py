"""Every exit path of a run ends with the right code, a summary, and a clean process table."""

from __future__ import annotations

import glob
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from conftest import Running, own_processes, records, run_cli, wait_until_clean
from inherited_modules import heavy_modules_of_ranks

from llmcluster.control.rundir import socket_root

FAST = ("--speed", "1000000")  # simulated seconds per wall second: steps take milliseconds


def _steps(recs: list[dict]) -> list[dict]:
    return [r for r in recs if r["type"] == "step"]


def test_normal_end_jsonl(clean_table: None) -> None:
    done = run_cli("--ranks", "8", "--steps", "4", "--format", "jsonl", *FAST)
    assert done.returncode == 0, done.stderr
    recs = records(done.stdout)
    kinds = [r["type"] for r in recs]
    assert kinds[0] == "run" and kinds[-1] == "summary"
    assert [s["step"] for s in _steps(recs)] == [1, 2, 3, 4]
    for ranks in (r for r in recs if r["type"] == "ranks"):
        assert [x["rank"] for x in ranks["ranks"]] == list(range(8))
        assert len({x["loss"] for x in ranks["ranks"]}) == 1
    assert recs[-1]["exit"] == "completed" and recs[-1]["steps"] == 4


@pytest.mark.timeout(120)
def test_64_ranks_every_step_bit_identical(clean_table: None) -> None:
    done = run_cli("--ranks", "64", "--steps", "20", "--format", "jsonl", *FAST, timeout=100)
    assert done.returncode == 0, done.stderr
    recs = records(done.stdout)
    ranks_records = [r for r in recs if r["type"] == "ranks" and r["phase"] is None]
    assert len(ranks_records) == 20
    for record, step in zip(ranks_records, _steps(recs), strict=False):
        assert len(record["ranks"]) == 64
        losses = {x["loss"] for x in record["ranks"]}
        assert losses == {step["loss"]}
    run = recs[0]
    assert run["world_size"] == 64 and run["nnodes"] == 8


def test_partial_last_node_and_rank_mapping(clean_table: None) -> None:
    done = run_cli(
        "--ranks", "11", "--nproc-per-node", "4", "--steps", "2", "--format", "jsonl", *FAST
    )
    assert done.returncode == 0, done.stderr
    ranks = next(r for r in records(done.stdout) if r["type"] == "ranks")["ranks"]
    assert [(x["node"], x["local_rank"]) for x in ranks] == [(r // 4, r % 4) for r in range(11)]


def _wait_step(run: Running, step: int) -> dict:
    return run.wait_for(lambda r: r["type"] == "step" and r["step"] >= step)


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_signal_stops_at_step_boundary_with_summary(sig: int, code: int, clean_table: None) -> None:
    run = Running("--ranks", "16", "--steps", "100000", "--format", "jsonl", "--speed", "200")
    try:
        _wait_step(run, 2)
        sent = time.monotonic()
        run.proc.send_signal(sig)
        rc, recs, err = run.finish(timeout_s=10)
        took = time.monotonic() - sent
    finally:
        run.kill()
    assert rc == code, err
    assert took < 2.0, f"exit took {took:.2f}s"
    summary = recs[-1]
    assert summary["type"] == "summary" and summary["exit"].startswith("interrupted")
    steps = [s["step"] for s in _steps(recs)]
    assert steps == list(range(1, len(steps) + 1)) and summary["steps"] == len(steps)
    assert "Traceback" not in err


def _run_dirs(owners: set[int] | None = None) -> set[str]:
    """Socket directories (of ``owners`` only: each is named by its owner's pid; other runs on
    the machine make theirs)."""
    found = glob.glob(os.path.join(socket_root(), "llmcluster-[0-9]*-*"))
    return {p for p in found if owners is None or int(p.rsplit("/", 1)[1].split("-")[1]) in owners}


def test_kill_9_coordinator_leaves_nothing(clean_table: None) -> None:
    run = Running("--ranks", "16", "--steps", "100000", "--format", "jsonl", "--speed", "200")
    try:
        _wait_step(run, 1)
        assert len(own_processes()) >= 16 + 2
        ours = _run_dirs({run.proc.pid, *(p.pid for p in own_processes())})
        assert len(ours) == 3  # the coordinator's and its two agents'
        killed = time.monotonic()
        run.proc.kill()
        left = wait_until_clean(3.0)
        took = time.monotonic() - killed
    finally:
        run.kill()
    assert left == [], f"still alive {took:.1f}s after kill -9: {left}"
    assert not ours & _run_dirs(), "a socket directory outlived the run"


def test_crashed_rank_fails_the_run_cleanly(clean_table: None) -> None:
    run = Running(
        "--ranks",
        "8",
        "--steps",
        "100000",
        "--format",
        "jsonl",
        "--speed",
        "200",
        "--max-restarts",
        "0",
    )
    try:
        first = run.wait_for(lambda r: r["type"] == "run")
        _wait_step(run, 1)
        victim = first["pids"][5]
        os.kill(victim, signal.SIGKILL)
        rc, recs, err = run.finish(timeout_s=15)
    finally:
        run.kill()
    assert rc != 0
    failure = next(r for r in recs if r["type"] == "failure")
    assert failure["rank"] == 5 and failure["exitcode"] == -9 and failure["signal"] == "SIGKILL"
    assert recs[-1]["type"] == "summary" and recs[-1]["exit"] == "failed"
    assert "Traceback" not in err


def test_ranks_are_named_and_see_the_torchrun_environment(clean_table: None) -> None:
    run = Running(
        "--ranks",
        "8",
        "--nproc-per-node",
        "4",
        "--steps",
        "100000",
        "--format",
        "jsonl",
        "--speed",
        "200",
    )
    try:
        first = run.wait_for(lambda r: r["type"] == "run")
        for rank, (pid, env) in enumerate(zip(first["pids"], first["env"], strict=False)):
            with open(f"/proc/{pid}/comm") as f:
                assert f.read().strip() == f"llmc-rank{rank}"
            assert env["RANK"] == str(rank)
            assert env["LOCAL_RANK"] == str(rank % 4)
            assert env["GROUP_RANK"] == str(rank // 4)
            assert env["WORLD_SIZE"] == "8" and env["LOCAL_WORLD_SIZE"] == "4"
            assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == "29500"
        dirs = [d for d in os.listdir(socket_root()) if d.startswith(f"llmcluster-{run.proc.pid}-")]
        assert len(dirs) == 1
        assert stat.S_IMODE(os.stat(f"{socket_root()}/{dirs[0]}").st_mode) == 0o700
        run.proc.send_signal(signal.SIGINT)
        rc, _, _ = run.finish()
    finally:
        run.kill()
    assert rc == 130
    assert not [d for d in os.listdir(socket_root()) if d.startswith(f"llmcluster-{run.proc.pid}-")]


_READY_FIRST = """
import os
import sys
from llmcluster.control.link import ControlLink
from llmcluster.wire import Kind
from llmcluster.worker import rank, training

sent, heard = [], []
send, await_kind = ControlLink.send, rank.Rank._await


def recording_send(self, kind, body):
    sent.append(kind)
    return send(self, kind, body)


def recording_await(self, kind, timeout_s):
    message = await_kind(self, kind, timeout_s)
    heard.append(kind)
    return message


build = training.Training.__init__


def reporting_build(self, host):
    when = "after READY and GO" if Kind.READY in sent and Kind.GO in heard else "too early"
    os.write(2, f"rank {host.spec.rank} built its training {when}\\n".encode())  # one write
    build(self, host)


ControlLink.send = recording_send
rank.Rank._await = recording_await
training.Training.__init__ = reporting_build
from llmcluster.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
"""


def test_a_rank_builds_its_training_once_every_rank_is_ready(clean_table: None) -> None:
    """The start's critical path is the rendezvous: a rank builds its training state (its
    GPU's personality, its gradient bucket) once the process group is up (READY sent, GO
    heard: init_process_group's store barrier), as a training script builds its model, so
    a thousand ranks' builds hold up neither the first barrier nor the coordinator hearing
    it on two cores. Every process of the run is forked from this script: its hooks are
    every rank's."""
    done = subprocess.run(
        [sys.executable, "-c", _READY_FIRST, "--ranks", "16", "--steps", "2", *FAST,
         "--format", "jsonl"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    built = [line for line in done.stderr.splitlines() if " built its training " in line]
    assert sorted(built) == sorted(f"rank {r} built its training after READY and GO"
                                   for r in range(16))  # fmt: skip


def test_ranks_inherit_no_module_their_run_does_not_use(clean_table: None) -> None:
    """Every fork copies the page tables of all the forker holds, so the modules of features
    a run does not use are not in its launcher, agents or ranks: the ZAP handler's zmq.auth
    (asyncio, ssl: 4.6 MB) only with a token, prometheus-client and the HTTP server only with
    --metrics-port. Checked as each rank starts, before it imports anything itself."""
    held = heavy_modules_of_ranks("--ranks", "8", "--steps", "1", *FAST)
    assert held == {r: "none" for r in range(8)}, held
