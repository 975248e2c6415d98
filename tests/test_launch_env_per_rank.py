"""The launch environment of a Slurm step of one task per rank (``srun --ntasks-per-node=8``):
each task's place from exactly what srun set, and the steps whose ranks cannot be mapped as
torchrun maps them refused in one line."""

from __future__ import annotations

import pytest

from llmcluster.config import ConfigError
from llmcluster.launch.environment import SLURM_SOURCE, LaunchFlags, SlurmTask, launch_env


def srun_task(procid: int, *, nodes: int = 2, per_node: int = 8, job: int = 1) -> dict[str, str]:
    """What Slurm 22.05's srun sets in one task of ``sbatch --nodes=2 --ntasks-per-node=8
    --gpus-per-node=8`` + ``srun ...`` (captured from a task of this repository's test cluster,
    ``tests/slurm_cluster.py``; the per-task values follow srun's block distribution)."""
    node, local = divmod(procid, per_node)
    tasks = nodes * per_node
    gtids = ",".join(str(node * per_node + i) for i in range(per_node))
    return {
        "SLURMD_NODENAME": f"node{node + 1}", "SLURM_CLUSTER_NAME": "llmctest",
        "SLURM_CPUS_ON_NODE": str(per_node), "SLURM_DISTRIBUTION": "block",
        "SLURM_GPUS_ON_NODE": "8", "SLURM_GPUS_PER_NODE": "8", "SLURM_GTIDS": gtids,
        "SLURM_JOBID": str(job), "SLURM_JOB_CPUS_PER_NODE": f"{per_node}(x{nodes})",
        "SLURM_JOB_GPUS": "0,1,2,3,4,5,6,7", "SLURM_JOB_ID": str(job),
        "SLURM_JOB_NAME": "train-per-rank.sbatch", "SLURM_JOB_NODELIST": f"node[1-{nodes}]",
        "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_JOB_PARTITION": "gpu",
        "SLURM_LAUNCH_NODE_IPADDR": "10.213.0.11", "SLURM_LOCALID": str(local),
        "SLURM_NNODES": str(nodes), "SLURM_NODEID": str(node),
        "SLURM_NODELIST": f"node[1-{nodes}]", "SLURM_NODE_ALIASES": "(null)",
        "SLURM_NPROCS": str(tasks), "SLURM_NTASKS": str(tasks),
        "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_PROCID": str(procid),
        "SLURM_SRUN_COMM_HOST": "10.213.0.11", "SLURM_STEPID": "0",
        "SLURM_STEP_GPUS": "0,1,2,3,4,5,6,7", "SLURM_STEP_ID": "0",
        "SLURM_STEP_NODELIST": f"node[1-{nodes}]", "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nodes})",
        "SLURM_SUBMIT_HOST": "coord", "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})",
        "SLURM_TOPOLOGY_ADDR": f"node{node + 1}",
    }  # fmt: skip


@pytest.mark.parametrize("procid", range(16))
def test_every_task_of_the_step_takes_srun_s_place(procid: int) -> None:
    env = launch_env(LaunchFlags(), srun_task(procid))
    node, local = divmod(procid, 8)
    assert env.task == SlurmTask(local_id=local, proc_id=procid, tasks_per_node=8, step="1.0")
    assert (env.node_rank, env.nnodes, env.nproc_per_node) == (node, 2, 8)
    assert env.node_rank * env.nproc_per_node + env.task.local_id == procid  # torchrun's RANK
    assert env.master_addr == "node1" and env.hostnames == ("node1", "node2")
    assert env.host == f"node{node + 1}" and env.job_id == "1" and env.source == SLURM_SOURCE
    assert env.origin("nproc_per_node") == "SLURM_STEP_TASKS_PER_NODE"


def test_the_tasks_per_node_win_over_the_gpus_and_fall_back_to_the_job_s() -> None:
    environ = {**srun_task(3, per_node=4), "SLURM_GPUS_ON_NODE": "8"}
    assert launch_env(LaunchFlags(), environ).nproc_per_node == 4
    del environ["SLURM_STEP_TASKS_PER_NODE"]
    env = launch_env(LaunchFlags(), environ)
    assert env.nproc_per_node == 4 and env.origin("nproc_per_node") == "SLURM_TASKS_PER_NODE"


def test_a_step_of_one_task_per_node_and_the_batch_step_have_no_task() -> None:
    per_node = {**srun_task(1, per_node=1), "SLURM_PROCID": "1"}
    env = launch_env(LaunchFlags(), per_node)
    assert env.task is None and env.nproc_per_node == 8  # its GPUs: the agent starts 8 ranks
    batch = {k: v for k, v in srun_task(0).items() if not k.startswith("SLURM_STEP")}
    assert launch_env(LaunchFlags(), batch).task is None


def test_flags_that_agree_with_srun_are_accepted() -> None:
    flags = LaunchFlags(nproc_per_node="8", node_rank="1", nnodes="2", rdzv_backend="static")
    assert launch_env(flags, srun_task(12)).task == SlurmTask(4, 12, 8, "1.0")


def cyclic(procid: int) -> dict[str, str]:
    """srun -m cyclic, 2 nodes x 2 tasks: ranks dealt round robin (0, 2 on node 0)."""
    node, local = procid % 2, procid // 2
    return {**srun_task(0, per_node=2), "SLURM_DISTRIBUTION": "cyclic",
            "SLURM_NODEID": str(node), "SLURM_LOCALID": str(local), "SLURM_PROCID": str(procid),
            "SLURM_GTIDS": f"{node},{node + 2}"}  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "environ", "message"),
    [
        *[(LaunchFlags(), cyclic(p), "not torchrun's rank order; use srun --distribution=block")
          for p in range(4)],  # every task says so, the first one too (its node's SLURM_GTIDS)
        (LaunchFlags(), {**srun_task(0), "SLURM_STEP_TASKS_PER_NODE": "8,4",
                         "SLURM_STEP_NUM_TASKS": "12"},
         "runs 8,4 tasks per node (SLURM_STEP_TASKS_PER_NODE): a rank per task needs the same"),
        (LaunchFlags(), {**srun_task(0), "SLURM_STEP_NUM_TASKS": "12"},
         "SLURM_STEP_TASKS_PER_NODE '8(x2)' does not add up to SLURM_STEP_NUM_TASKS=12"),
        (LaunchFlags(), {**srun_task(0), "SLURM_STEP_TASKS_PER_NODE": "8(x)"},
         "SLURM_STEP_TASKS_PER_NODE must be task counts like 8(x2)"),
        (LaunchFlags(), {**srun_task(9), "SLURM_LOCALID": "x"},
         "SLURM_LOCALID must be a whole number"),
        (LaunchFlags(), {**srun_task(9), "SLURM_PROCID": "3"}, "this one SLURM_PROCID=3"),
        (LaunchFlags(nproc_per_node="4"), srun_task(9),
         "--nproc-per-node 4 does not match this Slurm step's 8 tasks per node"),
        (LaunchFlags(node_rank="0"), srun_task(9),
         "--node-rank 0 does not match this Slurm task's SLURM_PROCID=9"),
        (LaunchFlags(rdzv_backend="c10d"), srun_task(9),
         "--rdzv-backend: a Slurm step of one task per rank takes its ranks from SLURM_PROCID"),
    ],
)  # fmt: skip
def test_steps_llmcluster_cannot_map_are_refused_in_one_line(
    flags: LaunchFlags, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        launch_env(flags, environ)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
