"""Up-front capacity checks: can this machine hold the requested number of ranks?

Each rank is a process with three threads (main, ZeroMQ I/O, ZeroMQ reaper) and
a handful of descriptors; the coordinator holds one connection per rank and
agent. Soft limits are raised toward the hard limits where that is allowed;
otherwise the run is refused with one line naming the limit.
"""

from __future__ import annotations

import resource

from llmcluster.config import ConfigError

THREADS_PER_PROCESS = 3
FDS_PER_RANK_AT_COORDINATOR = 2
FD_RESERVE = 256
MIB_PER_RANK = 9  # memory a rank takes from MemAvailable (PSS ~6.5 MiB, page tables, stacks,
# socket buffers: 7.8 MiB measured at 1024 ranks), with a little headroom


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _threads_in_use() -> int:
    text = _read_loadavg()
    try:
        return int(text.split()[3].split("/")[1])
    except (IndexError, ValueError):
        return 0


def _read_loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read()
    except OSError:
        return ""


def _mem_available_mib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        return None
    return None


def raise_soft_limit(kind: int, wanted: int) -> int:
    """Raise a soft rlimit toward ``wanted`` (capped by the hard limit); return the new soft one."""
    soft, hard = resource.getrlimit(kind)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted if soft == resource.RLIM_INFINITY else soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(kind, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def check_capacity(ranks: int, nnodes: int) -> None:
    """Raise ConfigError if ``ranks`` processes cannot run here; raise soft limits if needed."""
    processes = ranks + nnodes + 1
    fds_needed = FD_RESERVE + FDS_PER_RANK_AT_COORDINATOR * processes
    fds = raise_soft_limit(resource.RLIMIT_NOFILE, fds_needed)
    if fds < fds_needed:
        raise ConfigError(
            f"--ranks {ranks} needs about {fds_needed} open files in the coordinator, "
            f"but the limit is {fds} (raise it with ulimit -n)"
        )
    threads_needed = THREADS_PER_PROCESS * processes
    in_use = _threads_in_use()
    nproc = raise_soft_limit(resource.RLIMIT_NPROC, threads_needed + in_use)
    for name, limit in (
        ("the process limit (ulimit -u)", nproc),
        ("kernel.threads-max", _read_int("/proc/sys/kernel/threads-max")),
        ("kernel.pid_max", _read_int("/proc/sys/kernel/pid_max")),
    ):
        if (
            limit is not None
            and limit != resource.RLIM_INFINITY
            and threads_needed + in_use > limit
        ):
            raise ConfigError(
                f"--ranks {ranks} needs about {threads_needed} more threads, but {name} is "
                f"{limit} with {in_use} in use"
            )
    available = _mem_available_mib()
    if available is not None and ranks * MIB_PER_RANK > available:
        raise ConfigError(
            f"--ranks {ranks} needs about {ranks * MIB_PER_RANK} MiB of memory, "
            f"only {available} MiB are available"
        )
