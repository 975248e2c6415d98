"""``llmcluster bench``: allreduce over the real fabric, reported like nccl-tests.

Same launch path as a training run (coordinator, node agents, forked ranks),
but each rank runs timed allreduces of float32 buffers from ``--min-bytes`` to
``--max-bytes``. Every size is checked against the exact expected sum (the
``#wrong`` column); time is the slowest rank's mean per operation, algbw =
size / time, busbw = algbw x 2(n-1)/n as nccl-tests defines it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

import numpy as np

from llmcluster.comm import Communicator
from llmcluster.config import ConfigError, RunConfig
from llmcluster.sim.hardware import busbw_factor


def bench_sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    """Message sizes in bytes, as nccl-tests' -b/-e/-f produce them (multiples of 4)."""
    sizes, size = [], max(4, min_bytes - min_bytes % 4)
    while size <= max_bytes:
        sizes.append(size)
        size *= factor
    return sizes


def rank_bench(
    comm: Communicator, settings: dict[str, Any], algorithm: str
) -> list[dict[str, Any]]:
    """Run the sweep on this rank; rank 0 returns the rows, the others an empty list."""
    rows: list[dict[str, Any]] = []
    n, rank = comm.world_size, comm.rank
    for size in bench_sizes(settings["min_bytes"], settings["max_bytes"], settings["factor"]):
        count = size // 4
        # small integers: every partial sum is exact in float32, so any error is a real bug
        data = np.full(count, rank % 7 + 1, dtype=np.float32)
        expected = np.float32(sum(r % 7 + 1 for r in range(n)))
        for _ in range(settings["warmup"]):
            comm.allreduce(data, "sum", algorithm=algorithm)
        comm.barrier()
        started = time.perf_counter()
        for _ in range(settings["iters"]):
            result = comm.allreduce(data, "sum", algorithm=algorithm)
        mean_s = (time.perf_counter() - started) / settings["iters"]
        wrong = int(np.count_nonzero(result != expected))  # validated outside the timing
        slowest = comm.allreduce(np.array([mean_s]), "max", algorithm="tree")
        wrong_total = comm.allreduce(np.array([wrong], dtype=np.int64), "sum", algorithm="tree")
        if rank == 0:
            seconds = float(slowest[0])
            algbw = size / seconds / 1e9
            rows.append(
                {
                    "size": size,
                    "count": count,
                    "type": "float",
                    "redop": "sum",
                    "time_us": seconds * 1e6,
                    "algbw_gbs": algbw,
                    "busbw_gbs": algbw * busbw_factor(n),
                    "wrong": int(wrong_total[0]),
                }
            )
    return rows


def print_bench(
    rows: list[dict[str, Any]], *, world_size: int, algorithm: str, as_json: bool
) -> None:
    """Rank 0's output: the nccl-tests table (or JSON rows)."""
    if as_json:
        for row in rows:
            print(json.dumps({"world_size": world_size, "algorithm": algorithm, **row}))
    else:
        from llmcluster.render import bench_table_lines

        for line in bench_table_lines(rows, world_size=world_size, algorithm=algorithm):
            print(line)
    sys.stdout.flush()


def run_bench(args: argparse.Namespace) -> int:
    """CLI side of ``llmcluster bench``."""
    from llmcluster.control.limits import check_capacity
    from llmcluster.coordinator.launch import run_local
    from llmcluster.sim.faults import build_setup

    settings = {
        "min_bytes": args.min_bytes,
        "max_bytes": args.max_bytes,
        "factor": args.factor,
        "iters": args.iters,
        "warmup": args.warmup,
        "json": args.json,
    }
    config = RunConfig(
        ranks=args.ranks,
        nproc_per_node=args.nproc_per_node,
        algorithm=args.algorithm,
        seed=args.seed,
        extra={"bench": settings},
    )
    try:
        config.validate()
        if args.factor < 2 or args.iters < 1 or args.warmup < 0:
            raise ConfigError("--factor must be >= 2, --iters >= 1 and --warmup >= 0")
        if not 4 <= args.min_bytes <= args.max_bytes <= 1 << 30:
            raise ConfigError("sizes must satisfy 4 <= --min-bytes <= --max-bytes <= 1G")
        check_capacity(config.ranks, config.nnodes)
    except ConfigError as exc:
        print(f"llmcluster bench: error: {exc}", file=sys.stderr)
        return 2
    plan = build_setup(config).plan
    named = dataclasses.replace(
        config, model=plan.model.name, gpu=plan.gpu.name, dataset=plan.dataset.name
    )
    return run_local(named, plan)
