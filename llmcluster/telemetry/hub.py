"""The coordinator's record hub: one ROUTER socket, two kinds of subscriber.

- The **display** (rank 0 of the current attempt) gets every record reliably: records wait
  in order until it has acknowledged them, and a new display (after a restart) is replayed
  whatever the last one never acknowledged. Only the current attempt's rank 0 can claim it.
- **Observers** (``llmcluster attach``, dashboards, tests) subscribe and leave at any time,
  read-only. A new observer first gets the cluster snapshot, then the live stream. Sends
  never block: an observer whose queue is at the high-water mark loses records (counted)
  and is resynchronised with a fresh snapshot once it has room; one silent for
  ``OBSERVER_TIMEOUT_S`` is forgotten. Observers never delay the run or its end.

Over TCP with a token the hub is a CurveZMQ server (``control.security``): displays and
observers must hold the token; the display must also show rank 0's join proof.

Records are encoded once per publication and the same frame goes to every subscriber.
"""

from __future__ import annotations

import errno
from collections import deque
from dataclasses import dataclass

import zmq

from llmcluster.control.security import CurveKeys, proof_ok, serve_curve
from llmcluster.telemetry.snapshot import ClusterSnapshot
from llmcluster.wire import COORDINATOR_SRC, MAX_CONTROL_BYTES, DecodeError, Kind, Message, decode
from llmcluster.wire.codec import encode
from llmcluster.wire.messages import Ack, Heartbeat, RecordBody, Subscribe
from llmcluster.wire.records import Record, record_to_wire

SUBSCRIBER_HWM = 64  # records queued per subscriber before an observer starts losing them
OBSERVER_TIMEOUT_S = 5.0
BEAT_S = 1.0
MAX_OBSERVERS = 64
INPUT_BATCH = 256


@dataclass
class Observer:
    """One read-only subscriber."""

    last_seen: float
    behind: bool = False  # lost records; gets a snapshot as soon as it has room
    lost: int = 0


class RecordHub:
    """Owned by the coordinator's thread; ``publish`` never blocks."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        run_id: str,
        display_proof: str = "",
        *,
        curve: CurveKeys | None = None,
    ) -> None:
        self.run_id, self.display_proof = run_id, display_proof
        self.attempt = 0
        self.socket = ctx.socket(zmq.ROUTER)
        if curve is not None:
            serve_curve(self.socket, curve)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.SNDHWM, SUBSCRIBER_HWM)
        self.socket.setsockopt(zmq.RCVHWM, 1000)
        self.socket.setsockopt(zmq.MAXMSGSIZE, 4096)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.snapshot = ClusterSnapshot()
        self._snapshot_frames: dict[int, bytes] = {}  # seq -> encoded catch-up frame
        self.seq = 0
        self.display: bytes | None = None
        self.display_acked = 0
        self._unacked: deque[tuple[int, Record, bytes]] = deque()  # sent to the display
        self._pending: deque[tuple[int, Record, bytes]] = deque()  # not yet sent to it
        self.observers: dict[bytes, Observer] = {}
        self.dropped = 0  # malformed or unauthorised input
        self.observer_losses = 0  # records an observer missed at its high-water mark
        self._next_beat = 0.0

    # ---- output -------------------------------------------------------------------------
    def _frame(self, seq: int, record: Record, *, snapshot: bool = False) -> bytes:
        body = RecordBody(record=record_to_wire(record), seq=seq, snapshot=snapshot)
        return encode(Message(Kind.RECORD, self.run_id, self.attempt, COORDINATOR_SRC, body))[0]

    def _send(self, identity: bytes, frame: bytes) -> bool:
        """True if queued; False if the peer's queue is full or the peer is gone."""
        try:
            self.socket.send_multipart([identity, frame], zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                return False
            raise

    def publish(self, record: Record) -> int:
        """Send ``record`` to the display (reliably) and every observer; returns its seq."""
        self.seq += 1
        frame = self._frame(self.seq, record)
        self.snapshot.update(self.seq, record)
        self._pending.append((self.seq, record, frame))
        self._flush_display()
        for identity, observer in self.observers.items():
            if observer.behind:
                self._resync(identity, observer)
            elif not self._send(identity, frame):
                observer.behind, observer.lost = True, observer.lost + 1
                self.observer_losses += 1
        return self.seq

    def _flush_display(self) -> None:
        while self.display is not None and self._pending:
            frame = self._pending[0][2]
            if not self._send(self.display, frame):
                return  # full: retried on the next publish or poll
            self._unacked.append(self._pending.popleft())

    def _resync(self, identity: bytes, observer: Observer) -> None:
        """Send the snapshot; an observer stays behind until all of it was queued."""
        kept = self.snapshot.records()
        frames = {seq: self._snapshot_frames.get(seq) or self._frame(seq, record, snapshot=True)
                  for seq, record in kept}  # fmt: skip
        self._snapshot_frames = frames  # each record is encoded once as a catch-up frame
        for seq, _ in kept:
            if not self._send(identity, frames[seq]):
                observer.behind = True
                return
        observer.behind = False

    def unshown(self) -> list[Record]:
        """Records the display has not acknowledged, oldest first."""
        return [record for _, record, _ in (*self._unacked, *self._pending)]

    def forget_unshown(self) -> None:
        """Drop what the display never showed (the coordinator has shown it itself)."""
        self._unacked.clear()
        self._pending.clear()

    # ---- input --------------------------------------------------------------------------
    def poll(self, now: float) -> None:
        """Serve subscriptions, acknowledgements and heartbeats (non-blocking)."""
        for _ in range(INPUT_BATCH):
            try:
                identity, *frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except ValueError:
                self.dropped += 1
                continue
            try:
                msg = decode(frames, run_id=None, max_body=MAX_CONTROL_BYTES)
            except DecodeError:
                self.dropped += 1
                continue
            self._handle(identity, msg, now)
        self._flush_display()
        self._housekeeping(now)

    def _handle(self, identity: bytes, msg: Message, now: float) -> None:
        if msg.kind is Kind.SUBSCRIBE and isinstance(msg.body, Subscribe):
            if msg.body.role == "display":
                self._claim_display(identity, msg)
            elif msg.body.role == "observer" and (
                identity in self.observers or len(self.observers) < MAX_OBSERVERS
            ):
                observer = Observer(last_seen=now)
                self.observers[identity] = observer
                self._resync(identity, observer)
            else:
                self.dropped += 1
        elif msg.kind is Kind.ACK and isinstance(msg.body, Ack) and identity == self.display:
            self.display_acked = max(self.display_acked, msg.body.seq)
            while self._unacked and self._unacked[0][0] <= self.display_acked:
                self._unacked.popleft()
        elif msg.kind is Kind.HEARTBEAT and identity in self.observers:
            self.observers[identity].last_seen = now
        elif msg.kind is Kind.UNSUBSCRIBE:
            self.observers.pop(identity, None)
        else:
            self.dropped += 1

    def _claim_display(self, identity: bytes, msg: Message) -> None:
        if msg.run_id != self.run_id or msg.attempt != self.attempt or msg.src != 0:
            self.dropped += 1
            return
        if not proof_ok(msg.body.proof, self.display_proof):
            self.dropped += 1
            return
        if identity != self.display:  # a new rank 0: replay what the last one never showed
            self._pending.extendleft(reversed(self._unacked))
            self._unacked.clear()
            self.display = identity

    def _housekeeping(self, now: float) -> None:
        for identity, observer in list(self.observers.items()):
            if now - observer.last_seen > OBSERVER_TIMEOUT_S:
                del self.observers[identity]
            elif observer.behind:
                self._resync(identity, observer)
        if now >= self._next_beat:
            self._next_beat = now + BEAT_S
            beat = encode(
                Message(
                    Kind.HEARTBEAT, self.run_id, self.attempt, COORDINATOR_SRC, Heartbeat(t=now)
                )
            )[0]
            for identity in list(self.observers):
                self._send(identity, beat)

    @property
    def has_display(self) -> bool:
        """A display has claimed the reliable channel in this attempt."""
        return self.display is not None

    def new_attempt(self, attempt: int, display_proof: str = "") -> None:
        """A restart: the next display must belong to ``attempt`` (and show its proof)."""
        self.attempt, self.display_proof = attempt, display_proof
        self.display = None
        self._pending.extendleft(reversed(self._unacked))
        self._unacked.clear()

    def close(self) -> None:
        """Close the socket (nothing lingers: the run's end never waits for a subscriber)."""
        self.socket.close(0)
