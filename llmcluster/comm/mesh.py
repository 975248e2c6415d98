"""PeerMesh: point-to-point array messages between ranks over ZeroMQ.

Each rank binds one PULL "inbox"; it connects a PUSH socket to a peer's inbox the
first time it sends there. Messages are tagged (src, seq, phase) so that the
collectives can ask for exactly the message they need while others wait in a
pending table. ``service`` (the rank serves its control socket there) is called at
least every ``service_s`` while the rank is inside a collective, whether its receives
wait or find their message at once (``poll_service``, which long shared-memory loops
call too); it may raise to abandon the collective (abort, dead coordinator).
The hot path is lean on purpose: a binary header (``frames``) with small arrays inline,
large ones as a second frame sent and received zero-copy.
Between hosts (TCP) with ``curve`` keys, inboxes are CurveZMQ servers and the PUSH sockets
CurveZMQ clients of the token's keys (``control.security``); IPC inside a node stays plain.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import zmq

from llmcluster.comm.frames import ZERO_COPY_BYTES, FrameError, pack_header, parse_header, run_tag
from llmcluster.control.security import CurveKeys, connect_curve, over_tcp, serve_curve
from llmcluster.wire.messages import MAX_PEER_BYTES

SERVICE_S = 0.25  # control is served at least this often while a rank waits (1024 idle
# ranks waking 20 times a second cost more than a core); a large world's ranks wait longer
CLOSE_LINGER_MS = 500
SNDMORE, RCVMORE = int(zmq.SNDMORE), int(zmq.RCVMORE)  # plain ints: enum arithmetic is slow


class CollectiveTimeout(RuntimeError):
    """A peer's message did not arrive within the collective timeout (NCCL watchdog analogue)."""

    def __init__(self, src: int, seq: int, waited_s: float) -> None:
        super().__init__(f"no message from rank {src} for collective {seq} in {waited_s:.1f}s")
        self.src, self.seq, self.waited_s = src, seq, waited_s


Service = Callable[[], None]


class PeerMesh:
    """One rank's endpoint in the mesh. Owned by one thread; not thread-safe."""

    def __init__(
        self,
        ctx: zmq.Context,
        *,
        rank: int,
        run_id: str,
        bind: list[str],
        node: int = 0,
        timeout_s: float,
        service: Service,
        curve: CurveKeys | None = None,
        service_s: float = SERVICE_S,
    ) -> None:
        self.rank, self.run_id, self.timeout_s = rank, run_id, timeout_s
        self.service_s = service_s
        self._curve = curve
        self.attempt = 0
        self.dropped = 0
        self._ctx = ctx
        self._service = service
        self._inbox = ctx.socket(zmq.PULL)
        self._inbox.setsockopt(zmq.MAXMSGSIZE, MAX_PEER_BYTES + 4096)
        self._inbox.setsockopt(zmq.RCVHWM, 0)
        self._inbox.setsockopt(zmq.LINGER, 0)
        self._inbox.setsockopt(zmq.RCVTIMEO, round(service_s * 1000))
        self._tag = run_tag(run_id)
        self.node = node
        self.endpoints: list[str] = []
        for address in sorted(bind, key=lambda a: a.startswith("tcp://")):  # IPC binds plain
            keys = over_tcp(address, curve)
            if keys is not None:  # options apply to the endpoints bound after them
                serve_curve(self._inbox, keys)
            self._inbox.bind(address)
            self.endpoints.append(self._inbox.getsockopt(zmq.LAST_ENDPOINT).decode())
        self._next_service = 0.0
        self._peers: dict[int, str] = {}
        self._out: dict[int, zmq.Socket] = {}
        self._pending: dict[tuple[int, int, int], np.ndarray] = {}
        self._trackers: list[zmq.MessageTracker] = []

    def set_peers(
        self, book: Sequence[Sequence[str]] | Mapping[int, Sequence[str]], nodes: Sequence[int]
    ) -> None:
        """Install the address book (every rank's endpoints in rank order, or those of the
        ranks this one sends to, by rank; ``nodes[r]`` is rank r's node): IPC to peers on
        this node, TCP to the others."""
        entries = book.items() if isinstance(book, Mapping) else enumerate(book)
        self._peers = {
            rank: _pick(list(addresses), local=nodes[rank] == self.node)
            for rank, addresses in entries
        }

    def _socket_to(self, dst: int) -> zmq.Socket:
        sock = self._out.get(dst)
        if sock is None:
            if dst not in self._peers:
                raise LookupError(f"rank {dst} is not in rank {self.rank}'s address book")
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.LINGER, 0)
            keys = over_tcp(self._peers[dst], self._curve)
            if keys is not None:
                connect_curve(sock, keys)
            sock.connect(self._peers[dst])
            self._out[dst] = sock
        return sock

    def send(self, dst: int, seq: int, phase: int, array: np.ndarray) -> None:
        """Queue ``array`` for ``dst``; large arrays are sent zero-copy and tracked."""
        self.send_many((dst,), seq, phase, array)

    def send_many(self, dsts: Sequence[int], seq: int, phase: int, array: np.ndarray) -> None:
        """Queue the same ``array`` for every rank in ``dsts``, encoding it once.

        Small arrays travel inside the header frame (one frame per message); large ones
        follow it as a zero-copy frame whose buffer is tracked until ZeroMQ lets go.
        """
        data = np.ascontiguousarray(array)
        head = pack_header(self._tag, self.attempt, self.rank, seq, phase, data)
        if data.nbytes < ZERO_COPY_BYTES:
            frame = head + data.tobytes()
            for dst in dsts:
                self._socket_to(dst).send(frame)
            return
        for dst in dsts:
            sock = self._socket_to(dst)
            sock.send(head, SNDMORE)
            self._trackers.append(sock.send(data, copy=False, track=True))

    def flush(self) -> None:
        """Block until ZeroMQ no longer needs any zero-copy buffer handed to ``send``,
        serving control while it takes."""
        for tracker in self._trackers:
            while True:
                try:
                    tracker.wait(self.service_s)
                    break
                except zmq.NotDone:
                    self.poll_service()
        self._trackers.clear()

    def serve(self) -> None:
        """Serve the control socket now (a collective waiting elsewhere calls this), and
        file what waits in the inbox: a rank whose collectives all run on the node board
        never reads it otherwise, and what a hostile sender put there must still be dropped
        and counted."""
        self._service()
        self._drain()
        self._next_service = time.monotonic() + self.service_s

    def _drain(self) -> None:
        receive, accept = self._inbox.recv, self._accept
        while True:
            try:
                frame = receive(zmq.NOBLOCK)
            except zmq.Again:
                return
            accept(frame)

    def poll_service(self) -> None:
        """Serve the control socket if it is due (cheap enough to call between blocks)."""
        if time.monotonic() >= self._next_service:
            self.serve()

    def recv(self, src: int, seq: int, phase: int) -> np.ndarray:
        """Return the array ``src`` sent for (seq, phase), servicing control while waiting."""
        key = (src, seq, phase)
        pending = self._pending
        started = time.monotonic()
        if started >= self._next_service:  # busy collectives must not starve heartbeats
            self.serve()
        found = pending.pop(key, None)
        if found is not None:
            return found
        receive, accept = self._inbox.recv, self._accept
        while True:
            try:  # blocks for at most service_s (RCVTIMEO): one call per message, no poller
                frame = receive()
            except zmq.Again:
                frame = None
            if frame is not None:
                accept(frame)
                found = pending.pop(key, None)
                if found is not None:
                    return found
            now = time.monotonic()
            if now >= self._next_service:
                self.serve()  # (which may file the awaited message)
                found = pending.pop(key, None)
                if found is not None:
                    return found
            if now - started > self.timeout_s:
                raise CollectiveTimeout(src, seq, now - started)

    def _accept(self, first: bytes) -> None:
        """File one incoming message under its key, or drop and count it.

        A small array is the frame itself; a large one is the single frame that follows.
        Extra frames of a malformed message arrive here one by one and are dropped as such.
        """
        try:
            head = parse_header(first, self._tag, self.attempt)
        except FrameError:
            self.dropped += 1
            return
        if head.nbytes < ZERO_COPY_BYTES:
            if len(first) - head.offset != head.nbytes:
                self.dropped += 1
                return
            payload: Any = first
            offset = head.offset
        else:
            inbox = self._inbox
            if len(first) != head.offset or not inbox.get(RCVMORE):
                self.dropped += 1
                return
            frame = inbox.recv(copy=False)
            if frame.more or len(frame) != head.nbytes:
                self.dropped += 1
                return
            payload, offset = frame.buffer, 0
        array = np.frombuffer(payload, dtype=head.dtype, count=head.nbytes // head.dtype.itemsize,
                              offset=offset).reshape(head.shape)  # fmt: skip
        self._pending[(head.src, head.seq, head.phase)] = array

    def reset(self, attempt: int) -> None:
        """Forget pending messages of an earlier attempt."""
        self.attempt = attempt
        self._pending.clear()

    def close(self) -> None:
        """Close every socket; what was already sent gets a moment to leave (a peer still
        waiting for this rank's last message must get it), nothing is received any more."""
        for sock in self._out.values():
            sock.close(CLOSE_LINGER_MS)
        self._out.clear()
        self._inbox.close(0)


def _pick(addresses: list[str], *, local: bool) -> str:
    """A peer's IPC endpoint when it shares our node (and has one), else its TCP endpoint."""
    wanted = "ipc://" if local else "tcp://"
    for address in addresses:
        if address.startswith(wanted):
            return address
    return addresses[0]
