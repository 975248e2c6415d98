"""The floor of a large start: a world of bare forked Python ranks, shaped as llmcluster's.

A parent that has imported what a rank imports (numpy, pyzmq, msgpack) forks one agent per
node, each agent forks its node's ranks, and every rank does the least a rank must: its own
ZeroMQ context, a PULL inbox bound on IPC, a DEALER to the parent, a msgpack join, then it
waits for its book and answers ready. No simulation, no records, no display. Printed as one
JSON line: the seconds from this script's exec to the last ready, and each rank's minor
page faults and CPU-seconds at that point, so ``start_cost.py`` can set llmcluster's start
beside what forking that many Python processes costs here at all.

    python benchmarks/bare_world.py --ranks 1024
"""

from __future__ import annotations

import time

EXEC_TIME = time.time()  # before the imports: they are part of the start

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

import msgpack  # noqa: E402
import numpy  # noqa: E402, F401  (a rank's import, inherited)
import zmq  # noqa: E402

PER_NODE = 8
WAIT_MS = 120_000  # a rank gives up on a parent that never answers
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _rank(rank: int, run_dir: str) -> None:
    _die_with_parent()
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.PULL)
    inbox.bind(f"ipc://{run_dir}/r{rank}")
    link = ctx.socket(zmq.DEALER)
    link.setsockopt(zmq.RCVTIMEO, WAIT_MS)
    link.connect(f"ipc://{run_dir}/coordinator")
    link.send(msgpack.packb({"rank": rank, "pid": os.getpid()}))
    link.recv()  # the book
    usage = resource.getrusage(resource.RUSAGE_SELF)
    link.send(msgpack.packb([usage.ru_minflt, usage.ru_utime + usage.ru_stime]))
    link.recv()  # exit


def _agent(node: int, ranks: int, run_dir: str) -> None:
    _die_with_parent()
    pids = []
    for rank in range(node * PER_NODE, min((node + 1) * PER_NODE, ranks)):
        pid = os.fork()
        if pid == 0:
            try:
                _rank(rank, run_dir)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)


def bare_world(ranks: int) -> dict[str, float]:
    """Start ``ranks`` bare ranks, wait for every ready, let them go; the figures."""
    run_dir = tempfile.mkdtemp(prefix="bare-world-")
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.RCVTIMEO, WAIT_MS)
    router.bind(f"ipc://{run_dir}/coordinator")
    agents = []
    try:
        gc.freeze()
        for node in range((ranks + PER_NODE - 1) // PER_NODE):
            pid = os.fork()
            if pid == 0:
                try:
                    _agent(node, ranks, run_dir)
                finally:
                    os._exit(0)
            agents.append(pid)
        joined = [router.recv_multipart()[0] for _ in range(ranks)]
        for identity in joined:
            router.send_multipart([identity, b"book"])
        usage = [msgpack.unpackb(router.recv_multipart()[1]) for _ in range(ranks)]
        ready_s = time.time() - EXEC_TIME
        for identity in joined:
            router.send_multipart([identity, b"exit"])
    finally:
        for pid in agents:
            os.waitpid(pid, 0)
        router.close(linger=0)
        ctx.term()
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "ranks": ranks,
        "ready_s": ready_s,
        "faults_per_rank": statistics.median(faults for faults, _ in usage),
        "cpu_ms_per_rank": statistics.median(cpu for _, cpu in usage) * 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=1024)
    args = parser.parse_args()
    print(json.dumps({"figure": "bare_world", **bare_world(args.ranks)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
