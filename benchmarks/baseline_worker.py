"""One rank of a baseline run: mpi4py under ``mpirun`` or torch.distributed (gloo) under
``torchrun``; the same three figures llmcluster's benchmarks measure.

    BASELINE_LAUNCH=<unix time of the launch> mpirun -np 8 python baseline_worker.py mpi
    BASELINE_LAUNCH=... torchrun --nproc-per-node 8 baseline_worker.py gloo

Rank 0 prints one JSON line: ``ready_s`` (launch, as the parent recorded it just before
exec'ing the launcher, -> every rank past its first barrier), ``ready_inproc_s`` (the
earliest rank process's start -> the same moment), the step's barrier + loss allreduce
(sum of 3 doubles, max of 2) median and mean in microseconds, and the 16 MB float32
allreduce busbw (nccl-tests' definition) in place and, for MPI, out of place.
BASELINE_BUSBW=0 skips the bandwidth part (it is only asked for at small N).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

STEP_ITERS = 100
BUSBW_BYTES = 16 << 20
BUSBW_ITERS = 8


def process_start_wall() -> float:
    """This process's start as a Unix time (from /proc: boot time + start ticks)."""
    with open("/proc/self/stat") as src:
        ticks = int(src.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as src:
        boot = next(int(line.split()[1]) for line in src if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    backend = sys.argv[1]
    if backend == "mpi":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        rank, world = comm.Get_rank(), comm.Get_size()
        barrier = comm.Barrier

        def allreduce(buf: np.ndarray, op: str) -> None:
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM if op == "sum" else MPI.MAX)

        def out_of_place(send: np.ndarray, receive: np.ndarray) -> None:
            comm.Allreduce(send, receive, op=MPI.SUM)

        def slowest(value: float) -> float:
            return comm.allreduce(value, op=MPI.MAX)

        def earliest(value: float) -> float:
            return comm.allreduce(value, op=MPI.MIN)

        finish = barrier
    else:
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        barrier = dist.barrier
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}

        def allreduce(buf: np.ndarray, op: str) -> None:
            dist.all_reduce(torch.from_numpy(buf), op=ops[op])

        out_of_place = None  # torch.distributed's allreduce is in place only

        def slowest(value: float) -> float:
            cell = torch.tensor([value], dtype=torch.float64)
            dist.all_reduce(cell, op=dist.ReduceOp.MAX)
            return float(cell[0])

        def earliest(value: float) -> float:
            return -slowest(-value)

        def finish() -> None:  # gloo's threads abort the process if left running at exit
            dist.barrier()
            dist.destroy_process_group()

    started = earliest(process_start_wall())
    barrier()
    ready_at = slowest(time.time())
    ready_s, ready_inproc_s = ready_at - float(os.environ["BASELINE_LAUNCH"]), ready_at - started
    loss, agreed = np.ones(3), np.ones(2)
    for _ in range(5):
        allreduce(loss, "sum")
    times = []
    for _ in range(STEP_ITERS):
        started = time.perf_counter()
        barrier()
        allreduce(loss, "sum")
        allreduce(agreed, "max")
        times.append(time.perf_counter() - started)
    result = {"backend": backend, "ranks": world, "ready_s": ready_s,
              "ready_inproc_s": ready_inproc_s, "step_median_us": statistics.median(times) * 1e6,
              "step_mean_us": statistics.fmean(times) * 1e6}  # fmt: skip
    if os.environ.get("BASELINE_BUSBW", "1") == "1":
        buf = np.ones(BUSBW_BYTES // 4, dtype=np.float32)
        result["busbw_16mb_gbs"] = busbw(lambda: allreduce(buf, "sum"), world, barrier, slowest)
        if out_of_place is not None:
            receive = np.empty_like(buf)
            result["busbw_16mb_oop_gbs"] = busbw(
                lambda: out_of_place(buf, receive), world, barrier, slowest
            )
    if rank == 0:
        print(json.dumps(result), flush=True)
    finish()


def busbw(run: Callable[[], None], world: int, barrier: Callable[[], None],
          slowest: Callable[[float], float]) -> float:  # fmt: skip
    """nccl-tests' bus bandwidth (GB/s) of ``run``, a 16 MB allreduce: the slowest rank's mean."""
    for _ in range(2):
        run()
    barrier()
    started = time.perf_counter()
    for _ in range(BUSBW_ITERS):
        run()
    seconds = slowest((time.perf_counter() - started) / BUSBW_ITERS)
    return BUSBW_BYTES / seconds / 1e9 * 2 * (world - 1) / world


if __name__ == "__main__":
    main()
