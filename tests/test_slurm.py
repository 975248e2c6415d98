"""``examples/slurm/train.sbatch`` (a task per node) and ``train-per-rank.sbatch`` (a task per
rank) on a real Slurm cluster (``slurm_cluster``): two stand-in hosts of eight fake GPUs each,
the files submitted as they are with ``sbatch``.

A finished job: one 16-rank run across both hosts with torchrun's rank mapping, the hosts'
names as Slurm named them, bit-identical losses (a task per rank: also through a restart of
the group by the same tasks). A cancelled one: ``scancel`` mid-run leaves no process of the
job on any host, and a node lost mid-run fails the run as any lost node does. A task-per-
rank step srun deals round robin is refused at once, saying why. The job's processes are
told apart by the test's marker (``LLMCLUSTER_TEST_MARK``), which sbatch and srun hand to
every task by exporting the submitter's environment. Skips only where Slurm is not installed
(CI installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, processes_marked
from slurm_cluster import Job, NoHosts, SlurmCluster, missing, slurm_cluster

from llmcluster.control.rundir import sweep_stale_dirs

SBATCH = Path(__file__).parent.parent / "examples" / "slurm" / "train.sbatch"
PER_RANK = SBATCH.with_name("train-per-rank.sbatch")
RUN = ("--model", "Llama-3-8B", "--gpu", "H100-SXM", "--format", "jsonl")


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    try:
        with slurm_cluster(nodes=2) as cluster:
            yield cluster
    except NoHosts as exc:  # namespaces cannot be made here (a restricted container)
        pytest.skip(str(exc))


def _job_env(cluster: SlurmCluster) -> dict[str, str]:
    """What sbatch exports to the job: this interpreter's ``llmcluster`` first on PATH, and a
    private TMPDIR (the run's socket directories)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    tmp = str(cluster.root / "tmp")
    return {"PATH": path, "TMPDIR": tmp, "XDG_RUNTIME_DIR": tmp}


def _files_left(cluster: SlurmCluster) -> list[Path]:
    """Sockets, run files or logs the job's processes left in its TMPDIR/XDG_RUNTIME_DIR."""
    return [p for p in (cluster.root / "tmp").rglob("*") if not p.is_dir()]


def _records(text: str) -> list[dict[str, Any]]:
    """The JSONL records among the output's complete lines (a running job's last line may be
    half written)."""
    lines = text.split("\n")[:-1]
    return [json.loads(line) for line in lines if line.startswith("{")]


def _netns_of(cluster: SlurmCluster) -> dict[int, str]:
    """Network namespace inode -> stand-in host name."""
    return {os.stat(f"/run/netns/{cluster.prefix}{h}").st_ino: h for h in cluster.nodes}


def _hosts_of(procs: list[Proc], netns: dict[int, str]) -> set[str]:
    hosts = set()
    for proc in procs:
        with contextlib.suppress(OSError):  # gone meanwhile
            hosts.add(netns.get(os.stat(f"/proc/{proc.pid}/ns/net").st_ino, "elsewhere"))
    return hosts


@pytest.mark.timeout(150)
def test_sbatch_runs_one_job_across_both_hosts(slurm: SlurmCluster, clean_table: None) -> None:
    job = slurm.sbatch(SBATCH, f"--error={slurm.root}/out/%j.err", "--",
                       *RUN, "--steps", "4", "--speed", "1e6", env=_job_env(slurm))  # fmt: skip
    slurm.wait_gone(job, timeout_s=120)
    out, err = slurm.output(job), _stderr(job)
    assert _files_left(slurm) == []
    recs = _records(out)
    assert recs and recs[-1]["type"] == "summary", f"{out}\n{err}\n{slurm.logs()}"
    assert recs[-1]["exit"] == "completed" and recs[-1]["steps"] == 4
    run = recs[0]
    assert run["type"] == "run" and run["world_size"] == 16
    assert run["hosts"] == ["node1", "node2"]  # SLURM_JOB_NODELIST's hosts, in node order
    assert run["master_addr"] == "node1"  # its first host serves the rendezvous
    steps = [r for r in recs if r["type"] == "step"]
    ranks_records = [r for r in recs if r["type"] == "ranks" and r["phase"] is None]
    assert len(steps) == len(ranks_records) == 4
    for record, step in zip(ranks_records, steps, strict=True):
        ranks = record["ranks"]
        assert [x["rank"] for x in ranks] == list(range(16))
        # torchrun's mapping: node 0 (the first host of the node list) holds ranks 0-7
        assert [(x["node"], x["local_rank"]) for x in ranks] == [(r // 8, r % 8) for r in range(16)]
        assert [x["host"] for x in ranks] == ["node1"] * 8 + ["node2"] * 8
        assert {x["loss"] for x in ranks} == {step["loss"]}  # bit-identical on every rank
    # node 1's elastic agent logs its own group, on its own host (stderr, as torchrun's)
    assert "group_rank=1" in err and f"global_ranks={list(range(8, 16))}" in err, err
    # the launcher names the job, its node list and each node as Slurm does
    where = f"Slurm job {job.job_id} on node[1-2] (node1, node2)"
    assert (
        f"{where}: node rank 0 of 2 (node1)" in err and f"{where}: node rank 1 of 2 (node2)" in err
    )


def _stderr(job: Job) -> str:
    err = job.output.with_suffix(".err")
    return err.read_text(errors="replace") if err.exists() else ""


def _steps_seen(cluster: SlurmCluster, job: Job) -> int:
    steps = [r["step"] for r in _records(cluster.output(job)) if r["type"] == "step"]
    return max(steps, default=0)


def _training(script: Path, slurm: SlurmCluster, *extra: str) -> Job:
    """A long job of ``script``, once it trains on both hosts."""
    job = slurm.sbatch(script, f"--error={slurm.root}/out/%j.err", "--", *RUN, "--steps",
                       "100000", "--speed", "200", *extra, env=_job_env(slurm))  # fmt: skip
    deadline = time.monotonic() + 90
    while _steps_seen(slurm, job) < 2:
        assert slurm.state(job) and time.monotonic() < deadline, (
            f"job {job.job_id} never trained:\n{slurm.output(job)}\n{_stderr(job)}"
        )
        time.sleep(0.1)
    return job


def _cancel_until_gone(slurm: SlurmCluster, job: Job, test_mark: str) -> None:
    """scancel the job; no process of it may remain on any host."""
    assert slurm.client("scancel", str(job.job_id)).returncode == 0
    slurm.wait_gone(job, timeout_s=60)
    deadline = time.monotonic() + 20  # KillWait (5 s) bounds slurmstepd's SIGTERM -> SIGKILL
    while (left := processes_marked(test_mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"processes of job {job.job_id} left: {left}"


@pytest.mark.timeout(150)
def test_scancel_leaves_no_process_of_the_job_on_any_host(
    slurm: SlurmCluster, clean_table: None, test_mark: str
) -> None:
    job = _training(SBATCH, slurm)
    netns = _netns_of(slurm)
    running = processes_marked(test_mark)
    assert len(running) >= 16 + 2, running  # 16 ranks and 2 agents, at least
    assert _hosts_of(running, netns) == {"node1", "node2"}
    assert _files_left(slurm) != []  # while it runs: its sockets and run file are there
    _cancel_until_gone(slurm, job, test_mark)
    assert _files_left(slurm) == []
    assert "CANCELLED" in _stderr(job) + slurm.output(job)


@pytest.mark.timeout(150)
def test_a_node_lost_mid_job_is_handled_like_any_lost_node(
    slurm: SlurmCluster, clean_table: None, test_mark: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """node2's task killed as a crashed host would lose it: the coordinator finds the node
    silent, the run (no restarts left) fails with the report, srun ends the step, the job is
    FAILED and nothing of it remains on either host."""
    job = _training(SBATCH, slurm, "--max-restarts", "0")
    netns = _netns_of(slurm)
    marked = processes_marked(test_mark)
    pids = {p.pid for p in marked}
    task = [p for p in marked if p.ppid not in pids and _hosts_of([p], netns) == {"node2"}]
    assert len(task) == 1, marked  # node2's task: the node's agent, its ranks' parent
    os.kill(task[0].pid, 9)
    slurm.wait_gone(job, timeout_s=90)
    recs = _records(slurm.output(job))
    failures = [r for r in recs if r["type"] == "failure"]
    first = failures[0] if failures else {}
    assert first.get("node") == 1 and ("silent" in first["reason"] or "stopped answering" in
                                       first["reason"]), failures  # fmt: skip
    assert recs[-1]["type"] == "summary" and recs[-1]["exit"] != "completed"
    deadline = time.monotonic() + 20
    while (left := processes_marked(test_mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"processes of job {job.job_id} left: {left}"
    # srun ends the step when a task is killed, and slurmstepd kills what is left of it (the
    # agent's janitor too): the killed agent's directory may stay, stale, for the next start
    # on that host to sweep, as it does here
    monkeypatch.setenv("TMPDIR", str(slurm.root / "tmp"))  # the job's, where it left them
    monkeypatch.setattr(tempfile, "tempdir", str(slurm.root / "tmp"))
    sweep_stale_dirs()
    assert _files_left(slurm) == []


def _env_of(pid: int) -> dict[str, str]:
    """A process's environment as it was exec'd (a forked rank's own additions are not
    there: its task's are)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = f.read().decode(errors="replace").split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def _check_run(recs: list[dict[str, Any]], *, steps: int) -> None:
    """A 2-node run of 16 ranks: torchrun's mapping on every rank, Slurm's host names,
    bit-identical losses every step."""
    assert recs and recs[-1]["type"] == "summary", recs[-1:]
    assert recs[-1]["exit"] == "completed" and recs[-1]["steps"] == steps
    runs = [r for r in recs if r["type"] == "run"]
    for run in runs:
        assert run["world_size"] == 16 and run["hosts"] == ["node1", "node2"]
        assert run["master_addr"] == "node1"
        for rank, env in enumerate(run["env"]):  # as each rank saw its own environment
            node, local = divmod(rank, 8)
            assert (env["RANK"], env["LOCAL_RANK"], env["GROUP_RANK"]) == (
                str(rank),
                str(local),
                str(node),
            )
            assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["MASTER_ADDR"]) == (
                "16",
                "8",
                "node1",
            )
    steps_seen = {r["step"]: r for r in recs if r["type"] == "step"}
    ranks_records = [r for r in recs if r["type"] == "ranks" and r["phase"] is None]
    assert ranks_records and sorted(steps_seen) == list(range(1, steps + 1))
    for record in ranks_records:
        ranks = record["ranks"]
        assert [(x["rank"], x["node"], x["local_rank"], x["host"]) for x in ranks] == [
            (r, r // 8, r % 8, f"node{r // 8 + 1}") for r in range(16)
        ]
        assert len({x["loss"] for x in ranks}) == 1  # bit-identical on every rank


@pytest.mark.timeout(150)
def test_a_task_per_rank_trains_across_both_hosts_and_restarts_through_its_slots(
    slurm: SlurmCluster, clean_table: None
) -> None:
    """``train-per-rank.sbatch``: 16 srun tasks, each a rank; rank 9 (forked by a slot on the
    second host) is killed at step 2 and the group restarts: a task cannot be started again
    under srun, so a second attempt of all 16 ranks is the same slots forking new ranks."""
    job = slurm.sbatch(PER_RANK, f"--error={slurm.root}/out/%j.err", "--", *RUN, "--steps", "4",
                       "--speed", "1e6", "--max-restarts", "1", "--inject", "kill:rank=9,step=2",
                       env=_job_env(slurm))  # fmt: skip
    slurm.wait_gone(job, timeout_s=120)
    out, err = slurm.output(job), _stderr(job)
    assert _files_left(slurm) == [] and not list((slurm.root / "tmp").glob("llmc-step-*"))
    recs = _records(out)
    assert recs and recs[-1]["type"] == "summary", f"{out[-2000:]}\n{err}\n{slurm.logs()}"
    _check_run(recs, steps=4)
    assert recs[-1]["restarts"] == 1, recs[-1]
    runs = [r for r in recs if r["type"] == "run"]
    assert [r["attempt"] for r in runs] == [0, 1]
    assert runs[0]["pids"][9] != runs[1]["pids"][9]  # a new rank 9, from the same task
    where = f"Slurm job {job.job_id} on node[1-2] (node1, node2)"
    for node, host in enumerate(("node1", "node2")):  # one agent per node says where it is
        line = f"{where}: node rank {node} of 2 ({host}), 8 rank(s) per node (a Slurm task each"
        assert err.count(line) == 1, err
    assert "Traceback" not in err and "cannot start its ranks" not in err, err


@pytest.mark.timeout(150)
def test_scancel_of_a_task_per_rank_job_leaves_no_process_on_any_host(
    slurm: SlurmCluster, clean_table: None, test_mark: str
) -> None:
    job = _training(PER_RANK, slurm)
    netns = _netns_of(slurm)
    running = processes_marked(test_mark)
    ranks = [p for p in running if p.comm.startswith("llmc-rank")]
    assert len(ranks) == 16 and len(running) >= 16 + 16, running  # 16 tasks, each with a rank
    assert _hosts_of(running, netns) == {"node1", "node2"}
    for rank in ranks:  # each rank is a child of the srun task of its SLURM_PROCID (local
        task = _env_of(rank.ppid)  # rank 0: of its node's agent, in the task of local id 0)
        number = int(rank.comm.removeprefix("llmc-rank"))
        assert (task["SLURM_PROCID"], task["SLURM_LOCALID"]) == (str(number), str(number % 8))
    assert list((slurm.root / "tmp").glob("llmc-step-*"))  # the slots' sockets, while it runs
    _cancel_until_gone(slurm, job, test_mark)
    assert _files_left(slurm) == [] and not list((slurm.root / "tmp").glob("llmc-step-*"))
    assert "CANCELLED" in _stderr(job) + slurm.output(job)


@pytest.mark.timeout(120)
def test_a_cyclic_task_per_rank_step_fails_at_once_saying_why(
    slurm: SlurmCluster, clean_table: None
) -> None:
    """srun -m cyclic deals the ranks round robin: every task refuses, in one line (also the
    first one, whose own place is right: its node's task list is not)."""
    job = slurm.sbatch(PER_RANK, "--ntasks-per-node=2", "--distribution=cyclic",
                       f"--error={slurm.root}/out/%j.err", "--", *RUN, "--steps", "4",
                       env=_job_env(slurm))  # fmt: skip
    slurm.wait_gone(job, timeout_s=60)
    err = _stderr(job)
    refusals = [line for line in err.splitlines() if "use srun --distribution=block" in line]
    assert len(refusals) == 4, err  # every task of the step says why, in one line
    assert "Traceback" not in err and _records(slurm.output(job)) == []
    assert err.count("Exited with exit code 2") >= 1, err  # a usage error
    assert _files_left(slurm) == []
