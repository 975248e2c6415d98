"""The launch environment mapping (flags > PET_* > Kubernetes > Slurm > torchrun's defaults)
and the Slurm hostlist parser, table-driven with the forms real schedulers set."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from llmcluster.config import ConfigError
from llmcluster.launch.environment import (
    K8S_SOURCE,
    PET_SOURCE,
    SLURM_SOURCE,
    LaunchFlags,
    launch_env,
)
from llmcluster.launch.hostlist import HostlistError, expand, expand_hostnames

# (expression, hosts): the forms of shared/reference/schedulers.md 1.2, as scontrol expands them
HOSTLISTS = [
    ("gpu[01-04,07]", "gpu01 gpu02 gpu03 gpu04 gpu07"),
    ("a[1-2],b3", "a1 a2 b3"),
    ("node[8-11]", "node8 node9 node10 node11"),
    ("n[009-011]", "n009 n010 n011"),
    ("rack[1-2]-gpu[1-2]", "rack1-gpu1 rack1-gpu2 rack2-gpu1 rack2-gpu2"),
    ("gpu[01-04,07],login1", "gpu01 gpu02 gpu03 gpu04 gpu07 login1"),
    ("n[1-2]-ib,a[001-003]", "n1-ib n2-ib a001 a002 a003"),
    ("node[1-2]", "node1 node2"),
    ("login1", "login1"),
    ("tux2,tux1,tux2", "tux2 tux1 tux2"),  # written order, not sorted or unique
    ("gpu[7]", "gpu7"),
    ("n[0]", "n0"),
]
SCONTROL_REFUSES = {"n[1-2]-ib,a[001-003]"}  # Slurm 22.05: no suffix after a bracket
BAD_HOSTLISTS = ["", "gpu[01-", "gpu01]", "gpu[3-1]", "gpu[a-b]", "a,,b", "n[[1]]", "n[0-99999]",
                 "a b"]  # fmt: skip

# what the Job controller / training-operator / Slurm set (schedulers.md 1.1, 3.1, 3.3)
PYTORCHJOB_WORKER = {
    "PYTHONUNBUFFERED": "1", "MASTER_PORT": "23456", "PET_MASTER_PORT": "23456",
    "MASTER_ADDR": "train-master-0", "PET_MASTER_ADDR": "train-master-0", "WORLD_SIZE": "24",
    "RANK": "2", "PET_NODE_RANK": "2", "PET_NPROC_PER_NODE": "8", "PET_NNODES": "3",
}  # fmt: skip
TRAINER_V2 = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "auto", "PET_NODE_RANK": "1",
              "PET_MASTER_ADDR": "tj-trainer-node-0-0.tj", "PET_MASTER_PORT": "29500",
              "JOB_COMPLETION_INDEX": "1"}  # fmt: skip
INDEXED_JOB = {"JOB_COMPLETION_INDEX": "2", "LLMCLUSTER_MASTER_ADDR": "train-0.train-svc"}
SLURM_NODE2 = {
    "SLURM_JOB_ID": "1", "SLURM_JOBID": "1", "SLURM_JOB_NODELIST": "node[1-2]",
    "SLURM_NODELIST": "node[1-2]", "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2",
    "SLURM_NODEID": "1", "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2",
    "SLURM_NTASKS_PER_NODE": "1", "SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_GPUS_ON_NODE": "8",
    "SLURM_GPUS_PER_NODE": "8", "SLURMD_NODENAME": "node2", "SLURM_STEP_ID": "0",
}  # fmt: skip


@pytest.mark.parametrize(("expression", "hosts"), HOSTLISTS)
def test_hostlists_expand_as_scontrol_does(expression: str, hosts: str) -> None:
    assert expand(expression) == tuple(hosts.split())


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="no scontrol here to compare with")
@pytest.mark.parametrize(("expression", "hosts"), HOSTLISTS)
def test_the_parser_agrees_with_this_machines_scontrol(
    expression: str, hosts: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scontrol needs a slurm.conf (no daemon): a private one. Slurm 22.05 refuses a suffix
    after the brackets (``n[1-2]-ib``: "Invalid hostlist" on stderr, nothing on stdout, exit
    0); there the parser's expansion is what ``expand_hostnames`` falls back to."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost\nAuthType=auth/none\n"
                    "NodeName=localhost\nPartitionName=p Nodes=localhost\n")  # fmt: skip
    monkeypatch.setenv("SLURM_CONF", str(conf))
    real = subprocess.run(["scontrol", "show", "hostnames", expression], capture_output=True,
                          text=True, timeout=10, check=True).stdout.split()  # fmt: skip
    if expression in SCONTROL_REFUSES:
        assert real == [] and expand_hostnames(expression) == expand(expression)
    else:
        assert tuple(real) == expand(expression) == expand_hostnames(expression)


@pytest.mark.parametrize("expression", BAD_HOSTLISTS)
def test_bad_hostlists_are_one_line_errors(expression: str) -> None:
    with pytest.raises(HostlistError) as error:
        expand(expression)
    assert "\n" not in str(error.value) and str(error.value)


def test_defaults_are_torchruns() -> None:
    env = launch_env(LaunchFlags(), {})
    assert (env.nnodes, env.nproc_per_node, env.node_rank, env.master_addr, env.master_port,
            env.rdzv_backend, env.max_restarts, env.job_id) == (
        1, 1, 0, "127.0.0.1", 29500, "static", 0, "none")  # fmt: skip
    assert env.source == "defaults" and env.origin("nnodes") == "default"


def test_flags_say_everything_with_torchruns_meanings() -> None:
    flags = LaunchFlags(nnodes="2:4", nproc_per_node="8", node_rank="3", master_addr="10.0.0.1",
                        master_port="29600", rdzv_id="job7", max_restarts="2",
                        monitor_interval="5")  # fmt: skip
    env = launch_env(flags, {})
    assert (env.nnodes, env.nproc_per_node, env.node_rank, env.master_addr, env.master_port,
            env.job_id, env.max_restarts, env.monitor_interval_s) == (
        4, 8, 3, "10.0.0.1", 29600, "job7", 2, 5.0)  # fmt: skip
    assert env.source == "command line" and env.origin("node_rank") == "--node-rank"


def test_a_pytorchjob_worker_is_placed_by_its_pet_variables() -> None:
    env = launch_env(LaunchFlags(), PYTORCHJOB_WORKER)
    assert (env.nnodes, env.nproc_per_node, env.node_rank, env.master_addr, env.master_port) == (
        3,
        8,
        2,
        "train-master-0",
        23456,
    )
    assert env.source == PET_SOURCE and env.origin("master_addr") == "PET_MASTER_ADDR"


def test_a_flag_wins_over_its_pet_variable() -> None:
    env = launch_env(LaunchFlags(node_rank="0", nproc_per_node="4"), PYTORCHJOB_WORKER)
    assert (env.node_rank, env.nproc_per_node, env.nnodes) == (0, 4, 3)
    assert env.origin("node_rank") == "--node-rank" and env.origin("nnodes") == "PET_NNODES"


def test_trainer_v2_pet_wins_over_the_completion_index_and_auto_is_eight() -> None:
    env = launch_env(LaunchFlags(), {**TRAINER_V2, "JOB_COMPLETION_INDEX": "0"})
    assert (env.node_rank, env.nproc_per_node, env.master_addr) == (1, 8, "tj-trainer-node-0-0.tj")


def test_an_indexed_job_pod_takes_its_index_as_node_rank() -> None:
    env = launch_env(LaunchFlags(nnodes="3", nproc_per_node="8"), INDEXED_JOB)
    assert (env.node_rank, env.master_addr, env.nnodes) == (2, "train-0.train-svc", 3)
    assert env.source == K8S_SOURCE and env.origin("node_rank") == "JOB_COMPLETION_INDEX"
    assert env.origin("master_addr") == "LLMCLUSTER_MASTER_ADDR"


def test_a_slurm_task_is_placed_by_its_job() -> None:
    env = launch_env(LaunchFlags(), SLURM_NODE2)
    assert (env.job_id, env.node_rank, env.nnodes, env.nproc_per_node, env.master_addr) == (
        "1",
        1,
        2,
        8,
        "node1",
    )
    assert (env.hostnames, env.nodelist, env.host, env.source) == (
        ("node1", "node2"),
        "node[1-2]",
        "node2",
        SLURM_SOURCE,
    )
    assert env.origin("nproc_per_node") == "SLURM_GPUS_ON_NODE"


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        ({"SLURM_GPUS_PER_NODE": "h100:8"}, 8),
        ({"SLURM_GPUS_PER_NODE": "4"}, 4),
        ({"SLURM_GPUS_PER_NODE": "a100:2,v100:2"}, 4),
        ({"SLURM_GPUS_PER_NODE": "gpu:h100:2"}, 2),
        ({"SLURM_NTASKS_PER_NODE": "2"}, 2),
        ({"SLURM_GPUS_ON_NODE": "6", "SLURM_GPUS_PER_NODE": "8"}, 6),
        ({}, 1),
    ],
)
def test_slurm_gpus_per_node(gpus: dict[str, str], expected: int) -> None:
    environ = {"SLURM_JOB_ID": "9", "SLURM_NNODES": "4", "SLURM_NODELIST": "gpu[01-04,07]",
               "SLURM_NODEID": "3", **gpus}  # fmt: skip
    env = launch_env(LaunchFlags(), environ)
    assert env.nproc_per_node == expected and env.nnodes == 4 and env.node_rank == 3
    assert env.hostnames == ("gpu01", "gpu02", "gpu03", "gpu04", "gpu07")
    assert env.master_addr == "gpu01"
    assert launch_env(LaunchFlags(nproc_per_node="auto"), environ).nproc_per_node == (
        expected if gpus else 8
    )


def test_flags_and_pet_win_over_slurm() -> None:
    env = launch_env(LaunchFlags(master_addr="10.1.1.1"), {**SLURM_NODE2, "PET_NNODES": "2"})
    assert env.master_addr == "10.1.1.1" and env.origin("nnodes") == "PET_NNODES"
    assert env.source == PET_SOURCE and env.hostnames == ("node1", "node2")


def test_the_batch_step_has_no_node_id_and_takes_node_rank_zero() -> None:
    environ = {k: v for k, v in SLURM_NODE2.items() if k not in ("SLURM_NODEID", "SLURMD_NODENAME")}
    env = launch_env(LaunchFlags(), environ)
    assert env.node_rank == 0 and env.origin("node_rank") == "default"


def test_the_rendezvous_endpoint_names_the_master_as_in_torchrun() -> None:
    flags = LaunchFlags(rdzv_endpoint="head:29400", master_addr="ignored", master_port="1")
    env = launch_env(flags, {})
    assert (env.master_addr, env.master_port) == ("head", 29400)
    assert env.origin("master_addr") == "--rdzv-endpoint"
    env = launch_env(LaunchFlags(), {"PET_RDZV_ENDPOINT": "[::1]:29500"})
    assert (env.master_addr, env.master_port) == ("[::1]", 29500)


def test_c10d_assigns_node_ranks_at_the_rendezvous() -> None:
    env = launch_env(LaunchFlags(rdzv_backend="c10d", nnodes="3", node_rank="2",
                                 rdzv_endpoint="h:29400"), {})  # fmt: skip
    assert env.node_rank == -1 and env.rdzv_backend == "c10d"


@pytest.mark.parametrize(
    ("flags", "environ", "message"),
    [
        (LaunchFlags(nnodes="0"), {}, "--nnodes must be between 1 and 512"),
        (LaunchFlags(nnodes="2:1"), {}, "--nnodes must be between 1 and 512 (MIN <= MAX)"),
        (LaunchFlags(nnodes="two"), {}, "--nnodes must be N or MIN:MAX"),
        (LaunchFlags(nnodes="2", node_rank="3"), {}, "--node-rank 3 is out of range for 2 node"),
        (LaunchFlags(rdzv_endpoint="nohostport"), {}, "--rdzv-endpoint must be HOST:PORT"),
        (LaunchFlags(rdzv_endpoint="h:0"), {}, "--rdzv-endpoint must be a whole number 1-65534"),
        (LaunchFlags(rdzv_backend="etcd"), {}, "--rdzv-backend must be static or c10d"),
        (LaunchFlags(master_port="65535"), {}, "--master-port must be a whole number 1-65534"),
        (LaunchFlags(master_addr="a b"), {}, "--master-addr must be a host name"),
        (LaunchFlags(nproc_per_node="65"), {}, "--nproc-per-node must be a whole number 1-64"),
        (LaunchFlags(max_restarts="-1"), {}, "--max-restarts must be a whole number 0-100"),
        (LaunchFlags(monitor_interval="nan"), {}, "--monitor-interval must be seconds"),
        (LaunchFlags(rdzv_id="a/b"), {}, "--rdzv-id must be 1-128 letters"),
        (LaunchFlags(), {"PET_NNODES": "x"}, "PET_NNODES must be N or MIN:MAX"),
        (LaunchFlags(), {"PET_RDZV_BACKEND": "etcd-v2"}, "PET_RDZV_BACKEND must be static or"),
        (LaunchFlags(), {"JOB_COMPLETION_INDEX": "1"}, "JOB_COMPLETION_INDEX 1 is out of range"),
        (LaunchFlags(), {"SLURM_JOB_ID": "3", "SLURM_GPUS_PER_NODE": "h100:x"},
         "SLURM_GPUS_PER_NODE must be a GPU count"),
        (LaunchFlags(), {"SLURM_JOB_ID": "3", "SLURM_JOB_NODELIST": "gpu[1-"},
         "SLURM_JOB_NODELIST: unmatched '['"),
        (LaunchFlags(), {"SLURM_JOB_ID": "3", "SLURM_NNODES": "2", "SLURM_NODEID": "2"},
         "SLURM_NODEID 2 is out of range for 2 node(s)"),
    ],
)  # fmt: skip
def test_bad_values_name_the_flag_or_variable(
    flags: LaunchFlags, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        launch_env(flags, environ)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_a_scheduler_command_is_asked_through_the_seam() -> None:
    asked: list[str] = []

    def fake_scontrol(expression: str) -> tuple[str, ...]:
        asked.append(expression)
        return ("alpha", "beta")

    env = launch_env(LaunchFlags(), {"SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "x[1-2]",
                                     "SLURM_NNODES": "2"}, fake_scontrol)  # fmt: skip
    assert asked == ["x[1-2]"] and env.master_addr == "alpha" and env.hostnames == ("alpha", "beta")
