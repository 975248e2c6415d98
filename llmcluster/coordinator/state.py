"""The coordinator's vocabulary: its phases, the events it handles and the actions it asks for.

``machine.Coordinator.handle(event) -> list[Action]`` is pure: events carry the clock
readings and the decoded messages; actions say what the server should send, publish,
print or start. Nothing here touches a socket, a clock or a process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from llmcluster.telemetry.merge import RankInfo
from llmcluster.wire import Kind, Message
from llmcluster.wire.records import Record


class Phase(str, Enum):
    """Where the run is."""

    RENDEZVOUS = "rendezvous"  # agents and ranks joining, first barrier
    TRAINING = "training"
    STOPPING = "stopping"  # STOP sent: waiting for every rank's DONE at the next boundary
    RESTARTING = "restarting"  # a failure: show it, stop the worker group, start attempt n+1
    FINISHING = "finishing"  # the summary is out: waiting for the display to show it
    ABORTING = "aborting"  # no restart left, or interrupted: stop everything, show the rest
    OVER = "over"


# ---- events ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Received:
    """A decoded control message from ``identity``."""

    identity: bytes
    msg: Message
    now: float
    wall: float


@dataclass(frozen=True)
class Malformed:
    """A control message that did not decode (dropped and counted)."""


@dataclass(frozen=True)
class ForeignJoin:
    """A node's join in another protocol version (refused with a reply it can read)."""

    identity: bytes
    version: int


@dataclass(frozen=True)
class HandshakeFailed:
    """A connection failed the CurveZMQ handshake (wrong or no token, or not llmcluster)."""

    endpoint: str
    now: float


@dataclass(frozen=True)
class AgentLost:
    """The supervisor saw a node agent die (a local agent's exit)."""

    node: int
    reason: str
    exitcode: int
    now: float


@dataclass(frozen=True)
class Tick:
    """Time passed (the loop's poll returned). ``read_up_to``: the time by which every control
    message sent has been read (None: ``now``); silence is judged against it, so a backlog of
    messages not read yet (a burst of samples, bounded batches) never makes their senders
    look silent."""

    now: float
    wall: float
    read_up_to: float | None = None


@dataclass(frozen=True)
class Interrupted:
    """A signal asked the run to stop (exit code 128 + signal)."""

    signal_name: str
    exit_code: int
    now: float


@dataclass(frozen=True)
class DisplayStatus:
    """What the telemetry hub knows of the display: present, and shown up to ``acked``."""

    present: bool
    acked: int


Event = (
    Received
    | Malformed
    | ForeignJoin
    | HandshakeFailed
    | AgentLost
    | Tick
    | Interrupted
    | DisplayStatus
)


# ---- actions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    """Send one control message (the same body to every identity, encoded once)."""

    identities: tuple[bytes, ...]
    kind: Kind
    body: Any


@dataclass(frozen=True)
class Publish:
    """Publish an output record on the telemetry hub."""

    record: Record


@dataclass(frozen=True)
class NewAttempt:
    """The worker group restarts: the hub's display must belong to ``attempt``."""

    attempt: int


@dataclass(frozen=True)
class ReplaceAgent:
    """Start (locally) or await (remotely) a new agent for a lost node."""

    node: int


@dataclass(frozen=True)
class Say:
    """A line on stderr: always (``warn``), or only for a standalone coordinator."""

    text: str
    warn: bool = False


@dataclass(frozen=True)
class ShowUnshown:
    """Show every record the display never acknowledged, then forget them."""


Action = Send | Publish | NewAttempt | ReplaceAgent | Say | ShowUnshown


# ---- what the coordinator keeps about its peers ------------------------------------------
@dataclass
class AgentPeer:
    """A node agent that joined."""

    identity: bytes
    last_seen: float
    host: str
    pid: int


@dataclass
class RankPeer:
    """A rank of the current attempt."""

    identity: bytes
    last_seen: float
    info: RankInfo | None = None
    endpoints: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    done: bool = False
    exited: bool = False


@dataclass(frozen=True)
class Settings:
    """How this coordinator was launched (never consulted for health decisions)."""

    run_id: str
    speed: float
    launch_wall: float  # when the command started (wall clock)
    start_time: float  # where the simulated timeline begins (backfilled into the past)
    secret: str = ""  # the run's own: derives each attempt's and node's join nonce
    join_timeout_s: float = 0.0
    simulated_hosts: bool = False  # every node on this machine: show the plan's host names
    publish_endpoint: str = ""
    standalone: bool = False  # a coordinator of its own reports joins, failures and the end
    agent_pid: int = 0
