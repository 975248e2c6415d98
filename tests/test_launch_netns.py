"""torchrun parity on stand-in hosts: the same ``llmcluster launch`` on three of them.

Network namespaces from ``tests/netns/netns-hosts.sh`` (node1 10.213.0.11, node2 .12, node3
.13; the coord namespace is not used: node rank 0 hosts the coordinator). Each job is started
the way its launcher would: the same command line with only the node rank differing; only
``PET_NODE_RANK`` differing; the variables Kubeflow's training-operator sets for a PyTorchJob;
an Indexed Job's ``JOB_COMPLETION_INDEX`` with the master's address (no /etc/hosts: the
Service name is stood in for by the IP, as ``LLMCLUSTER_MASTER_ADDR``). Every job trains with
bit-identical losses on every rank, and the same seed gives the same losses whichever way the
nodes were placed. A node started with another ``--nproc-per-node`` is refused at once, with
the reason on it and on the coordinator. Skips, saying why, without root or iproute2.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from netns_hosts import StandIns, communicate_all, reap, stand_in_hosts

HOSTS = ("node1", "node2", "node3")
MASTER = "10.213.0.11"  # node1
OPTIONS = ["--steps", "4", "--speed", "1e6", "--seed", "42", "--model", "Llama-3-8B",
           "--gpu", "H100-SXM", "--format", "jsonl", "--join-timeout", "60"]  # fmt: skip
RUN = ["--nproc-per-node", "4", *OPTIONS]
NETNS = StandIns(f"la{os.getpid() % 10000}-", {"LLMCLUSTER_TOKEN": "s3cret"})


@pytest.fixture(scope="module")
def hosts() -> Iterator[StandIns]:
    with stand_in_hosts(NETNS, 3) as made:
        yield made


def _start(host: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return NETNS.start(host, ["launch", *args], env)


def _job(per_host: list[tuple[list[str], dict[str, str]]]) -> tuple[list[dict], list[str]]:
    """Start one launch per host, wait for all; node rank 0's records and every stderr."""
    procs = [_start(host, args, env) for host, (args, env) in zip(HOSTS, per_host, strict=True)]
    try:
        outputs = communicate_all(procs, timeout=150)
    finally:
        reap(*procs)
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
    printed = [o for o, _ in outputs if o.strip()]
    assert len(printed) == 1, [o[-300:] for o in printed]  # rank 0's display alone prints
    out = printed[0]
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")], [
        e for _, e in outputs
    ]


def _losses(recs: list[dict], *, in_order: bool = True) -> list[float]:
    """Every step's loss, checked bit-identical on all 12 ranks of the 3 hosts (``in_order``:
    host i is node rank i)."""
    run = recs[0]
    assert run["type"] == "run" and run["world_size"] == 12 and run["master_addr"] == MASTER
    assert (run["hosts"] if in_order else sorted(run["hosts"])) == list(HOSTS)
    ranks = [r for r in recs if r["type"] == "ranks" and r["phase"] is None]
    steps = [r for r in recs if r["type"] == "step"]
    assert len(steps) == len(ranks) == 4
    for record, step in zip(ranks, steps, strict=True):
        assert [(x["rank"], x["node"], x["local_rank"]) for x in record["ranks"]] == [
            (r, r // 4, r % 4) for r in range(12)
        ]  # torchrun's mapping: node rank * nproc + local rank
        assert {x["host"] for x in record["ranks"] if x["node"] == 2} == {run["hosts"][2]}
        assert {x["loss"] for x in record["ranks"]} == {step["loss"]}
    assert recs[-1]["type"] == "summary" and recs[-1]["exit"] == "completed"
    return [s["loss"] for s in steps]


FLAGS = ["--nnodes", "3", "--master-addr", MASTER, "--master-port", "29500", *RUN]
LOSSES: dict[str, list[float]] = {}


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("hosts")
def test_the_same_command_with_only_the_node_rank_differing(clean_table: None) -> None:
    recs, errs = _job([([*FLAGS, "--node-rank", str(rank)], {}) for rank in range(3)])
    LOSSES["flags"] = _losses(recs)
    assert "node rank 0 of 3" in errs[0] and "serving it here" in errs[0]
    assert "node rank 2 of 3" in errs[2] and "joining it" in errs[2]
    assert "group_rank=2" in errs[2] and "global_ranks=[8, 9, 10, 11]" in errs[2]


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("hosts")
def test_the_same_command_with_only_pet_node_rank_differing(clean_table: None) -> None:
    recs, _ = _job([(FLAGS, {"PET_NODE_RANK": str(rank)}) for rank in range(3)])
    LOSSES["pet"] = _losses(recs)
    if "flags" in LOSSES:  # the same seed and shape: the same run, however it was placed
        assert LOSSES["pet"] == LOSSES["flags"]


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("hosts")
def test_c10d_the_endpoints_owner_hosts_and_node_ranks_follow_the_joins(
    clean_table: None,
) -> None:
    args = ["--nnodes", "3", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{MASTER}:29500", *RUN]
    recs, errs = _job([(args, {}) for _ in HOSTS])
    losses = _losses(recs, in_order=False)
    assert "serving it here" in errs[0] and all("joining it" in e for e in errs[1:])
    assert all("node rank assigned at the rendezvous of 3" in e for e in errs)
    if "flags" in LOSSES:
        assert losses == LOSSES["flags"]


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("hosts")
def test_a_pytorchjob_started_with_the_operators_variables(clean_table: None) -> None:
    """training-operator v1: Master replica index 0, Worker index i -> node rank i + 1."""
    operator = {"PYTHONUNBUFFERED": "1", "MASTER_PORT": "23456", "PET_MASTER_PORT": "23456",
                "MASTER_ADDR": MASTER, "PET_MASTER_ADDR": MASTER, "WORLD_SIZE": "12",
                "PET_NPROC_PER_NODE": "4", "PET_NNODES": "3"}  # fmt: skip
    per_host = [(OPTIONS, {**operator, "RANK": str(i), "PET_NODE_RANK": str(i)}) for i in range(3)]
    recs, errs = _job(per_host)
    losses = _losses(recs)
    assert f"rendezvous at {MASTER}:23456" in errs[1] and "torchrun PET_* variables" in errs[1]
    if "flags" in LOSSES:
        assert losses == LOSSES["flags"]


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("hosts")
def test_an_indexed_job_with_its_completion_index(clean_table: None) -> None:
    """The Indexed Job's pods: JOB_COMPLETION_INDEX, the headless Service's name of pod 0 given
    as LLMCLUSTER_MASTER_ADDR (here its IP: no DNS on the stand-in hosts)."""
    args = ["--nnodes", "3", "--master-port", "29500", *RUN]
    env = {"LLMCLUSTER_MASTER_ADDR": MASTER}
    recs, errs = _job([(args, {**env, "JOB_COMPLETION_INDEX": str(i)}) for i in range(3)])
    losses = _losses(recs)
    assert "Kubernetes Indexed Job" in errs[1] and "node rank 1 of 3" in errs[1]
    if "flags" in LOSSES:
        assert losses == LOSSES["flags"]


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("hosts")
def test_a_node_with_another_nproc_per_node_is_refused_on_both_sides(clean_table: None) -> None:
    shape = ["--nnodes", "2", "--master-addr", MASTER, *RUN]
    host = _start("node1", [*shape, "--node-rank", "0"])
    wrong = _start("node2", [*shape, "--node-rank", "1", "--nproc-per-node", "2"])
    try:
        _, err = wrong.communicate(timeout=60)  # at once: no retries until the join timeout
        assert wrong.returncode == 2, err
        reason = err.strip().splitlines()[-1]
        assert reason.startswith("llmcluster node: refused by the coordinator"), err
        assert "--nproc-per-node 2 (the coordinator's is 4)" in reason
        host.terminate()  # the job would wait for its second node; end it as a scheduler would
        _, host_err = host.communicate(timeout=60)
        assert "refused a join from 'node2'" in host_err
        assert "--nproc-per-node 2 (the coordinator's is 4)" in host_err
    finally:
        reap(host, wrong)
