"""A Slurm step of one task per rank: the node agent's side of its slots.

``srun --ntasks-per-node=8 llmcluster launch``: on each node the task of local id 0 runs the
node agent (on node 0 under the coordinator, as in the one-task-per-node pattern); every other
task is a *slot* (``worker.slot``) that connects to it over a unix socket in a private
directory of the step (``step_dir``: mode 0700, the job and step ids in its name, under
``$TMPDIR``), says which local rank it holds, and waits. For each attempt the agent forks local
rank 0 itself and asks every slot to fork its rank (``SlotStarter.start``): the same
``RankLaunch`` a local rank gets, with the node's shared memory (memfds, ``comm.memfd``) passed
as descriptors (``SCM_RIGHTS``). A slot reports its rank's pid and exit code; one that
disconnects loses its rank (reported as killed), and an attempt that needs a lost slot raises
``SlotLost``: the node cannot start its group (its agent leaves, a lost node to the run).

The frames are pickles on a ``SOCK_SEQPACKET`` socket (one frame per message): both ends are
the same program, in a directory only this user can enter, and every peer's uid is checked
(``SO_PEERCRED``).
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import os
import pickle
import select
import signal
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from llmcluster.comm.memfd import SharedRegion
from llmcluster.control.procs import reap, terminate_all
from llmcluster.worker.starter import RankLaunch, fork_rank

SOCKET_NAME = "agent.sock"
MAX_FRAME = 1 << 20
MAX_FDS = 4
REPLY_S = 10.0  # a slot answers a START or STOP within this
HELLO, START, STARTED, EXITED, STOP, BYE = "hello", "start", "started", "exited", "stop", "bye"
LOST_CODE = -signal.SIGKILL  # a rank whose slot vanished: as if killed


class SlotLost(Exception):
    """A slot this attempt needs is gone (its task exited or was killed)."""


def step_dir(step: str, node: int) -> str:
    """The private directory of a step's node: ``$TMPDIR/llmc-step-<job>.<step>-n<node>``."""
    return os.path.join(tempfile.gettempdir(), f"llmc-step-{step}-n{node}")


def check_private(path: str) -> None:
    """OSError unless ``path`` is a real directory of ours that nobody else may enter."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{path} is not a private directory of this user")


def send(sock: socket.socket, kind: str, body: Any = None, fds: Iterable[int] = ()) -> None:
    """One frame (``fds`` ride along as SCM_RIGHTS)."""
    data = pickle.dumps((kind, body), protocol=pickle.HIGHEST_PROTOCOL)
    fd_list = list(fds)
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fd_list))]
    sock.sendmsg([data], ancillary if fd_list else [])


def receive(sock: socket.socket) -> tuple[str, Any, list[int]] | None:
    """The next frame and the descriptors it carried; None when the peer has gone."""
    try:
        data, ancillary, _, _ = sock.recvmsg(MAX_FRAME, socket.CMSG_SPACE(MAX_FDS * 4))
    except (ConnectionResetError, BrokenPipeError):
        return None
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    kind, body = pickle.loads(data)
    return kind, body, list(fds)


def peer_is_us(sock: socket.socket) -> bool:
    """True if the process at the other end runs as this user."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1] == os.getuid()


class SlotStarter:
    """The agent's end: a listener in the step's directory and one connection per slot."""

    def __init__(self, path: str, local_ranks: int) -> None:
        self.path, self.local_ranks = path, local_ranks
        self.address = os.path.join(path, SOCKET_NAME)
        self.listener: socket.socket | None = None
        self.slots: dict[int, socket.socket] = {}  # local rank -> its slot's connection
        self.owner: dict[int, int] = {}  # a rank's pid -> the local rank of its slot
        self.regions: dict[int, SharedRegion] = {}  # id(buffer) -> the memfd behind it

    # ---- the node's memory -----------------------------------------------------------------
    def allocate(self, size: int) -> Any:
        region = SharedRegion.create("llmc-node", size)
        self.regions[id(region.buffer)] = region
        return region.buffer

    def _shared(self, launch: RankLaunch) -> tuple[dict[str, Any], list[int]]:
        """The rank's shared buffers as (field -> size) and their memfds, in that order."""
        spec = launch.spec
        beacon = spec.beacon.region if spec.beacon is not None else None
        buffers = {"shm": spec.shm, "board": spec.board, "beacon": beacon}
        regions = {name: self.regions[id(buf)] for name, buf in buffers.items() if buf is not None}
        return {name: r.size for name, r in regions.items()}, [r.fd for r in regions.values()]

    # ---- the slots -------------------------------------------------------------------------
    def listen(self) -> None:
        """Make the step's directory (or take it, if a slot's check found it ours) and listen
        in it; OSError if it is not private or the socket cannot be bound."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.path, 0o700)
        check_private(self.path)
        with contextlib.suppress(FileNotFoundError):  # a killed agent's (a step id is unique)
            os.unlink(self.address)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.address)
        self.listener.listen(self.local_ranks)

    def ready(self, timeout_s: float, stopped: Callable[[], bool]) -> str | None:
        """Listen, then accept every slot's HELLO; None when all are in, else why not (one
        line; "" if stopped)."""
        try:
            if self.listener is None:
                self.listen()
        except OSError as exc:
            return f"cannot serve this node's slots at {self.address}: {exc.strerror or exc}"
        assert self.listener is not None
        deadline = time.monotonic() + timeout_s
        while len(self.slots) < self.local_ranks - 1:
            if stopped():
                return ""
            if time.monotonic() > deadline:
                missing = sorted(set(range(1, self.local_ranks)) - set(self.slots))
                return (f"the tasks of local rank(s) {missing} never connected to this node's "
                        f"agent ({self.address}) in {timeout_s:.0f}s")  # fmt: skip
            if select.select([self.listener], [], [], 0.25)[0]:
                self._accept()
        return None

    def _accept(self) -> None:
        assert self.listener is not None
        conn, _ = self.listener.accept()
        conn.settimeout(REPLY_S)
        try:
            frame = receive(conn) if peer_is_us(conn) else None
        except (OSError, pickle.UnpicklingError):
            frame = None
        local = frame[1] if frame and frame[0] == HELLO else None
        if not isinstance(local, int) or not 0 < local < self.local_ranks or local in self.slots:
            conn.close()
            return
        self.slots[local] = conn

    def start_all(
        self, launches: Sequence[RankLaunch], started: Callable[[int, RankLaunch], None]
    ) -> None:
        """Every rank of ``launches``, each as ``_start`` does, ``started`` told each pid at
        once (a lost slot raises SlotLost after the ranks before it are known)."""
        for launch in launches:
            started(self._start(launch), launch)

    def _start(self, launch: RankLaunch) -> int:
        """Fork local rank 0 here, ask its slot to fork any other; the rank's pid."""
        local = launch.spec.local_rank
        if local == 0:
            return fork_rank(launch)
        conn = self.slots.get(local)
        if conn is None:
            raise SlotLost(f"the task of local rank {local} is gone")
        sizes, fds = self._shared(launch)
        bare = dataclasses.replace(launch.spec, shm=None, board=None, beacon=None)
        try:
            send(conn, START, (dataclasses.replace(launch, spec=bare), sizes), fds)
            frame = receive(conn)
        except OSError:
            frame = None
        if frame is None or frame[0] != STARTED:
            self._drop(local)
            raise SlotLost(f"the task of local rank {local} did not start its rank")
        pid = int(frame[1])
        self.owner[pid] = local
        return pid

    def _drop(self, local: int) -> list[int]:
        """Forget a slot that went away; the pids of its ranks (now lost)."""
        conn = self.slots.pop(local, None)
        if conn is not None:
            conn.close()
        lost = [pid for pid, owner in self.owner.items() if owner == local]
        for pid in lost:
            del self.owner[pid]
        return lost

    def _read(self, conn: socket.socket, local: int) -> dict[int, int]:
        """What one readable slot says: its rank's exit, or its own departure."""
        try:
            frame = receive(conn)
        except (OSError, pickle.UnpicklingError):
            frame = None
        if frame is None:
            return dict.fromkeys(self._drop(local), LOST_CODE)
        kind, body, fds = frame
        for fd in fds:
            os.close(fd)
        if kind == EXITED and self.owner.get(body[0]) == local:
            del self.owner[body[0]]
            return {body[0]: body[1]}
        return {}

    def exited(self, pids: Iterable[int]) -> dict[int, int]:
        wanted = list(pids)
        codes = reap([pid for pid in wanted if pid not in self.owner])
        by_fd = {conn.fileno(): (conn, local) for local, conn in self.slots.items()}
        readable = select.select(list(by_fd), [], [], 0)[0] if by_fd else []
        for fd in readable:
            codes.update(self._read(*by_fd[fd]))
        return codes

    def stop(self, pids: Iterable[int]) -> dict[int, int]:
        """Terminate the local rank, ask the slots of the others to; wait for their exits (a
        slot that does not answer in time is dropped: it then stops its rank by itself)."""
        wanted = list(pids)
        codes = terminate_all([pid for pid in wanted if pid not in self.owner])
        waiting = {pid for pid in wanted if pid in self.owner}
        for local in {self.owner[pid] for pid in waiting}:
            with contextlib.suppress(OSError):
                send(self.slots[local], STOP)
        deadline = time.monotonic() + REPLY_S
        while waiting and time.monotonic() < deadline:
            by_fd = {self.slots[self.owner[pid]].fileno(): self.owner[pid] for pid in waiting}
            for fd in select.select(list(by_fd), [], [], 0.25)[0]:
                local = by_fd[fd]
                codes.update(self._read(self.slots[local], local))
            waiting = {pid for pid in waiting if pid in self.owner}
        for local in {self.owner[pid] for pid in waiting}:
            codes.update(dict.fromkeys(self._drop(local), LOST_CODE))
        return {pid: code for pid, code in codes.items() if pid in wanted}

    def fds(self) -> list[int]:
        return [conn.fileno() for conn in self.slots.values()]

    def close(self, code: int) -> None:
        """Tell every slot the node's exit code, then remove the socket, its directory and
        the node's memfds (after the ranks and the link that used them are gone)."""
        for local in list(self.slots):
            with contextlib.suppress(OSError):
                send(self.slots[local], BYE, code)
            self._drop(local)
        if self.listener is not None:  # only what this agent made is its to remove
            self.listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.address)
            with contextlib.suppress(OSError):
                os.rmdir(self.path)
        for region in self.regions.values():
            region.close()
        self.regions.clear()
