"""Frame codec: ``encode(Message) -> frames`` and ``decode(frames) -> Message``.

Frame layout (one ZeroMQ multipart message)::

    [0] MAGIC + version byte, then a msgpack map
        b"LLMC\\x02" + {"k": kind, "run": run_id, "att": attempt, "src": sender, ...body}

``decode`` checks frame count, size, the header, the run id and every body field (through
the body's dataclass, ``messages.BODIES``) before anything uses the message; every failure
raises ``DecodeError`` so that the caller can drop the message and count it; a message of
another protocol version raises ``ForeignVersion`` (its kind named), so that a coordinator can
refuse a foreign node's join. REFUSED is the one kind every version reads (its form, one
``reason`` string, never changes), so that a refused node of any version learns why. Nothing
here asserts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from llmcluster.wire.messages import BODIES, MAGIC, MAX_CONTROL_BYTES, PROTOCOL_VERSION, Kind
from llmcluster.wire.schema import DecodeError, from_wire, to_wire
from llmcluster.wire.schema import prepare as prepare_body

HEADER = MAGIC + bytes([PROTOCOL_VERSION])
_SNDMORE = int(zmq.SNDMORE)  # a plain int: pyzmq's send_multipart pays for enum arithmetic
_RESERVED = ("k", "run", "att", "src")
_KINDS = {kind.value: kind for kind in Kind}


class ForeignVersion(DecodeError):
    """An llmcluster message of another protocol version (``kind``: its kind's name, if any)."""

    def __init__(self, version: int, kind: str) -> None:
        super().__init__(f"protocol version {version}, not {PROTOCOL_VERSION}")
        self.version, self.kind = version, kind


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded message. ``src`` is the sender: a global rank, or one of the ``*_SRC``."""

    kind: Kind
    run_id: str
    attempt: int
    src: int
    body: Any


def prepare() -> None:
    """Build every message body's checkers now (before forking ranks: ``schema.prepare``)."""
    for cls in BODIES.values():
        prepare_body(cls)


def encode(msg: Message) -> list[bytes]:
    """Return the frames for ``msg``."""
    head = {"k": msg.kind.value, "run": msg.run_id, "att": msg.attempt, "src": msg.src}
    head.update(to_wire(msg.body))
    return [HEADER + msgpack.packb(head, use_bin_type=True)]


def send_frames(sock: zmq.Socket, frames: list[Any], *, copy: bool = True) -> None:
    """``sock.send_multipart(frames)`` without its per-frame overhead (hot on every step)."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        sock.send(frame, _SNDMORE if index < last else 0, copy=copy)


def decode(
    frames: list[Any],
    *,
    run_id: str | None,
    world_size: int | None = None,
    max_body: int = MAX_CONTROL_BYTES,
) -> Message:
    """Validate and decode ``frames``; raise ``DecodeError`` on anything foreign or malformed.

    ``run_id=None`` accepts any run (an agent before it has been welcomed, a node's join).
    ``world_size`` bounds every rank field of the body.
    """
    if len(frames) != 1:
        raise DecodeError(f"bad frame count {len(frames)}")
    head = decode_head(bytes(frames[0]), run_id=run_id, max_body=max_body)
    kind = head["k"]
    body = from_wire(BODIES[kind], head, world_size=world_size)
    return Message(kind, head["run"], head["att"], head["src"], body)


def decode_head(first: bytes, *, run_id: str | None, max_body: int = MAX_CONTROL_BYTES) -> dict:
    """Check and unpack the first frame; ``head["k"]`` is replaced by its ``Kind``."""
    if first[:4] != MAGIC or len(first) < 5:
        raise DecodeError("bad header (foreign sender)")
    version = first[4]
    if len(first) - 5 > max_body:
        raise DecodeError(f"body of {len(first) - 5} bytes exceeds {max_body}")
    try:
        head = msgpack.unpackb(
            memoryview(first)[5:], raw=False, strict_map_key=True, max_bin_len=max_body
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        if version != PROTOCOL_VERSION:
            raise ForeignVersion(version, "") from None
        raise DecodeError(f"undecodable body: {type(exc).__name__}") from None
    if not isinstance(head, dict):
        raise DecodeError("body is not a map")
    if version != PROTOCOL_VERSION and head.get("k") != Kind.REFUSED.value:
        raise ForeignVersion(version, str(head.get("k")))
    kind = _KINDS.get(head.get("k"))  # type: ignore[arg-type]
    if kind is None:
        raise DecodeError(f"unknown kind {head.get('k')!r}")
    run, attempt, src = head.get("run"), head.get("att"), head.get("src")
    if not isinstance(run, str) or (run_id is not None and run != run_id):
        raise DecodeError("message from another run")
    if type(attempt) is not int or not 0 <= attempt < 1 << 31:
        raise DecodeError("bad attempt")
    if type(src) is not int or not -3 <= src < 1 << 31:
        raise DecodeError("bad source")
    head["k"] = kind
    return head
