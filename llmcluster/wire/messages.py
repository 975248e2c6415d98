"""Message kinds of the three planes and the schema each body must satisfy.

A body is a msgpack map. ``SCHEMAS[kind]`` names every required field with the
Python types accepted for it (msgpack gives int, float, str, bytes, bool, list,
dict, None). Unknown extra fields are allowed so that newer peers can add
information; missing or wrongly typed fields make the message invalid.
"""

from __future__ import annotations

from enum import Enum

PROTOCOL_VERSION = 1
MAGIC = b"LLMC"
MAX_CONTROL_BYTES = (
    4 * 1024 * 1024
)  # largest control/telemetry message (address book at 1024+ ranks)
MAX_PEER_BYTES = 1 << 30  # largest peer (collective) frame: 1 GiB gradient bucket


class Kind(str, Enum):
    """Every message kind on the wire, by plane."""

    # control plane: node agent <-> coordinator
    AGENT_JOIN = "agent_join"
    AGENT_WELCOME = "agent_welcome"
    AGENT_EXIT = "agent_exit"  # a local rank process ended (pid, exit status)
    SPAWN = "spawn"  # coordinator -> agent: (re)start the local ranks for an attempt
    KILL = "kill"  # coordinator -> agent: terminate the local ranks
    # control plane: rank <-> coordinator
    JOIN = "join"
    BOOK = "book"  # address book: every rank's peer endpoint
    READY = "ready"  # rank passed the first barrier
    STOP = "stop"  # coordinator -> ranks: stop at the next step boundary
    EXIT = "exit"  # coordinator -> everyone: leave now
    FAILURE = "failure"  # rank -> coordinator: root cause before it exits
    DONE = "done"  # rank -> coordinator: finished its last step
    RENDERED = "rendered"  # rank 0 -> coordinator: the summary is on screen
    HEARTBEAT = "heartbeat"
    # telemetry plane
    STATS = "stats"  # rank -> coordinator, one per step
    PHASE = "phase"  # rank 0 -> coordinator: a phase (init, eval, checkpoint, export) began/ended
    RECORD = "record"  # coordinator -> observers (rank 0): one output record
    # the training plane (rank <-> rank) uses binary frames: llmcluster.comm.frames


_INT = (int,)
_NUM = (int, float)
_STR = (str,)
_LIST = (list, tuple)
_DICT = (dict,)
_BOOL = (bool,)

SCHEMAS: dict[Kind, dict[str, tuple[type, ...]]] = {
    Kind.AGENT_JOIN: {"node": _INT, "host": _STR, "pid": _INT, "token": _STR},
    Kind.AGENT_WELCOME: {"node": _INT, "config": _DICT},
    Kind.AGENT_EXIT: {"rank": _INT, "pid": _INT, "exitcode": _INT},
    Kind.SPAWN: {"attempt": _INT, "start_step": _INT, "speed": _NUM},
    Kind.KILL: {"reason": _STR},
    Kind.JOIN: {
        "rank": _INT,
        "local_rank": _INT,
        "node": _INT,
        "pid": _INT,
        "endpoints": _LIST,
        "host": _STR,
        "env": _DICT,
    },
    Kind.BOOK: {"endpoints": _LIST, "nodes": _LIST},
    Kind.READY: {"rank": _INT},
    Kind.STOP: {"reason": _STR},
    Kind.EXIT: {"code": _INT},
    Kind.FAILURE: {"rank": _INT, "reason": _STR, "exitcode": _INT},
    Kind.DONE: {"rank": _INT, "step": _INT},
    Kind.RENDERED: {"rank": _INT},
    Kind.HEARTBEAT: {"t": _NUM},
    Kind.STATS: {"rank": _INT, "step": _INT, "stats": _DICT},
    Kind.PHASE: {"rank": _INT, "step": _INT, "name": _STR, "state": _STR, "data": _DICT},
    Kind.RECORD: {"record": _DICT, "seq": _INT},
}

# Fields whose integer values must be non-negative (ranks, steps, pids, sizes).
NON_NEGATIVE = frozenset({"rank", "local_rank", "pid", "step", "seq", "phase"})
