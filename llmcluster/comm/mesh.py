"""PeerMesh: point-to-point array messages between ranks over ZeroMQ.

Each rank binds one PULL "inbox"; it connects a PUSH socket to a peer's inbox the
first time it sends there. Messages are tagged (src, seq, phase) so that the
collectives can ask for exactly the message they need while others wait in a
pending table. While a receive waits, ``service`` is called with the other
``service`` is called at least every ``SERVICE_S`` (the rank serves its control
socket there); it may raise to abandon the collective (abort, dead coordinator).
The hot path is lean on purpose: one header frame (bytes) plus one data frame,
received zero-copy only when it is large.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np
import zmq

from llmcluster.wire import DecodeError, Kind
from llmcluster.wire.codec import HEADER, decode_head
from llmcluster.wire.messages import MAX_PEER_BYTES

ZERO_COPY_BYTES = 64 * 1024  # larger buffers are sent and received without copying
SERVICE_S = 0.05  # control messages are served at least this often while a rank waits
POLL_MS = 50
CLOSE_LINGER_MS = 500
NOBLOCK, RCVMORE = int(zmq.NOBLOCK), int(zmq.RCVMORE)  # plain ints: enum arithmetic is slow


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
    ) -> None:
        self.rank, self.run_id, self.timeout_s = rank, run_id, timeout_s
        self.attempt = 0
        self.dropped = 0
        self._ctx = ctx
        self._service = service
        self._inbox = ctx.socket(zmq.PULL)
        self._inbox.setsockopt(zmq.MAXMSGSIZE, MAX_PEER_BYTES + 4096)
        self._inbox.setsockopt(zmq.RCVHWM, 0)
        self._inbox.setsockopt(zmq.LINGER, 0)
        self.node = node
        self.endpoints: list[str] = []
        for address in bind:
            self._inbox.bind(address)
            self.endpoints.append(self._inbox.getsockopt(zmq.LAST_ENDPOINT).decode())
        self._next_service = 0.0
        self._peers: list[str] = []
        self._out: dict[int, zmq.Socket] = {}
        self._pending: dict[tuple[int, int, int], np.ndarray] = {}
        self._trackers: list[zmq.MessageTracker] = []

    def set_peers(self, book: list[list[str]], nodes: list[int]) -> None:
        """Install the address book: IPC to peers on this node, TCP to the others."""
        self._peers = [
            _pick(addresses, local=node == self.node)
            for addresses, node in zip(book, nodes, strict=True)
        ]

    def _socket_to(self, dst: int) -> zmq.Socket:
        sock = self._out.get(dst)
        if sock is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.LINGER, 0)
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
        head = {
            "k": "coll",
            "run": self.run_id,
            "att": self.attempt,
            "src": self.rank,
            "seq": seq,
            "phase": phase,
            "dtype": data.dtype.str,
            "shape": data.shape,
        }
        if data.nbytes < ZERO_COPY_BYTES:
            head["data"] = data.tobytes()
            frame = HEADER + msgpack.packb(head)
            for dst in dsts:
                self._socket_to(dst).send(frame)
            return
        frame = HEADER + msgpack.packb(head)
        for dst in dsts:
            sock = self._socket_to(dst)
            sock.send(frame, zmq.SNDMORE)
            self._trackers.append(sock.send(data, copy=False, track=True))

    def flush(self) -> None:
        """Block until ZeroMQ no longer needs any zero-copy buffer handed to ``send``."""
        for tracker in self._trackers:
            tracker.wait()
        self._trackers.clear()

    def recv(self, src: int, seq: int, phase: int) -> np.ndarray:
        """Return the array ``src`` sent for (seq, phase), servicing control while waiting."""
        key = (src, seq, phase)
        found = self._pending.pop(key, None)
        if found is not None:
            return found
        started = time.monotonic()
        while True:
            self._drain()
            found = self._pending.pop(key, None)
            if found is not None:
                return found
            now = time.monotonic()
            if now >= self._next_service:
                self._service()
                self._next_service = now + SERVICE_S
            if now - started > self.timeout_s:
                raise CollectiveTimeout(src, seq, now - started)
            self._inbox.poll(POLL_MS)

    def _drain(self) -> None:
        inbox = self._inbox
        while True:
            try:
                first = inbox.recv(NOBLOCK)
            except zmq.Again:
                return
            try:
                key, dtype, shape, inline = self._describe(first)
            except (DecodeError, TypeError, ValueError, KeyError):
                self.dropped += 1
                key, inline = None, None
            rest: list[Any] = [] if inline is None else [inline]
            while inbox.getsockopt(RCVMORE):
                big = key is not None and dtype.itemsize * math.prod(shape) >= ZERO_COPY_BYTES
                rest.append(inbox.recv(copy=not big))
            if key is None:
                continue
            if len(rest) != 1:  # exactly one payload: inline or a second frame
                self.dropped += 1
                continue
            buffer = rest[0].buffer if isinstance(rest[0], zmq.Frame) else rest[0]
            try:
                self._pending[key] = np.frombuffer(buffer, dtype=dtype).reshape(shape)
            except ValueError:  # the data does not match its description
                self.dropped += 1

    def _describe(
        self, first: bytes
    ) -> tuple[tuple[int, int, int], np.dtype, tuple[int, ...], bytes | None]:
        head = decode_head(first, run_id=self.run_id, max_body=ZERO_COPY_BYTES + 4096)
        if head["k"] is not Kind.COLL or head["att"] != self.attempt:
            raise DecodeError("not a collective message of this attempt")
        seq, phase = head["seq"], head["phase"]
        dtype = np.dtype(head["dtype"])
        shape = tuple(int(x) for x in head["shape"])
        if type(seq) is not int or type(phase) is not int or dtype.hasobject:
            raise DecodeError("bad collective header")
        if any(x < 0 for x in shape) or len(shape) > 8:
            raise DecodeError("bad array shape")
        inline = head.get("data")
        if inline is not None and not isinstance(inline, bytes):
            raise DecodeError("bad inline payload")
        return (head["src"], seq, phase), dtype, shape, inline

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
