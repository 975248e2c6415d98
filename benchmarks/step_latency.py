"""Per-step collective latency: what every training step costs in real communication.

Forks N rank processes wired by the same PeerMesh and Communicator the product uses,
and times, on rank 0, the two allreduces of a step (loss sum, step-time/stop max)
back to back. Prints the median and mean in microseconds.

    python benchmarks/step_latency.py --ranks 64 --iters 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import zmq

from llmcluster.comm import Communicator, PeerMesh
from llmcluster.comm.board import NodeBoard, create_board
from llmcluster.comm.topology import Topology
from llmcluster.control.procs import fork_child, terminate_all


def _rank(
    rank: int, world: int, nproc: int, folder: str, iters: int, algorithm: str, boards: dict
) -> int:
    ctx = zmq.Context()
    mesh = PeerMesh(ctx, rank=rank, run_id="bench", bind=[f"ipc://{folder}/r{rank}"],
                    timeout_s=120, service=lambda: None)  # fmt: skip
    mesh.set_peers(
        [[f"ipc://{folder}/r{r}"] for r in range(world)], [r // nproc for r in range(world)]
    )
    topology = Topology.uniform(world, nproc)
    local = topology.node_members(rank // nproc)
    region = boards.get(rank // nproc)
    board = NodeBoard(region, len(local)) if region is not None else None
    comm = Communicator(mesh, rank=rank, topology=topology, board=board)
    comm.barrier()
    times = []
    for _ in range(iters + 10):
        started = time.perf_counter()
        if algorithm == "fused":  # what the training step uses
            comm.allreduce_fused(
                [(np.array([1.0, 2.0, 3.0]), "sum"), (np.array([1.0, 0.0]), "max")]
            )
        else:
            comm.allreduce(np.array([1.0, 2.0, 3.0]), "sum", algorithm=algorithm)
            comm.allreduce(np.array([1.0, 0.0]), "max", algorithm=algorithm)
        times.append(time.perf_counter() - started)
    comm.barrier()
    if rank == 0:
        with open(f"{folder}/times.json", "w") as out:
            json.dump(times[10:], out)
    mesh.close()
    ctx.term()
    return 0


def measure(
    world: int, iters: int = 200, algorithm: str = "fused", nproc: int = 8, board: bool = True
) -> dict:
    """Median and mean microseconds per step's collectives at ``world`` ranks (with the node
    board, as a run has it, unless ``board`` is False)."""
    nodes = range(-(-world // nproc))
    boards = {n: create_board(len(range(n * nproc, min(world, (n + 1) * nproc)))) for n in nodes}
    if not board:
        boards = {}
    with tempfile.TemporaryDirectory(prefix="llmc-bench-") as folder:
        pids = [
            fork_child(
                lambda r=r: _rank(r, world, nproc, folder, iters, algorithm, boards),
                name=f"llmc-bench{r}",
            )
            for r in range(world)
        ]
        try:
            for pid in pids:
                os.waitpid(pid, 0)
        finally:
            terminate_all(pids)
        with open(f"{folder}/times.json") as src:
            times = json.load(src)
    us = [t * 1e6 for t in times]
    return {"ranks": world, "iters": iters, "algorithm": algorithm, "board": bool(boards),
            "median_us": statistics.median(us), "mean_us": statistics.fmean(us)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--no-board", action="store_true", help="in-node level over sockets")
    parser.add_argument(
        "--algorithm", default="fused", help="fused (the step's), tree, ring, hierarchical"
    )
    args = parser.parse_args()
    for world in args.ranks:
        print(json.dumps(measure(world, args.iters, args.algorithm, board=not args.no_board)))


if __name__ == "__main__":
    main()
