"""Whole writes into a pipe: a record is written in one go once it fits, never in part."""

from __future__ import annotations

import fcntl
import os
import pathlib
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from llmcluster.render import wholeline
from llmcluster.render.wholeline import F_GETPIPE_SZ, F_SETPIPE_SZ, fits, queued, write_whole
from llmcluster.worker.tail import Tailed, TailLog


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    fcntl.fcntl(write, F_SETPIPE_SZ, 64 * 1024)
    yield read, write
    os.close(read)
    os.close(write)


def _drain(fd: int, nbytes: int) -> bytes:
    data = b""
    while len(data) < nbytes:
        data += os.read(fd, nbytes - len(data))
    return data


def test_the_room_asked_for_counts_half_empty_slots() -> None:
    page = wholeline.PAGE
    assert fits(64 * 1024, 0, 64 * 1024 - 2 * page)
    assert not fits(64 * 1024, 0, 64 * 1024 - 2 * page + 1)
    assert not fits(64 * 1024, 20 * 1024, 30 * 1024)  # 30 KiB of room, but partly filled


def test_a_record_larger_than_the_pipe_grows_it_and_goes_whole(pipe: tuple[int, int]) -> None:
    read, write = pipe
    record = b"x" * (100 * 1024) + b"\n"  # no reader yet: a plain write would block part-way
    write_whole(write, record)
    assert fcntl.fcntl(write, F_GETPIPE_SZ) >= 2 * len(record)
    assert queued(write) == len(record)
    assert _drain(read, len(record)) == record


def test_a_writer_waits_for_room_without_writing_part(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A display killed while it waits leaves the pipe as it was: nothing of its record."""
    read, write = pipe
    first, second = b"a" * 40_000 + b"\n", b"b" * 20_000 + b"\n"
    assert os.write(write, first) == len(first)  # what the reader has not read yet
    waiting = threading.Event()
    monkeypatch.setattr(wholeline.time, "sleep", lambda _s: waiting.set())
    writer = threading.Thread(target=write_whole, args=(write, second), daemon=True)
    writer.start()
    assert waiting.wait(10), "the writer never waited for room"
    assert queued(write) == len(first)  # waiting, it has written none of its record
    assert _drain(read, len(first)) == first
    writer.join(10)
    assert not writer.is_alive()
    assert _drain(read, len(second)) == second


def test_a_writer_waiting_for_a_reader_that_left_gets_a_broken_pipe() -> None:
    read, write = os.pipe()
    try:
        fcntl.fcntl(write, F_SETPIPE_SZ, 64 * 1024)
        os.write(write, b"a" * 40_000)
        os.close(read)
        with pytest.raises(BrokenPipeError):
            write_whole(write, b"b" * 20_000)
    finally:
        os.close(write)


def test_the_agents_tee_writes_a_long_rank_line_whole(
    pipe: tuple[int, int], tmp_path: pathlib.Path
) -> None:
    """``--tee``: a rank's line longer than the console pipe's room reaches it in one piece
    (a plain write stopped part-way in the full pipe, waiting for a reader)."""
    read, write = pipe
    line = b"[default3]:" + b"z" * (100 * 1024)
    log = tmp_path / "stdout.log"
    log.write_bytes(b"z" * (100 * 1024) + b"\n")
    tail = TailLog([Tailed(str(log), "[default3]:", write)]).start()
    stopper = threading.Thread(target=tail.stop, daemon=True)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive(), "the tee stopped part-way into the pipe"
    assert queued(write) == len(line) + 1
    assert _drain(read, len(line) + 1) == line + b"\n"


_WRITER = """
import sys
from llmcluster.render.wholeline import write_line

sys.stdin.buffer.read(1)  # every writer starts at once
for index in range(1000):
    write_line(f"{sys.argv[1]}:{index}:" + "x" * 1500)
"""


def test_lines_of_processes_sharing_stderr_stay_whole_unbuffered() -> None:
    """The ranks and agent of a node share one stderr, and the project's image sets
    PYTHONUNBUFFERED, under which ``print`` writes a line's text and its newline apart."""
    read, write = os.pipe()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", _WRITER]
    writers = [
        subprocess.Popen([*command, str(n)], stderr=write, env=env, stdin=subprocess.PIPE)
        for n in range(6)
    ]
    os.close(write)
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write(b"g")
        writer.stdin.close()
    with os.fdopen(read, "rb") as source:
        lines = source.read().decode().splitlines()
    assert [w.wait(timeout=60) for w in writers] == [0] * 6
    assert len(lines) == 6 * 1000
    assert all(re.fullmatch(r"\d:\d+:x{1500}", line) for line in lines)
