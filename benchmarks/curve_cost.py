"""What CurveZMQ costs the training plane between hosts: plain TCP against CURVE.

Forks two node leaders (one rank per node, so every byte crosses the inter-node TCP mesh)
wired by the product's PeerMesh and Communicator, as a run with a token wires them (CURVE
inboxes behind the token's ZAP handler), and times on rank 0 the step's fused allreduce
and a large allreduce (``llmcluster bench``'s busbw). Plain and CURVE runs alternate
``--reps`` times; medians of each and their ratios are printed as JSON lines, the last one
the figure (``"figure": "curve_cost"``).

    python benchmarks/curve_cost.py --reps 3 --bytes 16777216
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time

import numpy as np
import zmq

from llmcluster.comm import Communicator, PeerMesh
from llmcluster.comm.topology import Topology
from llmcluster.control.procs import fork_child, terminate_all
from llmcluster.control.security import CurveKeys, Gatekeeper

WORLD = 2  # two nodes of one rank: the inter-node level alone
KEYS = CurveKeys.from_token("benchmark token")


def _rank(rank: int, ports: list[int], curve: bool, args: argparse.Namespace, out: str) -> int:
    ctx = zmq.Context()
    keys = KEYS if curve else None
    gate = Gatekeeper(ctx, KEYS) if curve else None
    mesh = PeerMesh(ctx, rank=rank, run_id="bench", bind=[f"tcp://127.0.0.1:{ports[rank]}"],
                    node=rank, timeout_s=120, service=lambda: None, curve=keys)  # fmt: skip
    mesh.set_peers([[f"tcp://127.0.0.1:{port}"] for port in ports], list(range(WORLD)))
    comm = Communicator(mesh, rank=rank, topology=Topology(tuple(range(WORLD))))
    comm.barrier()
    step = []
    for _ in range(args.iters + 10):
        started = time.perf_counter()
        comm.allreduce_fused([(np.array([1.0, 2.0, 3.0]), "sum"), (np.array([1.0, 0.0]), "max")])
        step.append(time.perf_counter() - started)
    data = np.ones(args.bytes // 4, dtype=np.float32)
    large = []
    for _ in range(args.large_iters + 2):
        comm.barrier()
        started = time.perf_counter()
        comm.allreduce(data, "sum", algorithm="ring")
        large.append(time.perf_counter() - started)
    comm.barrier()
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"step": step[10:], "large": large[2:]}, f)
    mesh.close()
    if gate is not None:
        gate.stop()
    ctx.term()
    return 0


def _free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def measure(curve: bool, args: argparse.Namespace) -> dict:
    """One plain or CURVE run: median step microseconds and large-allreduce busbw."""
    ports = _free_ports(WORLD)
    with tempfile.TemporaryDirectory(prefix="llmc-curve-") as folder:
        out = f"{folder}/times.json"
        pids = [fork_child(lambda r=r: _rank(r, ports, curve, args, out), name=f"llmc-bench{r}")
                for r in range(WORLD)]  # fmt: skip
        try:
            for pid in pids:
                os.waitpid(pid, 0)
        finally:
            terminate_all(pids)
        with open(out) as f:
            times = json.load(f)
    busbw = args.bytes * 2 * (WORLD - 1) / WORLD / statistics.median(times["large"]) / 1e9
    return {"curve": curve, "step_median_us": statistics.median(times["step"]) * 1e6,
            "busbw_gbs": busbw}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--iters", type=int, default=300, help="steps timed per run")
    parser.add_argument("--bytes", type=int, default=16 << 20, help="large allreduce size")
    parser.add_argument("--large-iters", type=int, default=10)
    args = parser.parse_args()
    rows: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.reps):
        for curve in (False, True):  # alternated: the machine's noise hits both alike
            row = measure(curve, args)
            rows[curve].append(row)
            print(json.dumps(row), flush=True)
    step = {c: statistics.median(r["step_median_us"] for r in rows[c]) for c in rows}
    busbw = {c: statistics.median(r["busbw_gbs"] for r in rows[c]) for c in rows}
    print(json.dumps({
        "figure": "curve_cost", "ranks": WORLD, "nodes": WORLD, "bytes": args.bytes,
        "step_plain_us": step[False], "step_curve_us": step[True],
        "step_ratio": step[True] / step[False],
        "busbw_plain_gbs": busbw[False], "busbw_curve_gbs": busbw[True],
        "busbw_ratio": busbw[True] / busbw[False],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
