"""The codec accepts exactly the messages of this run and rejects everything else cleanly."""

from __future__ import annotations

import contextlib
import random

import msgpack
import pytest

from llmcluster.wire import PROTOCOL_VERSION, DecodeError, Kind, Message, decode, encode
from llmcluster.wire.codec import HEADER, ForeignVersion
from llmcluster.wire.messages import MAGIC, Book, Join, RankOnly, Refused


def _msg(kind: Kind = Kind.READY, body: object = None) -> Message:
    return Message(kind, "run1", 0, 3, body or RankOnly(rank=3))


def test_roundtrip_keeps_every_field() -> None:
    body = Join(rank=3, local_rank=3, node=0, pid=42, endpoints=("ipc:///x",), host="h",
                env={"RANK": "3"}, proof="p")  # fmt: skip
    got = decode(encode(_msg(Kind.JOIN, body)), run_id="run1")
    assert (got.kind, got.run_id, got.attempt, got.src) == (Kind.JOIN, "run1", 0, 3)
    assert got.body == body


def test_rank_beyond_the_world_is_rejected() -> None:
    with pytest.raises(DecodeError, match="outside a world of 2"):
        decode(encode(_msg()), run_id="run1", world_size=2)


def test_foreign_run_is_rejected() -> None:
    with pytest.raises(DecodeError, match="another run"):
        decode(encode(_msg()), run_id="other")


def test_wrong_version_header_is_rejected() -> None:
    frames = encode(_msg())
    frames[0] = b"LLMC\x01" + frames[0][5:]
    with pytest.raises(DecodeError, match="protocol version 1"):
        decode(frames, run_id="run1")


@pytest.mark.parametrize(
    "body",
    [{"rank": "3"}, {"rank": -1}, {"rank": True}, {}, {"rank": 3.5}],
)
def test_schema_violations_are_rejected(body: dict[str, object]) -> None:
    head = {"k": "ready", "run": "run1", "att": 0, "src": 1, **body}
    with pytest.raises(DecodeError):
        decode([HEADER + msgpack.packb(head)], run_id="run1")


def test_oversized_body_and_extra_frames_are_rejected() -> None:
    frames = encode(_msg())
    with pytest.raises(DecodeError):
        decode(frames, run_id="run1", max_body=4)
    with pytest.raises(DecodeError, match="frame count"):
        decode([*frames, b"x", b"y"], run_id="run1")


def test_random_garbage_never_raises_anything_but_decode_error() -> None:
    rng = random.Random(7)
    valid = encode(_msg())
    for _ in range(5000):
        choice = rng.random()
        if choice < 0.3:
            frames = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))]
        elif choice < 0.6:
            body = bytearray(valid[0][5:])
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.getrandbits(8)
            frames = [HEADER + bytes(body[: rng.randint(0, len(body))])]
        else:
            obj = rng.choice([[], 1, "x", {"k": 5}, {"k": "stats", "run": "run1"}, None, 2.5])
            frames = [HEADER + msgpack.packb(obj)]
        with contextlib.suppress(DecodeError):
            decode(frames, run_id="run1")


def _versioned(version: int, head: dict) -> list[bytes]:
    return [MAGIC + bytes([version]) + msgpack.packb(head)]


def test_another_protocol_version_is_named_and_a_refusal_of_any_version_is_read() -> None:
    join = {"k": "agent_join", "run": "", "att": 0, "src": -2, "node": 0, "host": "h", "pid": 1}
    with pytest.raises(ForeignVersion) as foreign:
        decode(_versioned(PROTOCOL_VERSION + 1, join), run_id=None)
    assert (foreign.value.version, foreign.value.kind) == (PROTOCOL_VERSION + 1, "agent_join")
    assert decode(_versioned(PROTOCOL_VERSION, join), run_id=None).body.node == 0
    refused = {"k": "refused", "run": "x", "att": 0, "src": -1, "reason": "no"}
    for version in (1, PROTOCOL_VERSION, 200):
        assert decode(_versioned(version, refused), run_id=None).body == Refused(reason="no")


def test_prepared_checkers_spare_a_forked_rank_the_type_hints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An agent prepares every body's checkers before it forks: a rank's first book and
    join then decode without evaluating a type hint (each rank did it, and copied the pages)."""
    from llmcluster.wire import codec, schema

    schema._fields.cache_clear()
    schema._names.cache_clear()
    codec.prepare()

    def no_hints(cls: type) -> None:
        raise AssertionError(f"type hints of {cls.__name__} evaluated after prepare()")

    monkeypatch.setattr(schema.typing, "get_type_hints", no_hints)
    book = Book(ranks=(0, 5), endpoints=(("ipc:///r0",), ("ipc:///r5", "tcp://h:1")))
    join = Join(rank=3, local_rank=3, node=0, pid=42, endpoints=("ipc:///x",), host="h",
                env={"RANK": "3"}, proof="p")  # fmt: skip
    for kind, body in ((Kind.BOOK, book), (Kind.JOIN, join)):
        assert decode(encode(_msg(kind, body)), run_id="run1", world_size=8).body == body
