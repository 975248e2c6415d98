"""``llmcluster launch``: torchrun's flags, and what a node's launcher says about its place.

The same command on every node of a job, as with torchrun: node rank 0 (static rendezvous),
or with ``c10d`` the node that owns the rendezvous endpoint's address, serves the
coordinator and runs its own node agent; every other node runs an agent that joins it.
The flags here are torchrun's, with torchrun's spellings and meanings; what they leave
unsaid comes from the environment (``launch.environment``). Under ``srun --ntasks-per-node=8``
(one task per rank) each node's task of local id 0 is its launcher as above; the others
hold a rank each for its agent (``worker.slot``). The run's own options
(model, steps, style, logs, ...) are the same as a local run's.
"""

from __future__ import annotations

import argparse
import socket

from llmcluster.cli_flags import Parser, add_metrics_flags, add_remote_flags, add_run_flags
from llmcluster.launch.environment import LaunchEnv, LaunchFlags

TORCHRUN_FLAGS = (
    ("--nnodes", "N, or MIN:MAX taken as MAX: the job has a fixed size, no elastic membership "
     "(default: $PET_NNODES, the scheduler's node count, else 1)"),
    ("--nproc-per-node", "ranks (simulated GPUs) per node, or auto: the scheduler's GPUs on "
     "the node, else 8 (default: $PET_NPROC_PER_NODE, the scheduler's GPUs per node (a Slurm "
     "step of one task per rank: its tasks per node), else 1)"),
    ("--node-rank", "this node's rank, static rendezvous (default: $PET_NODE_RANK, "
     "$JOB_COMPLETION_INDEX, $SLURM_NODEID, else 0); c10d assigns ranks at the rendezvous"),
    ("--master-addr", "where node rank 0 serves the rendezvous (default: $PET_MASTER_ADDR, "
     "$LLMCLUSTER_MASTER_ADDR, the first host of $SLURM_JOB_NODELIST, else 127.0.0.1)"),
    ("--master-port", "its port; records on the next one (default: $PET_MASTER_PORT, "
     "else 29500)"),
    ("--rdzv-endpoint", "HOST:PORT of the rendezvous, instead of --master-addr/--master-port "
     "(default: $PET_RDZV_ENDPOINT)"),
    ("--rdzv-id", "the job's id, shown in the logs (default: $PET_RDZV_ID, $SLURM_JOB_ID, "
     "else none)"),
    ("--rdzv-backend", "static (node rank 0 hosts the coordinator) or c10d (the node owning "
     "the endpoint's address does) (default: $PET_RDZV_BACKEND, else static)"),
    ("--max-restarts", "worker group restarts before the run fails (default: "
     "$PET_MAX_RESTARTS, else 0)"),
    ("--monitor-interval", "how often each node's agent checks its ranks, in seconds, as "
     "torchrun's: a rank's exit is seen at the next check (default: $PET_MONITOR_INTERVAL, "
     "else 0.1)"),
)  # fmt: skip


def build_launch_parser() -> argparse.ArgumentParser:
    """``llmcluster launch``: torchrun's flags plus the run's own options."""
    parser = Parser(
        prog="llmcluster launch",
        description="Start one node of a job, torchrun-style: run the same command on every "
        "node (srun, a Kubernetes Job, compose); node rank 0 also serves the coordinator.",
    )
    add_run_flags(parser, ranks=None)
    parser.set_defaults(max_restarts=None)  # torchrun's: from PET_MAX_RESTARTS, else 0
    for flag, text in TORCHRUN_FLAGS:
        dest = flag[2:].replace("-", "_")
        if dest != "max_restarts":  # already a run option: only its default and help differ
            parser.add_argument(flag, f"--{dest}", dest=dest, default=None, help=text)
    for action in parser._actions:
        if action.dest == "max_restarts":
            action.help = dict(TORCHRUN_FLAGS)["--max-restarts"]
    add_remote_flags(parser)
    add_metrics_flags(parser)
    return parser


def launch_flags(args: argparse.Namespace) -> LaunchFlags:
    """torchrun's flags as given, as text for ``launch.environment`` to check."""
    restarts = None if args.max_restarts is None else str(args.max_restarts)
    return LaunchFlags(
        nnodes=args.nnodes,
        nproc_per_node=args.nproc_per_node,
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=args.master_port,
        rdzv_endpoint=args.rdzv_endpoint,
        rdzv_id=args.rdzv_id,
        rdzv_backend=args.rdzv_backend,
        max_restarts=restarts,
        monitor_interval=args.monitor_interval,
    )


def owns_address(host: str) -> bool:
    """Whether ``host`` names this machine (c10d: the endpoint's owner hosts the store):
    a loopback address, or one a socket can bind here."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, socket.AF_INET)}
    except OSError:
        return False
    for address in addresses:
        if address.startswith("127."):
            return True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, 0))
            except OSError:
                continue
            return True
    return False


def describe(env: LaunchEnv, *, hosts_coordinator: bool) -> str:
    """The launcher's line: the job as its scheduler names it and this node's place in it."""
    job = f"{env.source} job {env.job_id}" if env.job_id != "none" else f"job ({env.source})"
    if env.hostnames:
        shown = ", ".join(env.hostnames[:8]) + (", ..." if len(env.hostnames) > 8 else "")
        job += f" on {env.nodelist} ({shown})"
    rank = "assigned at the rendezvous" if env.node_rank < 0 else str(env.node_rank)
    place = f"node rank {rank} of {env.nnodes}" + (f" ({env.host})" if env.host else "")
    where = "serving it here" if hosts_coordinator else "joining it"
    ranks = f"{env.nproc_per_node} rank(s) per node"
    if env.task:
        ranks += f" (a Slurm task each; this task: global rank {env.task.proc_id}, the agent)"
    return (f"llmcluster launch: {job}: {place}, {ranks}; "
            f"{env.rdzv_backend} rendezvous at {env.master_addr}:{env.master_port}, "
            f"{where}")  # fmt: skip
