"""``examples/slurm/train.sbatch`` on a real Slurm cluster (``slurm_cluster``): two stand-in
hosts of eight fake GPUs each, the file submitted as it is with ``sbatch``.

A finished job: one 16-rank run across both hosts with torchrun's rank mapping, the hosts'
names as Slurm named them, bit-identical losses. A cancelled one: ``scancel`` mid-run leaves
no process of the job on any host. A step of a task per GPU is refused at once, saying why
(one task per node is the supported pattern). The job's processes are told apart by the
test's marker (``LLMCLUSTER_TEST_MARK``), which sbatch and srun hand to every task by
exporting the submitter's environment. Skips only where Slurm is not installed (CI installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, processes_marked
from slurm_cluster import Job, NoHosts, SlurmCluster, missing, slurm_cluster

from llmcluster.config import ConfigError
from llmcluster.launch.environment import LaunchFlags, launch_env

SBATCH = Path(__file__).parent.parent / "examples" / "slurm" / "train.sbatch"
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


@pytest.mark.timeout(150)
def test_scancel_leaves_no_process_of_the_job_on_any_host(
    slurm: SlurmCluster, clean_table: None, test_mark: str
) -> None:
    job = slurm.sbatch(SBATCH, f"--error={slurm.root}/out/%j.err", "--", *RUN,
                       "--steps", "100000", "--speed", "200", env=_job_env(slurm))  # fmt: skip
    deadline = time.monotonic() + 90
    while _steps_seen(slurm, job) < 2:  # the run is training on both hosts
        assert slurm.state(job) and time.monotonic() < deadline, (
            f"job {job.job_id} never trained:\n{slurm.output(job)}\n{_stderr(job)}"
        )
        time.sleep(0.1)
    netns = _netns_of(slurm)
    running = processes_marked(test_mark)
    assert len(running) >= 16 + 2, running  # 16 ranks and 2 agents, at least
    assert _hosts_of(running, netns) == {"node1", "node2"}
    assert _files_left(slurm) != []  # while it runs: its sockets and run file are there
    assert slurm.client("scancel", str(job.job_id)).returncode == 0
    slurm.wait_gone(job, timeout_s=60)
    deadline = time.monotonic() + 20  # KillWait (5 s) bounds slurmstepd's SIGTERM -> SIGKILL
    while (left := processes_marked(test_mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"processes of job {job.job_id} left: {left}"
    assert _files_left(slurm) == []
    assert "CANCELLED" in _stderr(job) + slurm.output(job)


def test_several_tasks_per_node_are_refused_in_one_line() -> None:
    """srun's task counts (what a step of ``--ntasks-per-node=8`` sets) against one per node."""
    slurm_env = {"SLURM_JOB_ID": "7", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "2",
                 "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_GPUS_ON_NODE": "8"}  # fmt: skip
    per_node = {**slurm_env, "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "2"}
    assert launch_env(LaunchFlags(), per_node, _no_scontrol).node_rank == 0
    assert launch_env(LaunchFlags(), slurm_env, _no_scontrol).nnodes == 2  # the batch step
    per_rank = {**slurm_env, "SLURM_STEP_NUM_TASKS": "16", "SLURM_STEP_NUM_NODES": "2"}
    with pytest.raises(ConfigError, match=r"runs 16 tasks on 2 node\(s\).*--ntasks-per-node=1"):
        launch_env(LaunchFlags(), per_rank, _no_scontrol)


def _no_scontrol(nodelist: str) -> tuple[str, ...]:
    assert nodelist == "node[1-2]"
    return ("node1", "node2")


@pytest.mark.timeout(120)
def test_sbatch_with_a_task_per_gpu_fails_at_once_saying_why(
    slurm: SlurmCluster, clean_table: None
) -> None:
    job = slurm.sbatch(SBATCH, "--ntasks-per-node=2", f"--error={slurm.root}/out/%j.err", "--",
                       *RUN, "--steps", "4", env=_job_env(slurm))  # fmt: skip
    slurm.wait_gone(job, timeout_s=60)
    err = _stderr(job)
    refusals = [
        line for line in err.splitlines() if "llmcluster launch is one task per node" in line
    ]
    assert len(refusals) == 4, err  # every task of the step says why, in one line
    assert "Traceback" not in err and _records(slurm.output(job)) == []
    assert err.count("Exited with exit code 2") >= 1, err  # a usage error
    assert _files_left(slurm) == []
