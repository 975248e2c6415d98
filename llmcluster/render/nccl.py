"""NCCL's lines as one rank prints them: communicator init and one line per collective.

Formats from ``shared/reference/observability.md`` section 2 and ``real-logs.md`` 2b:
``host:pid:tid [cudaDev] NCCL INFO <msg>``, the bare ``NCCL version`` line of rank 0, every
channel's ring (members right-aligned in width 4) and tree (``c0/c1/c2->rank->parent``), the
transport of each ring hop (``P2P/IPC`` or ``P2P/CUMEM`` inside a node, ``SHM`` over PCIe,
``NET/IB/<hca>/GDRDMA`` between nodes), NVLS heads on NVSwitch (Hopper and later) nodes, and
``enqueue.cc``'s COLL line. Every value comes from what the rank itself knows (``NcclRank``);
each line carries the NCCL subsystems it belongs to, for ``NCCL_DEBUG_SUBSYS``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from llmcluster.render.launch import host_of, pid_of
from llmcluster.sim.devices import nccl_bus_id
from llmcluster.wire.records import RunRecord

NVLS_LINKS = ("NVLink4", "NVLink5")  # NVLink SHARP needs Hopper's NVSwitch or later
DATATYPES = {"int64": 4, "float16": 6, "float32": 7, "float64": 8, "bfloat16": 9}  # nccl.h
REDOPS = {"sum": 0, "prod": 1, "max": 2, "min": 3, "mean": 4}  # ncclAvg is 4
INIT_THREAD, CONNECT_THREAD = 183, 191  # tid offsets of NCCL's init and connect threads


@dataclass(frozen=True)
class NcclRank:
    """What one rank knows when its communicator comes up."""

    rank: int
    local_rank: int
    node: int
    host: str
    pid: int
    world_size: int
    nproc_per_node: int
    nnodes: int
    intra_node_link: str  # the GPU's link (NVLink4, PCIe5, Infinity Fabric ...)
    nccl: str  # NCCL version, e.g. 2.21.5
    cuda: str  # CUDA version, e.g. 12.4
    comm_seed: str  # the run and attempt: shared by every rank's commId


@dataclass(frozen=True)
class NcclLine:
    """One ``INFO`` line: its subsystems, the thread that prints it and the message."""

    flags: tuple[str, ...]  # NCCL_DEBUG_SUBSYS names, e.g. ("INIT", "GRAPH")
    tid: int
    text: str


def _hex(seed: str, digits: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:digits]


def pointer(seed: str, base: int = 0x7F0000000000, align: int = 0x200) -> str:
    """A plausible aligned user-space pointer (``%p``), stable for ``seed``."""
    offset = int(_hex(seed, 10), 16) % (1 << 36)
    return f"{base + offset - offset % align:#x}"


def comm_pointer(me: NcclRank) -> str:
    """This rank's ``ncclComm_t`` (a heap pointer, 16-byte aligned)."""
    return pointer(f"{me.comm_seed}/comm/{me.rank}", base=0x55D000000000, align=0x10)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def version_line(me: NcclRank) -> str:
    """Rank 0's bare version line, no host:pid:tid prefix: NCCL's ``VERSION_STRING``
    (``NCCL version 2.21.5+cuda12.4``), or RCCL's on ROCm (``RCCL version 2.20.5+hip6.2``)."""
    if me.cuda.startswith("rocm-"):
        hip = ".".join(me.cuda.removeprefix("rocm-").split(".")[:2])
        return f"RCCL version {me.nccl}+hip{hip}"
    return f"NCCL version {me.nccl}+cuda{me.cuda}"


def channel_count(me: NcclRank) -> int:
    """Collective channels NCCL opens: 24 on NVLink/NVSwitch nodes, 2 on a PCIe host, 4 with
    NICs between PCIe hosts."""
    if me.intra_node_link.startswith(("NVLink", "Infinity")):
        return 24
    return 4 if me.nnodes > 1 else 2


def _transport(me: NcclRank, peer: int, channel: int, direction: str) -> str:
    """How this rank reaches ``peer`` on ``channel``."""
    if peer // me.nproc_per_node != me.node:
        hca = (me.local_rank + channel) % min(8, me.nproc_per_node)
        return f"[{direction}] via NET/IB/{hca}/GDRDMA"
    if not me.intra_node_link.startswith(("NVLink", "Infinity")):
        return "via SHM/direct/direct"
    cumem = _version_tuple(me.nccl) >= (2, 23)
    return "via P2P/CUMEM/read" if cumem else "via P2P/IPC/read"


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


def init_lines(me: NcclRank, *, bootstrap_s: float, total_s: float) -> list[NcclLine]:
    """``ncclCommInitRank`` from bootstrap to ``Init COMPLETE`` for this rank (the version line
    is separate: it belongs to the VERSION level)."""
    world, nproc, local = me.world_size, me.nproc_per_node, me.local_rank
    new = _version_tuple(me.nccl) >= (2, 23)
    main = me.pid
    init = me.pid + INIT_THREAD if new else me.pid
    connect = me.pid + CONNECT_THREAD if new else me.pid
    ip = f"10.{me.node // 250}.{me.node % 250}.{11 + me.node % 200}"
    major, _, minor = me.cuda.removeprefix("rocm-").partition(".")
    driver = int(major) * 1000 + int(minor.split(".")[0] or 0) * 10
    comm, comm_id = comm_pointer(me), "0x" + _hex(me.comm_seed, 16)
    bus = nccl_bus_id(local)
    channels = channel_count(me)
    local_count = min(nproc, world - me.node * nproc)
    nics = " ".join(f"[{i}]mlx5_{i}:1/IB" for i in range(min(8, nproc)))
    start = f"rank {me.rank} nranks {world} cudaDev {local} nvmlDev {local} busId {bus}"
    init_flags, graph, net = ("INIT",), ("INIT", "GRAPH"), ("INIT", "NET")
    lines = [
        NcclLine(("INIT", "BOOTSTRAP"), main, f"Bootstrap : Using eth0:{ip}<0>"),
        NcclLine(init_flags, main, f"cudaDriverVersion {driver}"),
        NcclLine(net, init, f"NET/IB : Using {nics} [RO]; OOB eth0:{ip}<0>"),
        NcclLine(net, init, "Using non-device net plugin version 0"),
        NcclLine(net, init, "Using network IB"),
        NcclLine(
            init_flags, init, f"ncclCommInitRank comm {comm} {start} commId {comm_id} - Init START"
        ),
    ]
    nvls = me.intra_node_link in NVLS_LINKS and local_count > 1
    lines.append(
        NcclLine(
            init_flags,
            init,
            f"NVLS multicast support is {'' if nvls else 'not '}available on dev {local}",
        )
    )
    lines.append(
        NcclLine(
            init_flags,
            init,
            f"comm {comm} rank {me.rank} nRanks {world} nNodes "
            f"{me.nnodes} localRanks {local_count} localRank {local} MNNVL 0",
        )
    )
    orders = ring_orders(world, nproc, channels)
    for channel in range(channels):
        members = "".join(f"{r:4d}" for r in orders[channel])
        lines.append(NcclLine(graph, init, f"Channel {channel:02d}/{channels:02d} : {members}"))
    tree = tree_line(world, nproc, me.rank)
    trees = " ".join(f"[{c}] {tree}" for c in range(channels))
    lines.append(NcclLine(graph, init, f"Trees {trees}"))
    if nvls:
        for head in range(local_count):
            heads = "".join(f"{node * nproc + head:3d}" for node in range(me.nnodes))
            lines.append(NcclLine((*graph, "NVLS"), init, f"NVLS Head {head:2d}:{heads}"))
    lines.append(NcclLine(init_flags, init, "P2P Chunksize set to 524288"))
    p2p = ("INIT", "P2P")
    if world > 1:
        for channel in range(channels):
            order = orders[channel]
            at = order.index(me.rank)
            nxt, prev = order[(at + 1) % world], order[(at - 1) % world]
            if prev // nproc != me.node:
                via = _transport(me, prev, channel, "receive")
                hop = f"{prev}[{prev % nproc}] -> {me.rank}[{local}]"
                lines.append(NcclLine(p2p, connect, f"Channel {channel:02d}/0 : {hop} {via}"))
            via = _transport(me, nxt, channel, "send")
            hop = f"{me.rank}[{local}] -> {nxt}[{nxt % nproc}]"
            lines.append(NcclLine(p2p, connect, f"Channel {channel:02d}/0 : {hop} {via}"))
    nvls_channels = 16 if nvls else 0
    lines += [
        NcclLine(init_flags, connect, "Connected all rings"),
        NcclLine(init_flags, connect, "Connected all trees"),
        NcclLine(
            init_flags,
            init,
            f"{channels} coll channels, {channels} collnet channels, "
            f"{nvls_channels} nvls channels, {channels} p2p channels, "
            f"{max(1, channels // 8)} p2p channels per peer",
        ),
        NcclLine(
            init_flags,
            init,
            f"ncclCommInitRank comm {comm} {start} commId {comm_id} - Init COMPLETE",
        ),
    ]
    if new:  # 2.23+ reports where the init time went
        rest = max(0.0, total_s - bootstrap_s)
        lines.append(
            NcclLine(
                init_flags,
                init,
                f"Init timings - ncclCommInitRank: rank {me.rank} nranks "
                f"{world} total {total_s:.2f} (kernels 0.00, alloc 0.00, bootstrap "
                f"{bootstrap_s:.2f}, allgathers 0.00, topo 0.00, graphs 0.00, connections "
                f"{rest:.2f}, rest 0.00)",
            )
        )
    return lines


def coll_line(
    me: NcclRank, *, name: str, op_count: int, count: int, datatype: str, op: str, buffer: str
) -> str:
    """``enqueue.cc``'s ``INFO(NCCL_COLL, ...)`` for one collective (in-place: send == recv)."""
    buff = pointer(f"{me.comm_seed}/{me.rank}/{buffer}")
    stream = pointer(f"{me.comm_seed}/{me.rank}/stream", base=0x55E000000000, align=0x10)
    return (
        f"{name}: opCount {op_count:x} sendbuff {buff} recvbuff {buff} count {count} "
        f"datatype {DATATYPES[datatype]} op {REDOPS[op]} root 0 comm {comm_pointer(me)} "
        f"[nranks={me.world_size}] stream {stream}"
    )


def info_line(me: NcclRank, tid: int, text: str) -> str:
    """One whole ``NCCL INFO`` line of this rank's thread ``tid``."""
    return f"{prefix(me, tid)}NCCL INFO {text}"


def prefix(me: NcclRank, tid: int) -> str:
    """``host:pid:tid [cudaDev] `` (the host cut at its first dot, as NCCL does)."""
    host = me.host.split(".")[0].replace("%", "-").replace("/", "-")
    return f"{host}:{me.pid}:{tid} [{me.local_rank}] "


def run_rank(run: RunRecord, rank: int) -> NcclRank:
    """What ``rank`` of the run knows at its communicator's init, from the run record."""
    node, local = divmod(rank, run.nproc_per_node)
    return NcclRank(
        rank=rank,
        local_rank=local,
        node=node,
        host=host_of(run, node),
        pid=pid_of(run, rank),
        world_size=run.world_size,
        nproc_per_node=run.nproc_per_node,
        nnodes=run.nnodes,
        intra_node_link=run.gpu.intra_node_link,
        nccl=run.plan.versions["nccl"],
        cuda=run.plan.versions["cuda"],
        comm_seed=f"{run.run_id}/{run.attempt}",
    )


def merged_init_lines(run: RunRecord, rank: int) -> list[str]:
    """``rank``'s NCCL_DEBUG=INFO init as the merged log shows it (rank 0 adds the version):
    the same lines the rank writes to its own stream, with init timings taken from the plan
    rather than the wall clock, so that one seed gives one log."""
    me = run_rank(run, rank)
    bootstrap_s = 0.05 + 0.0004 * run.world_size
    timings = {"bootstrap_s": bootstrap_s, "total_s": bootstrap_s + 0.25 + 0.002 * run.world_size}
    lines = [info_line(me, line.tid, line.text) for line in init_lines(me, **timings)]
    if rank == 0:  # after bootstrap and the driver version, where NCCL prints it
        lines.insert(2, version_line(me))
    return lines
