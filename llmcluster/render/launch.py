"""The start of a run as real tools print it: torchrun's agent and GPU detection (NCCL's init
is ``render.nccl``'s).

Formats follow ``shared/reference/real-logs.md`` sections 2a (torchrun glog lines, the
OMP_NUM_THREADS banner, the elastic agent's launch configs and rendezvous result) and 2g
(nvidia-smi's GPU listing). Every value comes from the ``run`` record; a node
agent, which has no run record, describes its launch with an ``AgentLaunch``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from llmcluster.render.fmt import glog
from llmcluster.sim.devices import gpu_uuid
from llmcluster.wire.records import RunRecord

RUN_PY = "torch/distributed/run.py:803"
API_PY = "torch/distributed/launcher/api.py:194"
AGENT_PY = "torch/distributed/elastic/agent/server/api.py:525"
OMP_TEXT = (
    "Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid "
    "your system being overloaded, please further tune the variable for optimal performance in "
    "your application as needed. "
)


def mkdtemp_name(seed: str) -> str:
    """Eight characters as Python's ``tempfile.mkdtemp`` picks them (``[a-z0-9_]``), seeded."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789_"
    digest = hashlib.sha256(f"log_dir/{seed}".encode()).digest()
    return "".join(alphabet[b % len(alphabet)] for b in digest[:8])


def _hex(seed: str, digits: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:digits]


class Launch(Protocol):
    """What torchrun's own lines need: a ``RunRecord`` or a node agent's ``AgentLaunch``."""

    @property
    def run_id(self) -> str: ...
    @property
    def start_time(self) -> float: ...
    @property
    def agent_pid(self) -> int: ...
    @property
    def nnodes(self) -> int: ...
    @property
    def nproc_per_node(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    @property
    def master_addr(self) -> str: ...
    @property
    def master_port(self) -> int: ...
    @property
    def max_restarts(self) -> int: ...
    @property
    def attempt(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class AgentLaunch:
    """A node agent's view of its launch (it prints torchrun's lines before any record)."""

    run_id: str
    start_time: float
    agent_pid: int
    nnodes: int
    nproc_per_node: int
    world_size: int
    master_addr: str
    master_port: int
    max_restarts: int
    attempt: int
    rdzv_backend: str
    monitor_interval_s: float  # this node's own


def launcher_lines(run: Launch, group_rank: int = 0) -> list[str]:
    """torchrun's banner, launch configs and one node's rendezvous result."""
    t, pid = run.start_time, run.agent_pid
    nnodes, nproc, world = run.nnodes, run.nproc_per_node, run.world_size
    w = glog("W", t, pid, RUN_PY)
    lines = [f"{w} ", f"{w} " + "*" * 41, f"{w} {OMP_TEXT}", f"{w} " + "*" * 41]
    i = glog("I", t + 0.01, pid, API_PY)
    endpoint = f"{run.master_addr}:{run.master_port}"
    lines += [
        f"{i} Starting elastic_operator with launch configs:",
        f"{i}   entrypoint       : pretrain_gpt.py",
        f"{i}   min_nodes        : {nnodes}",
        f"{i}   max_nodes        : {nnodes}",
        f"{i}   nproc_per_node   : {nproc}",
        f"{i}   run_id           : {run.run_id}",
        f"{i}   rdzv_backend     : {run.rdzv_backend}",
        f"{i}   rdzv_endpoint    : {endpoint}",
        f"{i}   rdzv_configs     : {{'timeout': 900}}",
        f"{i}   max_restarts     : {run.max_restarts}",
        f"{i}   monitor_interval : {run.monitor_interval_s}",
        f"{i}   log_dir          : /tmp/torchelastic_{mkdtemp_name(run.run_id)}",
        f"{i}   metrics_cfg      : {{}}",
        f"{i} ",
    ]
    a = glog("I", t + 0.05, pid, AGENT_PY)
    first = group_rank * nproc
    local = list(range(min(nproc, world - first)))
    ranks = [first + r for r in local]
    lines += [
        f"{a} [default] starting workers for entrypoint: python",
        f"{a} [default] Rendezvous'ing worker group",
        f"{a} [default] Rendezvous complete for workers. Result:",
        f"{a}   restart_count={run.attempt}",
        f"{a}   master_addr={run.master_addr}",
        f"{a}   master_port={run.master_port}",
        f"{a}   group_rank={group_rank}",
        f"{a}   group_world_size={nnodes}",
        f"{a}   local_ranks={local}",
        f"{a}   role_ranks={ranks}",
        f"{a}   global_ranks={ranks}",
        f"{a}   role_world_sizes={[world] * len(local)}",
        f"{a}   global_world_sizes={[world] * len(local)}",
        f"{a} ",
        f"{a} [default] Starting worker group",
    ]
    return lines


def finish_lines(run: Launch, t: float, waited_s: float) -> list[str]:
    """What a node's elastic agent prints when its worker group has finished."""
    a = glog("I", t, run.agent_pid, AGENT_PY)
    return [
        f"{a} [default] worker group successfully finished. Waiting 300 seconds for other "
        "agents to finish.",
        f"{a} Local worker group finished (WorkerState.SUCCEEDED). Waiting 300 seconds for "
        "other agents to finish",
        f"{a} Done waiting for other agents. Elapsed: {waited_s} seconds",
    ]


def host_of(run: RunRecord, node: int) -> str:
    """A node's display hostname."""
    return run.hosts[node] if node < len(run.hosts) else f"node{node}"


def pid_of(run: RunRecord, rank: int) -> int:
    """A rank's pid (0 when the run record does not list it)."""
    return run.pids[rank] if rank < len(run.pids) else 0


def gpu_detect_lines(run: RunRecord) -> list[str]:
    """``nvidia-smi -L`` for node 0's GPUs."""
    lines = []
    for index in range(min(run.nproc_per_node, run.world_size)):
        uuid = gpu_uuid(run.seed, 0, index)
        lines.append(f"GPU {index}: {run.gpu.smi_name} (UUID: {uuid})")
    return lines
