"""PeerMesh: point-to-point array messages between ranks over ZeroMQ.

Each rank binds one PULL "inbox"; it connects a PUSH socket to a peer's inbox the
first time it sends there. Messages are tagged (src, seq, phase) so that the
collectives can ask for exactly the message they need while others wait in a
pending table. While a receive waits, ``service`` is called with the other
sockets that became readable (the rank's control socket), at least every
``slice_ms``; it may raise to abandon the collective (abort, dead coordinator).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from llmcluster.wire import DecodeError, Kind, Message, decode, encode
from llmcluster.wire.messages import MAX_PEER_BYTES

ZERO_COPY_BYTES = 64 * 1024  # larger buffers are sent without copying (and tracked)
SLICE_MS = 100


class CollectiveTimeout(RuntimeError):
    """A peer's message did not arrive within the collective timeout (NCCL watchdog analogue)."""

    def __init__(self, src: int, seq: int, waited_s: float) -> None:
        super().__init__(f"no message from rank {src} for collective {seq} in {waited_s:.1f}s")
        self.src, self.seq, self.waited_s = src, seq, waited_s


Service = Callable[[dict[zmq.Socket, int]], None]


class PeerMesh:
    """One rank's endpoint in the mesh. Owned by one thread; not thread-safe."""

    def __init__(
        self,
        ctx: zmq.Context,
        *,
        rank: int,
        run_id: str,
        bind: str,
        timeout_s: float,
        service: Service,
        watched: list[zmq.Socket],
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
        if bind.startswith("tcp://") and bind.endswith(":0"):
            self._inbox.bind(bind)
            self.endpoint = self._inbox.getsockopt(zmq.LAST_ENDPOINT).decode()
        else:
            self._inbox.bind(bind)
            self.endpoint = bind
        self._poller = zmq.Poller()
        self._poller.register(self._inbox, zmq.POLLIN)
        for sock in watched:
            self._poller.register(sock, zmq.POLLIN)
        self._peers: list[str] = []
        self._out: dict[int, zmq.Socket] = {}
        self._pending: dict[tuple[int, int, int], np.ndarray] = {}
        self._trackers: list[zmq.MessageTracker] = []

    def set_peers(self, endpoints: list[str]) -> None:
        """Install the address book (global rank -> endpoint)."""
        self._peers = list(endpoints)

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
        data = np.ascontiguousarray(array)
        msg = Message(
            Kind.COLL,
            self.run_id,
            self.attempt,
            self.rank,
            {"seq": seq, "phase": phase, "dtype": data.dtype.str, "shape": list(data.shape)},
            [memoryview(data).cast("B")],
        )
        frames = encode(msg)
        if data.nbytes >= ZERO_COPY_BYTES:
            tracker = self._socket_to(dst).send_multipart(frames, copy=False, track=True)
            self._trackers.append(tracker)
        else:
            self._socket_to(dst).send_multipart(frames)

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
            events = dict(self._poller.poll(SLICE_MS))
            if self._inbox in events:
                self._drain()
                found = self._pending.pop(key, None)
                if found is not None:
                    return found
            self._service(events)
            waited = time.monotonic() - started
            if waited > self.timeout_s:
                raise CollectiveTimeout(src, seq, waited)

    def _drain(self) -> None:
        while True:
            try:
                frames = self._inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._accept(frames)

    def _accept(self, frames: list[Any]) -> None:
        try:
            msg = decode(frames, run_id=self.run_id, max_body=4096)
            if msg.kind is not Kind.COLL or len(msg.buffers) != 1 or msg.attempt != self.attempt:
                raise DecodeError("not a collective message of this attempt")
            dtype = np.dtype(msg.body["dtype"])
            shape = tuple(int(x) for x in msg.body["shape"])
            if dtype.hasobject or any(x < 0 for x in shape):
                raise DecodeError("bad array description")
            array = np.frombuffer(msg.buffers[0].buffer, dtype=dtype).reshape(shape)
        except (DecodeError, TypeError, ValueError):
            self.dropped += 1
            return
        self._pending[(msg.src, msg.body["seq"], msg.body["phase"])] = array

    def reset(self, attempt: int) -> None:
        """Forget pending messages of an earlier attempt."""
        self.attempt = attempt
        self._pending.clear()

    def close(self) -> None:
        """Close every socket (LINGER 0: nothing is waited for)."""
        for sock in self._out.values():
            sock.close(0)
        self._out.clear()
        self._inbox.close(0)
