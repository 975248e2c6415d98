"""Regexes for NCCL's, torch's and the ErrorHandler's formats, written from the real lines in
``shared/reference/real-logs.md`` and ``observability.md`` (the REAL_* lists below are those lines,
verbatim, so every regex is checked against real output before it judges ours)."""

from __future__ import annotations

import re

PREFIX = re.compile(
    r"^(?P<host>[\w.-]+):(?P<pid>\d+):(?P<tid>\d+) \[(?P<dev>\d+)\] NCCL INFO (?P<msg>.*)$"
)
VERSION = re.compile(
    r"^(NCCL version \d+\.\d+\.\d+\+cuda|RCCL version \d+\.\d+\.\d+\+hip)\d+\.\d+$"
)
POINTER = r"0x[0-9a-f]+"
MESSAGES = {
    "bootstrap": re.compile(r"^Bootstrap ?: Using \w+:[\d.]+<0>$"),
    "driver": re.compile(r"^cudaDriverVersion \d+$"),
    "net_ib": re.compile(r"^NET/IB : Using( \[\d+\]mlx5_\d+:1/IB)+ \[RO\]; OOB \w+:[\d.]+<0>$"),
    "plugin": re.compile(r"^Using non-device net plugin version 0$"),
    "network": re.compile(r"^Using network (IB|Socket)$"),
    "init": re.compile(
        rf"^ncclCommInitRank(Config)? comm (?P<comm>{POINTER}) rank (?P<rank>\d+) nranks (?P<n>\d+)"
        r" cudaDev (?P<dev>\d+) nvmlDev (?P<nvml>\d+) busId (?P<bus>[0-9a-f]+)"
        r" commId 0x[0-9a-f]{16} - Init (?P<state>START|COMPLETE)$"
    ),
    "nvls_support": re.compile(r"^NVLS multicast support is (not )?available on dev \d+$"),
    "comm": re.compile(
        rf"^comm (?P<comm>{POINTER}) rank (?P<rank>\d+) nRanks (?P<n>\d+) nNodes (?P<nodes>\d+)"
        r" localRanks (?P<local_ranks>\d+) localRank (?P<local>\d+) MNNVL 0$"
    ),
    "ring": re.compile(r"^Channel (?P<c>\d{2})/(?P<total>\d{2}) :(?P<members>( +\d+)+)$"),
    "trees": re.compile(r"^Trees(?P<trees>( \[\d+\] -?\d+/-?\d+/-?\d+->\d+->-?\d+)+)( \.\.\.)?$"),
    "nvls_head": re.compile(r"^NVLS Head +\d+:( +\d+)+$"),
    "chunk": re.compile(r"^P2P Chunksize set to \d+$"),
    "hop": re.compile(
        r"^Channel (?P<c>\d{2})(/0)? : (?P<src>\d+)\[\d+\] -> (?P<dst>\d+)\[\d+\]"
        r"( \[(?P<dir>send|receive)\])? via (?P<via>P2P/IPC/read|P2P/CUMEM(/read)?"
        r"|NET/IB/\d+/GDRDMA|NET/Socket/\d+|NET/IBext_v8/\d+|SHM/direct/direct)$"
    ),
    "rings": re.compile(r"^Connected all rings(, use ring PXN \d GDR \d)?$"),
    "trees_done": re.compile(r"^Connected all trees$"),
    "channels": re.compile(
        r"^\d+ coll channels, \d+ collnet channels, (?P<nvls>\d+) nvls channels, \d+ p2p channels,"
        r" \d+ p2p channels per peer$"
    ),
    "timings": re.compile(
        r"^Init timings - ncclCommInitRank(Config)?: rank \d+ nranks \d+ total [\d.]+ \(kernels"
        r" [\d.]+, alloc [\d.]+, bootstrap [\d.]+, allgathers [\d.]+, topo [\d.]+, graphs [\d.]+,"
        r" connections [\d.]+, rest [\d.]+\)$"
    ),
    "coll": re.compile(
        r"^(?P<op_name>AllReduce|AllGather|ReduceScatter|Broadcast|Reduce|Send|Recv): opCount"
        rf" (?P<op_count>[0-9a-f]+) sendbuff (?P<send>{POINTER}|\(nil\)) recvbuff"
        rf" (?P<recv>{POINTER}|\(nil\)) count (?P<count>\d+) datatype (?P<dtype>\d+) op (?P<op>\d+)"
        rf" root \d+ comm (?P<comm>{POINTER}) \[nranks=(?P<n>\d+)\] stream {POINTER}$"
    ),
    "env": re.compile(r"^NCCL_[A-Z0-9_]+ set by environment to .+$"),
}

REAL_INFO = [  # verbatim from the reference files
    "husein-MS-7D31:1463326:1463326 [0] NCCL INFO Bootstrap: Using enp6s0:192.168.68.52<0>",
    "deepseek-v2-5-0-1:626:626 [0] NCCL INFO Bootstrap : Using eth0:10.244.1.107<0>",
    "deepseek-v2-5-0:5969:5969 [0] NCCL INFO cudaDriverVersion 12080",
    "deepseek-v2-5-0:5969:5969 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB [2]mlx5_2:1/IB [3]mlx5_3:1/IB [4]mlx5_4:1/IB [5]mlx5_5:1/IB [6]mlx5_6:1/IB [7]mlx5_7:1/IB [RO]; OOB eth0:10.244.2.62<0>",  # noqa: E501
    "deepseek-v2-5-0:5969:5969 [0] NCCL INFO Using non-device net plugin version 0",
    "deepseek-v2-5-0:5969:5969 [0] NCCL INFO Using network IB",
    "deepseek-v2-5-0:5969:5969 [0] NCCL INFO ncclCommInitRank comm 0x4b8e2080 rank 0 nranks 8 cudaDev 0 nvmlDev 0 busId 100000 commId 0xc13f651b1c793497 - Init START",  # noqa: E501
    "husein-MS-7D31:1463326:1463512 [0] NCCL INFO ncclCommInitRankConfig comm 0x4452af40 rank 0 nranks 2 cudaDev 0 nvmlDev 0 busId 1000 commId 0x798dcd8b6f24bb47 - Init COMPLETE",  # noqa: E501
    "deepseek-v2-5-0:5969:5969 [0] NCCL INFO NVLS multicast support is not available on dev 0",
    "swat1-04:2017630:2017675 [6] NCCL INFO comm 0x8ec0ac0 rank 6 nRanks 16 nNodes 2 localRanks 8 localRank 6 MNNVL 0",  # noqa: E501
    "swat1-04:2017630:2017669 [0] NCCL INFO Channel 00/08 :    0   5   4   7   6   3   2   1   8  13  12  15  14  11  10   9",  # noqa: E501
    "deepseek-v2-5-0:5969:5969 [0] NCCL INFO Channel 00/24 :    0   1   2   3   4   5   6   7",
    "husein-MS-7D31:1463326:1463512 [0] NCCL INFO Trees [0] 1/-1/-1->0->-1 [1] 1/-1/-1->0->-1",
    "swat1-04:2017630:2017670 [1] NCCL INFO Trees [0] 2/-1/-1->1->0 [1] -1/-1/-1->1->0 [2] 2/-1/-1->1->0 ...",  # noqa: E501
    "job-3bb823c0-worker-0:5663:5712 [0] NCCL INFO NVLS Head  4:  4 12",
    "swat1-04:2017630:2017670 [1] NCCL INFO P2P Chunksize set to 131072",
    "deepseek-v2-5-0:5969:5969 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/IPC/read",
    "cluster_name:926:1151 [7] NCCL INFO Channel 03/0 : 15[7] -> 6[6] [send] via NET/Socket/3",
    "hostname-test:987:1260 [7] NCCL INFO Channel 03/0 : 47[7] -> 39[7] [receive] via NET/IBext_v8/2",  # noqa: E501
    "husein-MS-7D31:1463326:1463523 [0] NCCL INFO Channel 00 : 0[0] -> 1[1] via SHM/direct/direct",
    "husein-MS-7D31:1463326:1463523 [0] NCCL INFO Connected all rings, use ring PXN 0 GDR 1",
    "husein-MS-7D31:1463326:1463512 [0] NCCL INFO 2 coll channels, 2 collnet channels, 0 nvls channels, 2 p2p channels, 2 p2p channels per peer",  # noqa: E501
    "husein-MS-7D31:1463326:1463512 [0] NCCL INFO Init timings - ncclCommInitRankConfig: rank 0 nranks 2 total 0.91 (kernels 0.10, alloc 0.00, bootstrap 0.79, allgathers 0.00, topo 0.01, graphs 0.00, connections 0.00, rest 0.00)",  # noqa: E501
    "r24-02-22-23-29-0066-raycluster-lv52c-worker-l4-8-fqztx:615:18953 [2] NCCL INFO AllReduce: opCount 139d sendbuff 0x78d056200000 recvbuff 0x78d056200000 count 7382228 datatype 7 op 0 root 0 comm 0x78cfda045840 [nranks=128] stream 0x78d07125e5e0",  # noqa: E501
    "ubuntu:199574:201142 [1] NCCL INFO Send: opCount 12 sendbuff 0x7f505e93c000 recvbuff (nil) count 2420736 datatype 7 op 0 root 1 comm 0x7f5128002e10 [nranks=2] stream 0x55f1de727ae0",  # noqa: E501
]
REAL_VERSION = [
    "NCCL version 2.21.5+cuda12.4",
    "RCCL version 2.6.4+hip3.5",  # RCCL's VERSION_STRING (ROCm/rccl PR #212, src/init.cc)
]
TRACEBACK_LINE = re.compile(r"^\[rank\d+\]: .*$")  # "[rank6]: Traceback (most recent call last):"
REAL_TRACEBACK = ["[rank6]: Traceback (most recent call last):",
                  "[rank6]: torch.AcceleratorError: CUDA error: misaligned address"]  # fmt: skip

ERROR_FILE_SCHEMA = {  # torch's ErrorHandler.record_exception, errorCode from dump_error_file
    "type": "object",
    "required": ["message"],
    "additionalProperties": False,
    "properties": {
        "message": {
            "type": "object",
            "required": ["message", "extraInfo"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string"},
                "errorCode": {"type": "integer"},
                "extraInfo": {
                    "type": "object",
                    "required": ["py_callstack", "timestamp"],
                    "properties": {
                        "py_callstack": {"type": "string"},
                        "timestamp": {"type": "string", "pattern": r"^\d+$"},
                    },
                },
            },
        }
    },
}


def nccl_kind(line: str) -> tuple[str, re.Match[str]] | None:
    """The message kind of an NCCL line (``version`` for the bare version line), or None."""
    if VERSION.match(line):
        return "version", VERSION.match(line)  # type: ignore[return-value]
    head = PREFIX.match(line)
    if head is None:
        return None
    for kind, pattern in MESSAGES.items():
        found = pattern.match(head["msg"])
        if found:
            return kind, found
    return None
