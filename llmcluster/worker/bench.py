"""``llmcluster bench``: allreduce over the real fabric, reported like nccl-tests.

Same launch path as a training run (coordinator, node agents, forked ranks),
but each rank runs timed allreduces of float32 buffers from ``--min-bytes`` to
``--max-bytes``, registered in the node's shared arena (``shared_buffer``) as nccl-tests
registers its send and receive buffers. Every size is checked against the exact expected
sum (the ``#wrong`` column); time is the slowest rank's mean per operation, algbw =
size / time, busbw = algbw x 2(n-1)/n as nccl-tests defines it.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from llmcluster.comm import Communicator
from llmcluster.config import BenchSettings
from llmcluster.sim.hardware import busbw_factor


def bench_sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    """Message sizes in bytes, as nccl-tests' -b/-e/-f produce them (multiples of 4)."""
    sizes, size = [], max(4, min_bytes - min_bytes % 4)
    while size <= max_bytes:
        sizes.append(size)
        size *= factor
    return sizes


def _timed(comm: Communicator, iters: int, run: Callable[[], np.ndarray]) -> float:
    """The slowest rank's mean seconds per call of ``run`` (all ranks start together)."""
    comm.barrier()
    started = time.perf_counter()
    for _ in range(iters):
        run()
    mean_s = (time.perf_counter() - started) / iters
    return float(comm.allreduce(np.array([mean_s]), "max", algorithm="tree")[0])


def _count_wrong(comm: Communicator, result: np.ndarray, expected: np.float32) -> int:
    """Elements that differ from the exact expected sum, over all ranks."""
    wrong = np.array([np.count_nonzero(result != expected)], dtype=np.int64)
    return int(comm.allreduce(wrong, "sum", algorithm="tree")[0])


def _figures(size: int, seconds: float, wrong: int, n: int) -> dict[str, float]:
    algbw = size / seconds / 1e9
    return {"time_us": seconds * 1e6, "algbw_gbs": algbw, "busbw_gbs": algbw * busbw_factor(n),
            "wrong": wrong}  # fmt: skip


def rank_bench(comm: Communicator, settings: BenchSettings, algorithm: str) -> list[dict[str, Any]]:
    """Run the sweep on this rank; rank 0 returns the rows, the others an empty list.

    Like nccl-tests, each size is timed out-of-place (send buffer -> receive buffer) and
    in-place (the result overwrites the send buffer), both buffers registered (allocated
    in the node's shared arena once, at the largest size), and each variant is validated
    once outside the timing.
    """
    rows: list[dict[str, Any]] = []
    n, rank, iters = comm.world_size, comm.rank, settings.iters
    sizes = bench_sizes(settings.min_bytes, settings.max_bytes, settings.factor)
    largest = max(sizes, default=4) // 4
    sends, receives = comm.shared_buffer(largest), comm.shared_buffer(largest)
    # small integers: every partial sum is exact in float32, so any error is a real bug
    value = np.float32(rank % 7 + 1)
    expected = np.float32(sum(r % 7 + 1 for r in range(n)))
    for size in sizes:
        count = size // 4
        send, receive = sends[:count], receives[:count]
        send.fill(value)
        out_of_place = functools.partial(comm.allreduce, send, algorithm=algorithm, out=receive)
        in_place = functools.partial(comm.allreduce, send, algorithm=algorithm, out=send)
        for _ in range(settings.warmup):
            out_of_place()
        out_of_place_s = _timed(comm, iters, out_of_place)
        receive.fill(0)
        wrong = _count_wrong(comm, out_of_place(), expected)
        in_place_s = _timed(comm, iters, in_place)  # sums of sums: only the timing counts
        send.fill(value)
        wrong_in_place = _count_wrong(comm, in_place(), expected)
        if rank == 0:
            rows.append(
                {
                    "size": size,
                    "count": count,
                    "type": "float",
                    "redop": "sum",
                    **_figures(size, out_of_place_s, wrong, n),
                    "in_place": _figures(size, in_place_s, wrong_in_place, n),
                }
            )
    return rows


def print_bench(
    rows: list[dict[str, Any]], *, world_size: int, algorithm: str, settings: BenchSettings
) -> None:
    """Rank 0's output: the nccl-tests table (or JSON rows)."""
    if settings.json:
        for row in rows:
            print(json.dumps({"world_size": world_size, "algorithm": algorithm, **row}))
    else:
        from llmcluster.render import bench_table_lines

        lines = bench_table_lines(rows, world_size=world_size, algorithm=algorithm,
                                  iters=settings.iters, warmup=settings.warmup)  # fmt: skip
        for line in lines:
            print(line)
    sys.stdout.flush()
