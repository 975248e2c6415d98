"""asciicast v2: the header and timed events the spec defines, replayed by a terminal emulator."""

from __future__ import annotations

import json
import os
import re

import pyte
from rich.console import Console
from rich.table import Table

from llmcluster.render.cast import CastWriter


def _read(path: str) -> tuple[dict, list[list]]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def test_header_and_events_follow_asciicast_v2(tmp_path: str) -> None:
    ticks = iter([10.0, 10.25, 11.5, 11.5])
    path = os.path.join(tmp_path, "run.cast")
    with CastWriter(path, width=100, height=30, title="llmcluster", clock=lambda: next(ticks),
                    timestamp=1700000000) as cast:  # fmt: skip
        cast.write("\x1b[1mstep 1\x1b[0m\n")
        cast.write("")  # nothing to show: no event
        cast.write("step 2\n")
    header, events = _read(path)
    assert header["version"] == 2 and header["width"] == 100 and header["height"] == 30
    assert header["timestamp"] == 1700000000 and header["title"] == "llmcluster"
    assert set(header["env"]) == {"TERM", "SHELL"}
    assert events == [[0.25, "o", "\x1b[1mstep 1\x1b[0m\r\n"], [1.5, "o", "step 2\r\n"]]
    with open(path, encoding="utf-8") as f:
        assert "\\u001b" in f.read()  # escapes as the spec's examples write them


def test_replayed_cast_reproduces_the_text_record(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "run.cast")
    table = Table(title="Training summary")
    table.add_column("what")
    table.add_column("value")
    table.add_row("Steps", "250")
    table.add_row("Final loss / PPL", "2.4631 / 11.74")
    text = Console(width=80, record=True, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    with CastWriter(path, width=80, height=24) as cast:
        shown = Console(file=cast, width=80, force_terminal=True, color_system="truecolor")
        for console in (shown, text):
            console.print("[bold green]iteration 1/250[/] | lm loss: 9.87E+00")
            console.print(table)
    header, events = _read(path)
    screen = pyte.Screen(header["width"], header["height"])
    stream = pyte.Stream(screen)
    for _, code, data in events:
        assert code == "o"
        stream.feed(data)
    expected = text.export_text().rstrip("\n").split("\n")
    assert [row.rstrip() for row in screen.display[: len(expected)]] == [
        line.rstrip() for line in expected
    ]
    assert any("\x1b[" in data for _, _, data in events)  # the colours were recorded


def test_a_cast_recording_replays_to_the_text_recordings_final_screen(tmp_path) -> None:
    from conftest import run_cli

    common = ("--ranks", "4", "--steps", "6", "--speed", "1e6", "--seed", "5",
              "--start-time", "2026-11-30T09:00:00")  # fmt: skip
    env = {"COLUMNS": "100", "LINES": "30"}
    cast, text = os.path.join(tmp_path, "run.cast"), os.path.join(tmp_path, "run.txt")
    for target in (cast, text):
        done = run_cli(*common, "--record", target, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
    header, events = _read(cast)
    assert header["version"] == 2 and (header["width"], header["height"]) == (100, 30)
    assert [e[0] for e in events] == sorted(e[0] for e in events)  # times since the start
    screen = pyte.Screen(100, 30)
    stream = pyte.Stream(screen)
    for _, code, data in events:
        assert code == "o"
        stream.feed(data)
    shown = [line.rstrip() for line in screen.display]
    with open(text, encoding="utf-8") as f:
        recorded = [line.rstrip() for line in f.read().splitlines()]
    tail = [line for line in recorded if line][-20:]
    assert _same_but_ids([line for line in shown if line][-20:], tail)


def _same_but_ids(shown: list[str], recorded: list[str]) -> bool:
    """Equal once run ids, pids and wall-clock figures (which differ from run to run) are
    masked."""

    def mask(line: str) -> str:
        return re.sub(r"[0-9a-f]{12}|\d+(\.\d+)?s\b|\d{3,}", "#", line)

    return [mask(x) for x in shown] == [mask(x) for x in recorded]
