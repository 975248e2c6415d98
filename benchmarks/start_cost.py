"""What a large start costs, and what it is made of: page faults at this machine's page cost.

At the ready record of one ``ranks``-rank run (``--speed 1e6``) it reads every process of the
run (found by parentage) and sums, by kind (coordinator, node agents, ranks), the minor page
faults and the CPU-seconds used so far. Then, in the same invocation, it measures what as
much fresh memory as those faults amount to (one page each) costs to fault in here: one byte
written per page of new anonymous memory, GiB after GiB. A VM backs its guest's memory
lazily, so a page costs more the more fresh memory is touched at once (printed: the first
GiB's cost and the last's). ``faults x mean cost`` estimates the CPU the faults alone take:
the part of the start spent copying pages (copy-on-write of the interpreter's objects a rank
uses). Beside it, a bare world of the same shape (``bare_world.py``: forked Python ranks that
only make a ZeroMQ context, bind, join and wait for a book) gives the floor of forking that
many Python processes on this machine at all.

    python benchmarks/start_cost.py --ranks 1024
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import mmap
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import figures  # (a sibling script)

PAGE = mmap.PAGESIZE
KINDS = ("coordinator", "agents", "ranks")


@dataclass(frozen=True)
class PageCost:
    """Microseconds to fault in one fresh anonymous page, over ``touch_gib`` GiB at once."""

    mean_us: float
    first_gib_us: float
    last_gib_us: float  # after (touch_gib - 1) GiB of fresh memory are already touched
    touch_gib: int


@dataclass(frozen=True)
class StartCost:
    """One run at its ready record: per kind of process, how many, faults and CPU-seconds."""

    ready_s: float  # from exec
    processes: dict[str, int]
    faults: dict[str, int]
    cpu_s: dict[str, float]


def page_cost(touch_gib: int) -> PageCost:
    """Touch ``touch_gib`` GiB of fresh memory a page at a time, timing each GiB (the memory
    is unmapped at the end)."""
    gib = 1 << 30
    region = mmap.mmap(-1, touch_gib * gib)
    pages = np.frombuffer(region, dtype=np.uint8)
    try:
        costs = []
        for index in range(touch_gib):
            started = time.perf_counter()
            pages[index * gib : (index + 1) * gib : PAGE] = 1
            costs.append((time.perf_counter() - started) / (gib // PAGE) * 1e6)
    finally:
        del pages
        region.close()
    return PageCost(sum(costs) / len(costs), costs[0], costs[-1], touch_gib)


@dataclass(frozen=True)
class BareWorld:
    """``bare_world.py``'s start of the same number of ranks, from its exec."""

    ready_s: float
    faults_per_rank: float
    cpu_ms_per_rank: float


def bare_world(ranks: int) -> BareWorld:
    """Run ``bare_world.py`` with ``ranks`` ranks (a minute at most) and read its figures."""
    script = Path(__file__).resolve().parent / "bare_world.py"
    done = subprocess.run([sys.executable, str(script), "--ranks", str(ranks)],
                          capture_output=True, text=True, timeout=180, check=True)  # fmt: skip
    figures_line = json.loads(done.stdout.splitlines()[-1])
    return BareWorld(figures_line["ready_s"], figures_line["faults_per_rank"],
                     figures_line["cpu_ms_per_rank"])  # fmt: skip


def touch_gib_for(run: StartCost) -> int:
    """As many GiB as the run's faults amount to (a page each), within half the memory
    available now."""
    wanted = math.ceil(sum(run.faults.values()) * PAGE / (1 << 30))
    available = os.sysconf("SC_AVPHYS_PAGES") * PAGE // (2 << 30)
    return max(1, min(wanted, available))


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used, all its threads: the scheduler's own count, in ns
    (``/proc/PID/task/*/schedstat``). ``/proc/PID/stat`` counts whole clock ticks (10 ms),
    truncated: a rank's few milliseconds read as 0 (at a 64-rank ready its ranks summed to
    0.01 s there against 0.33 s here)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as src:
            total += int(src.read().split()[0])
    return total / 1e9


def _kind(pid: int, root: int) -> str:
    if pid == root:
        return "coordinator"
    with open(f"/proc/{pid}/comm") as src:
        return "agents" if src.read().startswith("llmc-agent") else "ranks"


def start_cost(ranks: int) -> StartCost:
    """One run of ``ranks`` ranks, read at its ready record, then interrupted. The run is
    stopped (SIGSTOP to its process group) while it is read: walking a thousand processes
    takes long enough for ranks building their training to add seconds of CPU."""
    launched = time.time()
    proc = figures.running(["--ranks", str(ranks), "--steps", "100000", "--speed", "1e6",
                            "--max-restarts", "0"], own_group=True)  # fmt: skip
    assert proc.stdout is not None
    processes = dict.fromkeys(KINDS, 0)
    faults = dict.fromkeys(KINDS, 0)
    cpu = dict.fromkeys(KINDS, 0.0)
    try:
        for line in proc.stdout:
            if json.loads(line)["type"] == "ready":
                break
        else:
            raise RuntimeError(f"a {ranks}-rank run ended without a ready record")
        ready_s = time.time() - launched
        os.killpg(proc.pid, signal.SIGSTOP)
        for pid in figures.run_pids(proc.pid):
            try:
                kind = _kind(pid, proc.pid)
                with open(f"/proc/{pid}/stat") as src:
                    fields = src.read().rsplit(")", 1)[1].split()
                used = cpu_seconds(pid)
            except OSError:  # gone since the listing (a helper process)
                continue
            processes[kind] += 1
            faults[kind] += int(fields[7])
            cpu[kind] += used
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
        figures.stop(proc)
    return StartCost(ready_s, processes, faults, cpu)


def summary(run: StartCost, cost: PageCost, bare: BareWorld, cores: int) -> str:
    """The printed account: faults and CPU by kind, the faults' share at this page cost, and
    the bare world's start beside it."""
    total_faults, total_cpu = sum(run.faults.values()), sum(run.cpu_s.values())
    ranks = max(run.processes["ranks"], 1)
    faults_cpu = total_faults * cost.mean_us / 1e6
    parts = ", ".join(f"{kind} {run.cpu_s[kind]:.1f}" for kind in KINDS)
    return (
        f"start of {run.processes['ranks']} ranks: ready {run.ready_s:.1f} s from exec, "
        f"{total_cpu:.1f} CPU-s used by then ({parts}); {total_faults} page faults "
        f"({run.faults['ranks'] / ranks:.0f} per rank, {run.faults['agents']} in the agents). "
        f"Faulting in as much fresh memory ({cost.touch_gib} GiB) costs {cost.mean_us:.1f} us a "
        f"page here ({cost.first_gib_us:.1f} in the first GiB, {cost.last_gib_us:.1f} in the "
        f"last): ~{faults_cpu:.1f} CPU-s for the faults alone, {faults_cpu / cores:.1f} s on "
        f"{cores} cores. A bare world of as many forked Python ranks (ZeroMQ context, bind, "
        f"join, book; bare_world.py): ready {bare.ready_s:.1f} s from exec, "
        f"{bare.faults_per_rank:.0f} faults and {bare.cpu_ms_per_rank:.1f} ms of CPU a rank "
        f"({run.ready_s / bare.ready_s:.1f}x the bare world's start)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=1024)
    args = parser.parse_args()
    if args.ranks < 1:
        parser.error("--ranks must be at least 1")
    run = start_cost(args.ranks)
    cost = page_cost(touch_gib_for(run))
    bare = bare_world(args.ranks)
    print(summary(run, cost, bare, os.cpu_count() or 1))
    print(json.dumps({"figure": "start_cost", **asdict(run), **asdict(cost), "bare": asdict(bare)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
