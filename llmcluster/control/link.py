"""ControlLink: a process's DEALER connection to the coordinator, with heartbeats.

Used by ranks and node agents alike. It sends heartbeats every ``HEARTBEAT_S`` (any
message it sends counts as one), remembers when the coordinator was last heard from
(a rank: or its agent, through the node's ``Beacon``), and raises
``CoordinatorLost`` once it has been silent for ``timeout_s`` (the coordinator
died or the network is cut). Malformed or foreign messages are dropped and
counted, never raised. Over TCP with ``curve`` keys the link is a CurveZMQ client of the
token's server key (``control.security``), so it talks to the real coordinator or to no one.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from llmcluster.control.security import CurveKeys, HandshakeWatch, connect_curve, over_tcp
from llmcluster.wire import (
    MAX_CONTROL_BYTES,
    DecodeError,
    Kind,
    Message,
    decode,
    encode,
)
from llmcluster.wire.messages import HEARTBEAT_S, Heartbeat

CHECK_S = 0.25  # how often a waiting process checks for silence (at least)
CHECKS_PER_TIMEOUT = 12  # a long timeout (a large world's) is checked less often: 1024 idle
# ranks waking 4 times a second each cost about a core of this machine's two
_NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq's flag enum costs on every step


class CoordinatorLost(RuntimeError):
    """The coordinator has not been heard from within the heartbeat timeout."""


class Beacon:
    """When the node agent last heard the coordinator (monotonic seconds, a clock every
    process of the host shares), in a shared mapping its ranks inherit at fork: the agent's
    link marks it, its ranks' links read it. The coordinator heartbeats the agents only,
    and a rank counts the coordinator alive while its agent hears it (one beat per node
    instead of one per rank, and a rank still waiting for its join to be read is not cut off
    by a busy coordinator's silence). An aligned 8-byte store is atomic on 64-bit hosts."""

    def __init__(self, region: Any = None) -> None:
        """``region``: 8 writable shared bytes (a memfd's, to pass to other processes);
        by default an anonymous mapping that forked ranks inherit."""
        self.region = region if region is not None else mmap.mmap(-1, 8)
        self._cell = ctypes.c_double.from_buffer(self.region)

    def mark(self, heard: float) -> None:
        self._cell.value = heard

    def heard(self) -> float:
        return float(self._cell.value)


class ControlLink:
    """One owner thread; ``poll`` returns decoded messages of this run."""

    def __init__(
        self,
        ctx: zmq.Context,
        *,
        endpoint: str,
        identity: bytes,
        run_id: str | None,
        src: int,
        timeout_s: float,
        curve: CurveKeys | None = None,
        watch_handshakes: bool = False,
        beacon: Beacon | None = None,
        marks_beacon: bool = False,
        beat_s: float = HEARTBEAT_S,
    ) -> None:
        self.run_id, self.src, self.timeout_s = run_id, src, timeout_s
        self.beat_s = beat_s  # a rank of a large world beats less often (its tolerance is long)
        self.beacon, self._marks = beacon, marks_beacon  # the agent marks, its ranks read
        self.attempt = 0
        self.dropped = 0
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, identity)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)
        self.socket.setsockopt(zmq.LINGER, 2000)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 20)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        keys = over_tcp(endpoint, curve)
        if keys is not None:
            connect_curve(self.socket, keys)
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self._watched: set[int] = set()
        # watched from before the connect, so that not even the first handshake goes unseen
        self.handshakes = HandshakeWatch(self.socket) if watch_handshakes else None
        self.socket.connect(endpoint)
        self.last_heard = time.monotonic()
        self._next_beat = 0.0

    @property
    def check_s(self) -> float:
        """How long an idle wait sleeps between silence checks (and a waiting collective
        between serving control): CHECK_S, or a twelfth of a longer timeout."""
        return max(CHECK_S, self.timeout_s / CHECKS_PER_TIMEOUT)

    def send(self, kind: Kind, body: Any) -> None:
        """Send one message (``body`` is the kind's dataclass) to the coordinator; never
        blocks: with no connection to queue it on (a refused handshake ends the connection
        for good) the message is dropped and counted."""
        msg = Message(kind, self.run_id or "", self.attempt, self.src, body)
        try:
            self.socket.send(encode(msg)[0], _NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return
        self._next_beat = time.monotonic() + self.beat_s  # any message says we are alive

    def receive_ready(self) -> list[Message]:
        """Decode every message waiting on the socket (non-blocking)."""
        out: list[Message] = []
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            try:
                msg = decode(frames, run_id=self.run_id)
            except DecodeError:
                self.dropped += 1
                continue
            self.last_heard = time.monotonic()
            if self._marks and self.beacon is not None:
                self.beacon.mark(self.last_heard)
            if msg.kind is not Kind.HEARTBEAT:
                out.append(msg)

    def tick(self) -> None:
        """Send a heartbeat when due; raise CoordinatorLost after ``timeout_s`` of silence."""
        now = time.monotonic()
        if now >= self._next_beat and self.run_id is not None:
            self.send(Kind.HEARTBEAT, Heartbeat(t=time.time()))
            self._next_beat = now + self.beat_s
        heard = self.last_heard
        if self.beacon is not None and not self._marks:
            heard = max(heard, self.beacon.heard())
        if now - heard > self.timeout_s:
            raise CoordinatorLost(f"no word from the coordinator for {now - heard:.1f}s")

    def wait(self, timeout_s: float, wake_fds: Sequence[int] = ()) -> list[Message]:
        """Poll up to ``timeout_s`` (heartbeating) and return what arrived; a readable
        ``wake_fds`` descriptor (a signal's wake-up channel, a slot's socket) ends the wait
        early. Descriptors watched before and not passed now are no longer watched."""
        poller = self._poller
        for fd in self._watched - set(wake_fds):
            poller.unregister(fd)
        for fd in set(wake_fds) - self._watched:
            poller.register(fd, zmq.POLLIN)
        self._watched = set(wake_fds)
        deadline = time.monotonic() + timeout_s
        while True:
            # what is queued is read before silence is judged: a process that was busy (an
            # agent forking its ranks, starved on two cores) has heard the coordinator
            messages = self.receive_ready()
            if messages:
                return messages
            self.tick()
            remaining = deadline - time.monotonic()
            until_beat = (
                self._next_beat - time.monotonic() if self.run_id is not None else remaining
            )
            slice_s = min(remaining, self.check_s, max(until_beat, 0.0))
            # whole milliseconds, rounded up: a fraction of one polls at once (a spin to the end)
            timeout_ms = math.ceil(max(0.0, slice_s) * 1000)
            if 0 < remaining < 1e-3 and slice_s == remaining:  # the wait's last fraction of a
                time.sleep(remaining)  # millisecond: rounded up it would overshoot by up to 1 ms
                timeout_ms = 0  # (a compute phase at --speed 1e6 is microseconds)
            ready = dict(poller.poll(timeout_ms))
            if remaining <= 0 or any(fd in ready for fd in self._watched):
                return self.receive_ready()  # the wait is over: what came with its end
            # anything else loops: what arrived is read at the top

    def await_kind(
        self, kind: Kind, timeout_s: float, handle: Callable[[list[Message]], None]
    ) -> Message | None:
        """Wait up to ``timeout_s`` for the first message of ``kind`` and return it (None if
        none came); every other message, those that arrived with it included, goes to
        ``handle`` in order: a STOP queued right behind the GO it follows is not lost."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            arrived = self.wait(deadline - time.monotonic())
            wanted = next((msg for msg in arrived if msg.kind is kind), None)
            handle([msg for msg in arrived if msg is not wanted])
            if wanted is not None:
                return wanted
        return None

    def unwatch(self) -> None:
        """Stop watching handshakes (the join is over)."""
        if self.handshakes is not None:
            self.handshakes.close()
            self.handshakes = None

    def close(self) -> None:
        """Close the socket; queued messages get up to LINGER to leave."""
        self.unwatch()
        self.socket.close()
