"""A slot: the task of a Slurm step (one task per rank) that holds one local rank.

It connects to its node's agent (``worker.slots``: the step's private directory; it waits
for the socket to appear, the agent may start later), says which local rank it is
(``SLURM_LOCALID``), and waits. On START it maps the node's shared memory from the passed
memfds, forks the rank exactly as the agent forks its own (``starter.fork_rank``: the same
spec, environment and streams; the rank dies with the slot) and reports its pid; it reports
the rank's exit as it happens, and stops it on STOP. Restarts reuse the slot: each attempt is
a new START. The agent's BYE carries the job's exit code, which the slot exits with; an agent
that goes away (no BYE) or a stop signal (``scancel``'s SIGTERM) makes it kill its rank and
leave at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import socket
import time

from llmcluster.comm.memfd import SharedRegion
from llmcluster.control.link import Beacon
from llmcluster.control.procs import SignalWakeup, reap, terminate_all
from llmcluster.render.wholeline import write_line
from llmcluster.setup import build_setup
from llmcluster.worker.slots import (
    BYE,
    EXITED,
    HELLO,
    SOCKET_NAME,
    START,
    STARTED,
    STOP,
    check_private,
    receive,
    send,
)
from llmcluster.worker.starter import RankLaunch, fork_rank

CONNECT_RETRY_S = 0.1
AGENT_GONE = 1


def connect(path: str, timeout_s: float, stopped: list[int]) -> socket.socket | None:
    """A connection to the agent at ``path`` once it listens (None: timed out or stopped)."""
    deadline = time.monotonic() + timeout_s
    while not stopped and time.monotonic() < deadline:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            check_private(path)
            sock.connect(os.path.join(path, SOCKET_NAME))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            time.sleep(CONNECT_RETRY_S)
        except BaseException:
            sock.close()
            raise
    return None


class Slot:
    """One local rank's task: its agent connection and its rank process of the moment."""

    def __init__(self, path: str, local_rank: int, signals: list[int]) -> None:
        self.path, self.local_rank, self.signals = path, local_rank, signals
        self.child: int | None = None

    def run(self, timeout_s: float) -> int:
        """Serve the agent until BYE (its code), its departure or a stop signal."""
        try:
            conn = connect(self.path, timeout_s, self.signals)
        except OSError as exc:
            write_line(
                f"llmcluster launch: cannot reach this node's agent at {self.path}: "
                f"{exc.strerror or exc}"
            )
            return AGENT_GONE
        if conn is None:
            if self.signals:
                return 128 + self.signals[0]
            write_line(
                f"llmcluster launch: no node agent listened at {self.path} in "
                f"{timeout_s:.0f}s (local rank {self.local_rank})"
            )
            return AGENT_GONE
        wakeup = SignalWakeup()
        try:
            send(conn, HELLO, self.local_rank)
            return self._serve(conn, wakeup.read)
        except OSError:  # the agent's end broke under a send
            return AGENT_GONE
        finally:
            wakeup.close()
            if self.child is not None:
                terminate_all([self.child])
            conn.close()

    def _serve(self, conn: socket.socket, wake: socket.socket) -> int:
        while True:
            readable = select.select([conn, wake], [], [], 0.25)[0]
            with contextlib.suppress(BlockingIOError):  # drained before reaping
                wake.recv(4096)
            if self.signals:
                return 128 + self.signals[0]
            if self.child is not None:
                for pid, code in reap([self.child]).items():
                    self.child = None
                    send(conn, EXITED, (pid, code))
            if conn not in readable:
                continue
            frame = receive(conn)
            if frame is None:
                write_line(
                    f"llmcluster launch: local rank {self.local_rank}: the node agent is "
                    "gone; stopping its rank"
                )
                return AGENT_GONE
            kind, body, fds = frame
            if kind == START and self.child is None:
                launch, sizes = body
                self.child = self._fork(launch, sizes, fds)
                send(conn, STARTED, self.child)
            else:
                for fd in fds:
                    os.close(fd)
            if kind == STOP and self.child is not None:
                pid = self.child
                self.child = None
                send(conn, EXITED, (pid, terminate_all([pid])[pid]))
            elif kind == BYE:
                return int(body)

    @staticmethod
    def _fork(launch: RankLaunch, sizes: dict[str, int], fds: list[int]) -> int:
        """Map the passed memfds, fork the rank over them, let go of them here (the child
        keeps its own mapping)."""
        regions = {name: SharedRegion(fd, size) for (name, size), fd in
                   zip(sizes.items(), fds, strict=True)}  # fmt: skip
        try:
            spec = launch.spec
            if spec.config.bench is None:
                build_setup(spec.config)  # once per slot: every rank forked below inherits it
            shared = {name: region.buffer for name, region in regions.items()}
            beacon = Beacon(shared.pop("beacon")) if "beacon" in shared else None
            spec = dataclasses.replace(spec, beacon=beacon, **shared)
            return fork_rank(dataclasses.replace(launch, spec=spec))
        finally:
            for region in regions.values():
                region.close()
