"""The start of a run as real tools print it: torchrun's agent, NCCL's init, GPU detection.

Formats follow ``shared/reference/real-logs.md`` sections 2a (torchrun glog lines, the
OMP_NUM_THREADS banner, the elastic agent's launch configs and rendezvous result), 2b
(``host:pid:tid [dev] NCCL INFO`` lines with ring/tree listings and ``Init COMPLETE``)
and 2g (nvidia-smi's GPU listing). Every value comes from the ``run`` record; a node
agent, which has no run record, describes its launch with an ``AgentLaunch``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from llmcluster.render.fmt import glog, tid_of
from llmcluster.sim.devices import gpu_uuid, nccl_bus_id
from llmcluster.wire.records import RunRecord

RUN_PY = "torch/distributed/run.py:803"
API_PY = "torch/distributed/launcher/api.py:194"
AGENT_PY = "torch/distributed/elastic/agent/server/api.py:525"
OMP_TEXT = (
    "Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid "
    "your system being overloaded, please further tune the variable for optimal performance in "
    "your application as needed. "
)
MAX_CHANNEL_LINES = 4  # of 24 on NVLink nodes; big worlds list 2 (each line has every rank)
BIG_WORLD = 64


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
        f"{i}   rdzv_backend     : c10d",
        f"{i}   rdzv_endpoint    : {endpoint}",
        f"{i}   rdzv_configs     : {{'timeout': 900}}",
        f"{i}   max_restarts     : {run.max_restarts}",
        f"{i}   monitor_interval : 0.1",
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


def nccl_prefix(run: RunRecord, rank: int, *, thread: int = 0) -> str:
    """``host:pid:tid [dev]`` for a rank."""
    node, local = divmod(rank, run.nproc_per_node)
    host, pid = host_of(run, node), pid_of(run, rank)
    return f"{host}:{pid}:{tid_of(pid, thread)} [{local}]"


def ring_orders(world: int, nproc: int, channels: int) -> list[list[int]]:
    """Per-channel ring orders: node by node, local order rotated per channel pair."""
    nodes = -(-world // nproc)
    orders = []
    for channel in range(channels):
        order = []
        for node in range(nodes):
            local = list(range(node * nproc, min(world, (node + 1) * nproc)))
            shift = (channel // 2) % max(1, len(local) - 1)
            order += [local[0], *local[1:][shift:], *local[1:][:shift]]
        orders.append(order)
    return orders


def tree_line(world: int, nproc: int, rank: int) -> str:
    """``down0/down1/down2->rank->up``: a chain inside the node, a binary tree of node leaders."""
    node, local = divmod(rank, nproc)
    nodes = -(-world // nproc)
    local_count = min(nproc, world - node * nproc)
    downs = [rank + 1] if local + 1 < local_count else []
    if local == 0:
        downs += [child * nproc for child in (2 * node + 1, 2 * node + 2) if child < nodes]
        up = (node - 1) // 2 * nproc if node else -1
    else:
        up = rank - 1
    downs = ([*downs, -1, -1, -1])[:3]
    return f"{downs[0]}/{downs[1]}/{downs[2]}->{rank}->{up}"


def nccl_init_lines(run: RunRecord, rank: int) -> list[str]:
    """NCCL_DEBUG=INFO bootstrap and communicator init for ``rank`` (rank 0 adds the version)."""
    versions = run.plan.versions
    world, nproc, nnodes = run.world_size, run.nproc_per_node, run.nnodes
    main, init = nccl_prefix(run, rank), nccl_prefix(run, rank, thread=183)
    ip = f"10.{(rank // nproc) // 250}.{(rank // nproc) % 250}.{11 + (rank // nproc) % 200}"
    major, _, minor = versions["cuda"].removeprefix("rocm-").partition(".")
    cuda_driver = f"{int(major) * 1000 + int(minor.split('.')[0] or 0) * 10}"
    comm = "0x" + _hex(f"{run.run_id}{rank}", 8)
    comm_id = "0x" + _hex(run.run_id, 16)
    local = rank % nproc
    bus = nccl_bus_id(local)
    channels = 24 if run.gpu.intra_node_link.startswith("NVLink") else 4
    lines = [
        f"{main} NCCL INFO Bootstrap : Using eth0:{ip}<0>",
        f"{main} NCCL INFO cudaDriverVersion {cuda_driver}",
    ]
    if rank == 0:
        lines.append(f"NCCL version {versions['nccl']}+cuda{versions['cuda']}")
    nics = " ".join(f"[{i}]mlx5_{i}:1/IB" for i in range(min(8, nproc)))
    lines += [
        f"{main} NCCL INFO NET/IB : Using {nics} [RO]; OOB eth0:{ip}<0>",
        f"{main} NCCL INFO Using non-device net plugin version 0",
        f"{main} NCCL INFO Using network IB",
        f"{init} NCCL INFO ncclCommInitRank comm {comm} rank {rank} nranks {world} cudaDev {local} "
        f"nvmlDev {local} busId {bus} commId {comm_id} - Init START",
        f"{init} NCCL INFO comm {comm} rank {rank} nRanks {world} nNodes {nnodes} "
        f"localRanks {min(nproc, world)} localRank {local} MNNVL 0",
    ]
    orders = ring_orders(world, nproc, channels)
    shown = MAX_CHANNEL_LINES if world <= BIG_WORLD else 2
    for channel in range(min(channels, shown)):
        ranks = "".join(f"{r:4d}" for r in orders[channel])
        lines.append(f"{init} NCCL INFO Channel {channel:02d}/{channels:02d} : {ranks}")
    tree = tree_line(world, nproc, rank)
    trees = " ".join(f"[{c}] {tree}" for c in range(min(channels, 2)))
    lines += [
        f"{init} NCCL INFO Trees {trees}",
        f"{init} NCCL INFO P2P Chunksize set to 524288",
    ]
    nxt = orders[0][(orders[0].index(rank) + 1) % world] if world > 1 else rank
    if world > 1:
        same_node = nxt // nproc == rank // nproc
        via = "P2P/CUMEM/read" if same_node else "NET/IB/0/GDRDMA"
        kind = "" if same_node else " [send]"
        hop = f"{rank}[{local}] -> {nxt}[{nxt % nproc}]{kind}"
        lines.append(f"{init} NCCL INFO Channel 00/0 : {hop} via {via}")
    lines += [
        f"{init} NCCL INFO Connected all rings, use ring PXN 0 GDR 1",
        f"{init} NCCL INFO Connected all trees",
        f"{init} NCCL INFO {channels} coll channels, {channels} collnet channels, 0 nvls channels, "
        f"{channels} p2p channels, {max(1, channels // 8)} p2p channels per peer",
        f"{init} NCCL INFO ncclCommInitRank comm {comm} rank {rank} nranks {world} cudaDev {local} "
        f"nvmlDev {local} busId {bus} commId {comm_id} - Init COMPLETE",
    ]
    return [line for line in lines if line]


def gpu_detect_lines(run: RunRecord) -> list[str]:
    """``nvidia-smi -L`` for node 0's GPUs."""
    lines = []
    for index in range(min(run.nproc_per_node, run.world_size)):
        uuid = gpu_uuid(run.seed, 0, index)
        lines.append(f"GPU {index}: {run.gpu.smi_name} (UUID: {uuid})")
    return lines
