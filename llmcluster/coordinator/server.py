"""The coordinator's I/O shell: sockets in, events to the machine, its actions out.

One thread owns the control ROUTER (agents and ranks connect DEALERs to it) and the
telemetry hub. Every decision is ``machine.Coordinator``'s; this module only decodes
what arrives, reads the clocks, and carries out the actions it gets back. Node
supervision (forked local agents, or remote nodes that only heartbeat) sits behind the
``NodeSupervisor`` interface, so the machine never knows how its nodes were launched.
With ``curve`` keys (a run with a token) both sockets are CurveZMQ servers behind the
token's ZAP handler, and failed handshakes are watched (``control.security``).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Protocol

import zmq

from llmcluster.control.security import (
    HANDSHAKE_REFUSED,
    CurveKeys,
    Gatekeeper,
    HandshakeWatch,
    serve_curve,
)
from llmcluster.coordinator.machine import Coordinator
from llmcluster.coordinator.state import (
    Action,
    AgentLost,
    DisplayStatus,
    Event,
    ForeignJoin,
    HandshakeFailed,
    Interrupted,
    Malformed,
    NewAttempt,
    Publish,
    Received,
    ReplaceAgent,
    Say,
    Send,
    ShowUnshown,
    Tick,
)
from llmcluster.render.wholeline import write_line
from llmcluster.telemetry.hub import RecordHub
from llmcluster.wire import (
    COORDINATOR_SRC,
    MAX_CONTROL_BYTES,
    DecodeError,
    Kind,
    Message,
    decode,
    encode,
    send_frames,
)
from llmcluster.wire.codec import ForeignVersion
from llmcluster.wire.records import Record

CONTROL_BATCH = 256  # bounded, so heartbeats go out even under a join storm
POLL_MS = 100
CONTROL_HWM = 100_000  # queued control messages per peer before ZeroMQ drops (never blocks)
CONTROL_RCVHWM = 1000  # per peer: a flooding client is held back in its own socket, not here
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129, signal.SIGPIPE: 141}


class NodeSupervisor(Protocol):
    """How nodes are watched beyond heartbeats: local agents are processes we can reap."""

    def lost(self, now: float) -> list[AgentLost]:
        """Agents that died since the last call."""
        ...

    def replace(self, node: int) -> None:
        """Start a new agent for ``node`` (remote: nothing; the node comes back by itself)."""
        ...

    def close(self) -> None:
        """Wait for the agents to leave after EXIT, then make sure they have."""
        ...


class RemoteNodes:
    """Nodes on other hosts: nothing to reap or start; heartbeats tell their health."""

    def lost(self, now: float) -> list[AgentLost]:
        return []

    def replace(self, node: int) -> None:
        return None

    def close(self) -> None:
        return None


class CoordinatorServer:
    """Serves one run; ``run()`` returns the process exit code."""

    def __init__(
        self,
        machine: Coordinator,
        *,
        control: str,
        publish: str,
        supervisor: NodeSupervisor,
        show_locally: Callable[[list[Record]], None],
        curve: CurveKeys | None = None,
    ) -> None:
        self.machine, self.supervisor, self.show_locally = machine, supervisor, show_locally
        self.ctx = zmq.Context()
        self.gatekeeper = Gatekeeper(self.ctx, curve) if curve is not None else None
        self.router = self.ctx.socket(zmq.ROUTER)
        self.watch: HandshakeWatch | None = None
        if curve is not None:
            serve_curve(self.router, curve)
            self.watch = HandshakeWatch(self.router, HANDSHAKE_REFUSED)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.router.setsockopt(zmq.SNDHWM, CONTROL_HWM)
        self.router.setsockopt(zmq.RCVHWM, CONTROL_RCVHWM)
        self.router.setsockopt(zmq.LINGER, 1000)
        self.router.bind(control)
        self.control_endpoint = control
        self.hub = RecordHub(
            self.ctx, publish, machine.settings.run_id, machine.rank_proof(0), curve=curve
        )
        self._hub_dropped = 0
        self.signals: list[int] = []
        self._status = DisplayStatus(False, 0)

    def run(self) -> int:
        """Serve until the machine says the run is over."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.hub.socket, zmq.POLLIN)
        if self.watch is not None:
            poller.register(self.watch.fd, zmq.POLLIN)
        read_up_to = time.monotonic()
        try:
            while not self.machine.over:
                ready = dict(poller.poll(POLL_MS))
                now, wall = time.monotonic(), time.time()
                self.hub.poll(now)
                for _ in range(self.hub.dropped - self._hub_dropped):  # the run counts them too
                    self._feed(Malformed())
                self._hub_dropped = self.hub.dropped
                if self.watch is not None and self.watch.fd in ready:
                    for _ in range(self.watch.update()):
                        self._feed(HandshakeFailed(self.control_endpoint, now))
                status = DisplayStatus(self.hub.has_display, self.hub.display_acked)
                if status != self._status:
                    self._status = status
                    self._feed(status)
                if self.router not in ready or self._control(now, wall):
                    read_up_to = now  # every message sent before the poll has been read
                for lost in self.supervisor.lost(now):
                    self._feed(lost)
                while self.signals:
                    signum = self.signals.pop(0)
                    name = signal.Signals(signum).name
                    self._feed(Interrupted(name, EXIT_CODES.get(signum, 128 + signum), now))
                self._feed(Tick(now, wall, read_up_to))
            return self.machine.exit_code
        finally:
            self.supervisor.close()
            self.hub.close()
            if self.watch is not None:
                self.watch.close()
            self.router.close(0)
            if self.gatekeeper is not None:
                self.gatekeeper.stop()
            self.ctx.term()

    def _control(self, now: float, wall: float) -> bool:
        """Read and feed up to CONTROL_BATCH control messages; True if none is left."""
        world = self.machine.config.ranks
        for _ in range(CONTROL_BATCH):
            try:
                identity, *frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            except ValueError:  # an empty multipart message
                self._feed(Malformed())
                continue
            try:
                msg = decode(frames, run_id=None, world_size=world)
            except ForeignVersion as foreign:
                joining = foreign.kind == Kind.AGENT_JOIN.value
                self._feed(ForeignJoin(identity, foreign.version) if joining else Malformed())
                continue
            except DecodeError:
                self._feed(Malformed())
                continue
            self._feed(Received(identity, msg, now, wall))
        return False

    def _feed(self, event: Event) -> None:
        for action in self.machine.handle(event):
            self._execute(action)

    def _execute(self, action: Action) -> None:
        if isinstance(action, Send):
            msg = Message(
                action.kind,
                self.machine.settings.run_id,
                self.machine.attempt,
                COORDINATOR_SRC,
                action.body,
            )
            frames = encode(msg)
            if len(action.identities) > 1:  # encoded once and shared, not copied
                frames = [zmq.Frame(frame) for frame in frames]
            for identity in action.identities:
                send_frames(self.router, [identity, *frames], copy=False)
        elif isinstance(action, Publish):
            self.hub.publish(action.record)
        elif isinstance(action, NewAttempt):
            self.hub.new_attempt(action.attempt, self.machine.rank_proof(0))
        elif isinstance(action, ReplaceAgent):
            self.supervisor.replace(action.node)
        elif isinstance(action, Say):
            write_line(f"llmcluster coordinator: {action.text}")
        elif isinstance(action, ShowUnshown):
            self.show_locally(self.hub.unshown())
            self.hub.forget_unshown()
