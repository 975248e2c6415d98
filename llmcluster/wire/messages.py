"""Message kinds of the control and telemetry planes, and one frozen body dataclass per kind.

A message is a header (kind, run id, attempt, sender) plus its body's fields, one msgpack
map in one frame (``codec``). ``BODIES[kind]`` is the body's dataclass; ``schema.from_wire``
checks every field on the way in. Unknown extra fields are ignored so that newer peers can
add information. The training plane (rank <-> rank collectives) uses the binary frames of
``llmcluster.comm.frames`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from llmcluster.wire.records import PhaseName
from llmcluster.wire.schema import num, rank_field

PROTOCOL_VERSION = 3
MAGIC = b"LLMC"
HEARTBEAT_S = 1.0  # every peer beats once a second each way; silence is judged against a timeout
MAX_CONTROL_BYTES = 4 * 1024 * 1024  # largest control/telemetry message (address book, 1024+)
MAX_PEER_BYTES = 1 << 30  # largest peer (collective) frame: a 1 GiB gradient bucket

COORDINATOR_SRC = -1  # the sender of coordinator messages
AGENT_SRC = -2  # node agents
OBSERVER_SRC = -3  # read-only telemetry clients (the display rank says its rank instead)
MAX_SECONDS = 1e7
STEP_REDUCTION_VALUES = 5  # a step's fused allreduce: loss x tokens, tokens, grad^2, time, stop


class Kind(str, Enum):
    """Every message kind on the wire, by plane."""

    # control plane: node agent <-> coordinator
    AGENT_JOIN = "agent_join"
    AGENT_WELCOME = "agent_welcome"
    REFUSED = "refused"  # coordinator -> agent: not admitted, and why (readable by any version)
    AGENT_EXIT = "agent_exit"  # a local rank process ended (pid, exit status)
    SPAWN = "spawn"  # coordinator -> agent: (re)start the local ranks for an attempt
    KILL = "kill"  # coordinator -> agent: terminate the local ranks
    # control plane: rank <-> coordinator
    JOIN = "join"
    BOOK = "book"  # address book: the peer endpoints a node's ranks send to
    READY = "ready"  # rank passed the first barrier
    GO = "go"  # coordinator -> ranks: every rank is ready (init_process_group's store barrier)
    STOP = "stop"  # coordinator -> ranks: stop at the next step boundary
    EXIT = "exit"  # coordinator -> everyone: leave now
    FAILURE = "failure"  # rank -> coordinator: root cause before it exits
    DONE = "done"  # rank -> coordinator: finished its last step
    HEARTBEAT = "heartbeat"
    # telemetry plane: ranks -> coordinator
    STATS = "stats"  # one per step and per sample during a phase
    PHASE = "phase"  # rank 0: a phase (init, eval, checkpoint, export) began or ended
    # telemetry plane: coordinator <-> display and observers (llmcluster.telemetry)
    SUBSCRIBE = "subscribe"  # a display or observer joins the record hub
    RECORD = "record"  # hub -> subscriber: one output record
    ACK = "ack"  # display -> hub: records up to seq are on screen
    UNSUBSCRIBE = "unsubscribe"


@dataclass(frozen=True, kw_only=True)
class AgentJoin:
    """A node agent asks to join (node -1: assign one) of a cluster of this shape (0: any).

    No token: over TCP, holding the token is what completing the CurveZMQ handshake proves."""

    node: int = num(-1, 4095)
    host: str
    pid: int = num(0)
    nnodes: int = num(0, 4096, default=0)
    nproc_per_node: int = num(0, 4096, default=0)


class RefusedFor(str, Enum):
    """Why a join was refused, for programs (``reason`` says it for people)."""

    SHAPE = "shape"  # the node's --nnodes/--nproc-per-node differ from the run's
    NODE_RANK = "node_rank"  # its node rank is outside the run
    TAKEN = "taken"  # another node holds that node rank
    FULL = "full"  # (auto) every node rank is held
    VERSION = "version"  # another protocol version


@dataclass(frozen=True, kw_only=True)
class Refused:
    """The coordinator refused an agent's join: the one-line reason the node exits with, and
    its ``RefusedFor`` value ("" from a coordinator that gives none). Plain text on the wire,
    not the enum: every version must read a refusal, a newer one's codes included."""

    reason: str
    code: str = ""


@dataclass(frozen=True, kw_only=True)
class AgentWelcome:
    """The coordinator admits an agent as ``node`` of the run configured by ``config``."""

    node: int = num(0, 4095)
    config: dict[str, Any]
    publish: str


@dataclass(frozen=True, kw_only=True)
class AgentExit:
    """A local rank process ended (torch's convention: minus the signal for a killed one)."""

    rank: int = rank_field()
    pid: int = num(0)
    exitcode: int = num(-128, 255)
    error_file: str = ""  # the rank's error.json (torchrun's reply file), "" if none


@dataclass(frozen=True, kw_only=True)
class Spawn:
    """Start the local ranks for ``attempt`` from ``start_step``; ``nonce`` (this node's,
    this attempt's) gives each rank the proof it joins with (``control.security``)."""

    attempt: int = num(0)
    nonce: str
    start_step: int = num(1)
    speed: float = num(1e-6, 1e9)
    sim_time: float = num(0)  # the simulated clock at the attempt's start


@dataclass(frozen=True, kw_only=True)
class Reason:
    """KILL and STOP: why."""

    reason: str


@dataclass(frozen=True, kw_only=True)
class Join:
    """A rank joins: where it is and where its peer inbox listens."""

    rank: int = rank_field()
    local_rank: int = num(0, 4095)
    node: int = num(0, 4095)
    pid: int = num(0)
    endpoints: tuple[str, ...]
    host: str
    env: dict[str, str]
    proof: str  # that this process is the one its agent spawned for ``rank``


@dataclass(frozen=True, kw_only=True)
class Book:
    """A node's address book: the endpoints of the ranks its ranks send to (ascending
    ``ranks``, ``comm.topology.node_book_ranks``), not the whole world's."""

    ranks: tuple[int, ...]
    endpoints: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, kw_only=True)
class RankOnly:
    """READY: the sender passed the first barrier."""

    rank: int = rank_field()


@dataclass(frozen=True, kw_only=True)
class Exit:
    """Leave now, with this exit code."""

    code: int = num(0, 255)


@dataclass(frozen=True, kw_only=True)
class Failure:
    """A rank's own root cause, sent before it exits."""

    rank: int = rank_field()
    reason: str
    exitcode: int = num(-128, 255)
    error_file: str = ""  # the error.json it wrote, "" if none


@dataclass(frozen=True, kw_only=True)
class Done:
    """The rank finished its last step."""

    rank: int = rank_field()
    step: int = num(0)


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """I am alive (wall time of the sender)."""

    t: float = num(0)


@dataclass(frozen=True, kw_only=True)
class RankStats:
    """One rank's figures for a step, or a telemetry sample during a phase."""

    loss: float = num(0, 1000, nan_ok=True)
    local_loss: float = num(0, 1000, nan_ok=True)
    tokens: int = num(0)
    grad_norm: float = num(0, nan_ok=True)
    compute_s: float = num(0, MAX_SECONDS)
    step_time_s: float = num(0, MAX_SECONDS)
    comm_s: float = num(0, MAX_SECONDS)
    exposed_comm_s: float = num(0, MAX_SECONDS)
    arrive: float = num(0)
    wait_ms: float = num(0, 1e9)
    util: float = num(0, 100)
    temp_c: float = num(-50, 200)
    power_w: float = num(0, 10_000)
    mem_used_gb: float = num(0, 1e5)
    mem_total_gb: float = num(0, 1e5)
    sm_clock_mhz: int = num(0, 100_000)
    throttled: bool
    seq: int = num(0)
    dropped: int = num(0)


@dataclass(frozen=True, kw_only=True)
class Stats:
    """STATS: ``stats`` for ``step`` (``phase`` and ``sample`` set for a sample between steps)."""

    rank: int = rank_field()
    step: int = num(0)
    stats: RankStats
    phase: PhaseName | None = None
    sample: int = num(0, 1000, default=0)
    phase_elapsed_s: float = num(0, MAX_SECONDS, default=0.0)  # simulated, into the phase


class PhaseState(str, Enum):
    """Whether a PHASE message opens or closes its phase."""

    BEGIN = "begin"
    END = "end"


@dataclass(frozen=True, kw_only=True)
class Phase:
    """Rank 0 reports that a phase began or ended (the figures are the simulation's)."""

    rank: int = rank_field()
    step: int = num(0)
    name: PhaseName
    state: PhaseState
    val_loss: float | None = num(0, 100, default=None)


@dataclass(frozen=True, kw_only=True)
class Subscribe:
    """A display (``rank`` 0 of the current attempt) or a read-only observer joins the hub."""

    role: str  # "display" | "observer"
    rank: int = num(-1, default=-1)
    proof: str = ""  # the display: rank 0's join proof for the current attempt


@dataclass(frozen=True, kw_only=True)
class RecordBody:
    """One output record (its wire map) and its sequence number on the hub."""

    record: dict[str, Any]
    seq: int = num(0)
    snapshot: bool = False  # part of the catch-up a new (or lagging) observer gets first


@dataclass(frozen=True, kw_only=True)
class Ack:
    """The display has shown every record up to ``seq``."""

    seq: int = num(0)


@dataclass(frozen=True, kw_only=True)
class Empty:
    """A message whose kind says everything."""


BODIES: dict[Kind, type] = {
    Kind.AGENT_JOIN: AgentJoin,
    Kind.AGENT_WELCOME: AgentWelcome,
    Kind.REFUSED: Refused,
    Kind.AGENT_EXIT: AgentExit,
    Kind.SPAWN: Spawn,
    Kind.KILL: Reason,
    Kind.JOIN: Join,
    Kind.BOOK: Book,
    Kind.READY: RankOnly,
    Kind.GO: Empty,
    Kind.STOP: Reason,
    Kind.EXIT: Exit,
    Kind.FAILURE: Failure,
    Kind.DONE: Done,
    Kind.HEARTBEAT: Heartbeat,
    Kind.STATS: Stats,
    Kind.PHASE: Phase,
    Kind.SUBSCRIBE: Subscribe,
    Kind.RECORD: RecordBody,
    Kind.ACK: Ack,
    Kind.UNSUBSCRIBE: Empty,
}
