"""Frame codec: ``encode(Message) -> frames`` and ``decode(frames) -> Message``.

Frame layout (one ZeroMQ multipart message)::

    [0] MAGIC + version byte, then a msgpack map
        b"LLMC\\x01" + {"k": kind, "run": run_id, "att": attempt, "src": sender, ...body}
    [1:] raw buffers: numpy array bytes (peer collectives only)

``decode`` checks frame count, sizes, the header, the run id and the body's
schema before anything uses the message; every failure raises ``DecodeError``
so that the caller can drop the message and count it. Nothing here asserts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

from llmcluster.wire.messages import (
    MAGIC,
    MAX_CONTROL_BYTES,
    NON_NEGATIVE,
    PROTOCOL_VERSION,
    SCHEMAS,
    Kind,
)

HEADER = MAGIC + bytes([PROTOCOL_VERSION])
_SNDMORE = int(zmq.SNDMORE)  # a plain int: pyzmq's send_multipart pays for enum arithmetic
_RESERVED = ("k", "run", "att", "src")
_KINDS = {kind.value: kind for kind in Kind}


class DecodeError(ValueError):
    """A frame set that is not a valid message of this run; the caller drops it."""


@dataclass(slots=True)
class Message:
    """One decoded message. ``src`` is the sender's global rank (-1: coordinator, -2: agent)."""

    kind: Kind
    run_id: str
    attempt: int
    src: int
    body: dict[str, Any]
    buffers: list[Any] = field(default_factory=list)


def encode(msg: Message) -> list[Any]:
    """Return the frames for ``msg`` (buffers are passed through without copying)."""
    head = {"k": msg.kind.value, "run": msg.run_id, "att": msg.attempt, "src": msg.src}
    head.update(msg.body)
    return [HEADER + msgpack.packb(head, use_bin_type=True), *msg.buffers]


def send_frames(sock: zmq.Socket, frames: list[Any], *, copy: bool = True) -> None:
    """``sock.send_multipart(frames)`` without its per-frame overhead (hot on every step)."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        sock.send(frame, _SNDMORE if index < last else 0, copy=copy)


def decode(
    frames: list[Any],
    *,
    run_id: str | None,
    max_body: int = MAX_CONTROL_BYTES,
    max_buffers: int = 1,
) -> Message:
    """Validate and decode ``frames``; raise ``DecodeError`` on anything foreign or malformed.

    ``run_id=None`` accepts any run (used by an agent before it has been welcomed).
    """
    if not 1 <= len(frames) <= 1 + max_buffers:
        raise DecodeError(f"bad frame count {len(frames)}")
    head = decode_head(bytes(frames[0]), run_id=run_id, max_body=max_body)
    kind = head["k"]
    _check_schema(kind, head)
    body = {key: value for key, value in head.items() if key not in _RESERVED}
    return Message(kind, head["run"], head["att"], head["src"], body, list(frames[1:]))


def decode_head(first: bytes, *, run_id: str | None, max_body: int = MAX_CONTROL_BYTES) -> dict:
    """Check and unpack the first frame; ``head["k"]`` is replaced by its ``Kind``.

    The peer mesh calls this directly so it can choose how to receive the data frame.
    """
    if first[:5] != HEADER:
        raise DecodeError("bad header (foreign sender or protocol version)")
    if len(first) - 5 > max_body:
        raise DecodeError(f"body of {len(first) - 5} bytes exceeds {max_body}")
    try:
        head = msgpack.unpackb(
            memoryview(first)[5:], raw=False, strict_map_key=True, max_bin_len=max_body
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"undecodable body: {type(exc).__name__}") from None
    if not isinstance(head, dict):
        raise DecodeError("body is not a map")
    kind = _KINDS.get(head.get("k"))  # type: ignore[arg-type]
    if kind is None:
        raise DecodeError(f"unknown kind {head.get('k')!r}")
    run, attempt, src = head.get("run"), head.get("att"), head.get("src")
    if not isinstance(run, str) or (run_id is not None and run != run_id):
        raise DecodeError("message from another run")
    if type(attempt) is not int or attempt < 0 or type(src) is not int or src < -2:
        raise DecodeError("bad attempt or source")
    head["k"] = kind
    return head


def _check_schema(kind: Kind, head: dict[str, Any]) -> None:
    for name, types in SCHEMAS[kind].items():
        value = head.get(name)
        # bool is an int subclass: accept it only where bool is asked for
        if (
            value is None
            or not isinstance(value, types)
            or (isinstance(value, bool) and bool not in types)
        ):
            raise DecodeError(f"{kind.value}: field {name!r} missing or of wrong type")
        if name in NON_NEGATIVE and value < 0:
            raise DecodeError(f"{kind.value}: field {name!r} out of range")
