"""Stand-in hosts for the multi-host tests, and reading several of their processes at once.

``tests/netns/netns-hosts.sh`` (the team's tool) builds network namespaces on a private
bridge: coord 10.213.0.10, node1 .11, node2 .12, node3 .13. ``stand_in_hosts`` makes them for
a test module (skipping, saying why, without root or iproute2) under a prefix of its own, and
removes them after. ``communicate_all`` reads every process's pipes at the same time: one
read after the other would leave a host's pipe unread until the one before it exits, and a
rank writing to a full pipe stalls its whole job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NETNS = Path(__file__).parent / "netns" / "netns-hosts.sh"
LLMC = [sys.executable, "-m", "llmcluster"]
SCHEDULER_VARS = ("PET_", "SLURM_", "SLURMD_", "JOB_COMPLETION_INDEX", "LLMCLUSTER_MASTER_ADDR")


@dataclass(frozen=True)
class StandIns:
    """One module's stand-in hosts: its namespaces' prefix and the environment its commands get."""

    prefix: str
    extra: Mapping[str, str] = field(default_factory=dict)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment now (it carries the current test's LLMCLUSTER_TEST_MARK), without any
        scheduler's variables, plus this module's and ``extra``."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_VARS)}
        return {**base, "NETNS_PREFIX": self.prefix, **self.extra, **(extra or {})}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``netns-hosts.sh ARGS`` (up, down, cut, heal, ...)."""
        return subprocess.run(["bash", str(NETNS), *args], env=self.env(), capture_output=True,
                              text=True, timeout=120, check=check)  # fmt: skip

    def start(
        self,
        host: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        stdout: int = subprocess.PIPE,
    ) -> subprocess.Popen[str]:
        """``llmcluster ARGS`` on ``host``, its output piped (read it with ``communicate_all``)."""
        return subprocess.Popen(["bash", str(NETNS), "exec", host, *LLMC, *args],
                                env=self.env(env), stdout=stdout, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)  # fmt: skip


@contextmanager
def stand_in_hosts(hosts: StandIns, nodes: int) -> Iterator[StandIns]:
    """The coord namespace and ``nodes`` node namespaces for the block's duration."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("stand-in hosts need root and iproute2 (network namespaces)")
    made = hosts.run("up", str(nodes), check=False)
    if made.returncode != 0:
        hosts.run("down", check=False)
        pytest.skip(f"network namespaces unavailable: {made.stderr.strip()[:200]}")
    try:
        yield hosts
    finally:
        hosts.run("down", check=False)


def communicate_all(
    procs: Sequence[subprocess.Popen[str]], timeout: float
) -> list[tuple[str, str]]:
    """Every process's (stdout, stderr), all read at once until each exits (or ``timeout``:
    ``subprocess.TimeoutExpired``, the processes left to ``reap``)."""
    outputs: list[tuple[str, str] | BaseException | None] = [None] * len(procs)

    def read(index: int) -> None:
        try:
            outputs[index] = procs[index].communicate(timeout=timeout)
        except BaseException as exc:  # handed to the caller below
            outputs[index] = exc

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(procs))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout + 5)
    for out in outputs:
        if isinstance(out, BaseException):
            raise out
        if out is None:
            raise subprocess.TimeoutExpired("communicate_all", timeout)
    return [out for out in outputs if isinstance(out, tuple)]


def reap(*procs: subprocess.Popen[str]) -> None:
    """Kill whichever of ``procs`` still runs, and wait for each."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
