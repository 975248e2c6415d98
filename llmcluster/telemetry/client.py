"""A subscriber of the record hub: rank 0's display (acknowledged) or a read-only observer.

``receive`` returns decoded, validated records in publication order, each once: a
catch-up snapshot repeats nothing the client has already seen. An observer heartbeats so
the hub keeps it, and notices a coordinator that has gone silent. Over TCP with ``curve``
keys it is a CurveZMQ client (``control.security``).
"""

from __future__ import annotations

import secrets
import time

import zmq

from llmcluster.control.security import CurveKeys, connect_curve, over_tcp
from llmcluster.wire import OBSERVER_SRC, DecodeError, Kind, Message, decode
from llmcluster.wire.codec import encode
from llmcluster.wire.messages import Ack, Empty, Heartbeat, RecordBody, Subscribe
from llmcluster.wire.records import Record, record_from_wire

BEAT_S = 1.0
MAX_RECORD_BYTES = 16 * 1024 * 1024


class HubSilent(RuntimeError):
    """The hub has not been heard from for the client's timeout."""


class RecordClient:
    """One DEALER connection to the hub, owned by one thread."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        *,
        role: str,
        run_id: str = "",
        attempt: int = 0,
        rank: int = -1,
        silence_s: float = 0.0,
        curve: CurveKeys | None = None,
        proof: str = "",
    ) -> None:
        self.role, self.run_id, self.attempt = role, run_id, attempt
        self.src = rank if role == "display" else OBSERVER_SRC
        self.silence_s = silence_s  # 0: never judge the hub silent
        self.dropped = 0
        self.last_seq = 0
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, f"{role}-{secrets.token_hex(8)}".encode())
        self.socket.setsockopt(zmq.RCVHWM, 0 if role == "display" else 1000)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_RECORD_BYTES)
        self.socket.setsockopt(zmq.LINGER, 500)
        keys = over_tcp(endpoint, curve)
        if keys is not None:
            connect_curve(self.socket, keys)
        self.socket.connect(endpoint)
        self._send(Kind.SUBSCRIBE, Subscribe(role=role, rank=rank, proof=proof))
        self.last_heard = time.monotonic()
        self._next_beat = time.monotonic() + BEAT_S

    def _send(self, kind: Kind, body: object) -> None:
        frame = encode(Message(kind, self.run_id, self.attempt, self.src, body))[0]
        try:  # never blocks: a hub we cannot reach (or that refused us) just loses it
            self.socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def receive(self, timeout_s: float) -> list[tuple[int, Record]]:
        """Wait up to ``timeout_s`` for records; return (seq, record) pairs not seen before."""
        out: list[tuple[int, Record]] = []
        if self.socket.poll(max(0, int(timeout_s * 1000))):
            while True:
                try:
                    frames = self.socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._take(frames, out)
        self._beat()
        return out

    def _take(self, frames: list[bytes], out: list[tuple[int, Record]]) -> None:
        try:
            msg = decode(frames, run_id=self.run_id or None, max_body=MAX_RECORD_BYTES)
            self.last_heard = time.monotonic()
            if msg.kind is Kind.HEARTBEAT:
                return
            if msg.kind is not Kind.RECORD or not isinstance(msg.body, RecordBody):
                raise DecodeError("not a record")
            record = record_from_wire(msg.body.record)
        except DecodeError:
            self.dropped += 1
            return
        self.run_id = msg.run_id
        if msg.body.seq > self.last_seq:
            self.last_seq = msg.body.seq
            out.append((msg.body.seq, record))

    def _beat(self) -> None:
        now = time.monotonic()
        if now >= self._next_beat and self.role == "observer":
            self._send(Kind.HEARTBEAT, Heartbeat(t=time.time()))
            self._next_beat = now + BEAT_S
        if self.silence_s and now - self.last_heard > self.silence_s:
            raise HubSilent(f"no word from the coordinator for {now - self.last_heard:.1f}s")

    def ack(self, seq: int) -> None:
        """The display has shown every record up to ``seq``."""
        self._send(Kind.ACK, Ack(seq=seq))

    def close(self) -> None:
        """Leave the hub."""
        if self.role == "observer":
            self._send(Kind.UNSUBSCRIBE, Empty())
        self.socket.close()
