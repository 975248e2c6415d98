"""Run the tools users would otherwise pick, when they are installed, in the same invocation.

mpirun + mpi4py needs Open MPI and mpi4py (``apt-get install openmpi-bin libopenmpi-dev``,
``pip install mpi4py``); torchrun + gloo needs torch (``pip install torch``). Neither is a
dependency of llmcluster: where one is missing, ``measure`` returns None and the caller
falls back to the figures recorded in shared/reference/perf-anchors.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORKER = Path(__file__).resolve().parent / "baseline_worker.py"
NAMES = {"mpi": "mpirun+mpi4py", "gloo": "torchrun+gloo"}


def available() -> list[str]:
    """The baseline backends this machine can run."""
    found = []
    if shutil.which("mpirun") and importlib.util.find_spec("mpi4py") is not None:
        found.append("mpi")
    if importlib.util.find_spec("torch") is not None:
        found.append("gloo")
    return found


def _command(backend: str, ranks: int) -> list[str]:
    if backend == "mpi":
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        return ["mpirun", *root, "--oversubscribe", "-np", str(ranks), sys.executable,
                str(WORKER), "mpi"]  # fmt: skip
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
            "--master-port", str(_free_port()), str(WORKER), "gloo"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(backend: str, ranks: int, *, busbw: bool) -> dict[str, Any] | None:
    """One baseline run at ``ranks``: ready_s, step latency, optionally 16 MB busbw (a failed
    run, which gloo has now and then on a loaded machine, is tried once more)."""
    return _run_once(backend, ranks, busbw) or _run_once(backend, ranks, busbw)


def _run_once(backend: str, ranks: int, busbw: bool) -> dict[str, Any] | None:
    env = {**os.environ, "BASELINE_LAUNCH": repr(time.time()), "BASELINE_BUSBW": str(int(busbw)),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    try:
        done = subprocess.run(_command(backend, ranks), env=env, capture_output=True, text=True,
                              timeout=900, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"  ({NAMES[backend]} at {ranks} ranks failed: {done.stderr.strip()[-200:]})")
        return None
    return json.loads(lines[-1])
