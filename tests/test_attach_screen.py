"""attach's grid and nvidia-smi views: the latest state at most REDRAW_S apart, never lost."""

from __future__ import annotations

import io

import pytest
from render_fixtures import make_ranks, make_run, make_summary
from rich.console import Console

from llmcluster import attach
from llmcluster.config import RunConfig
from llmcluster.render.smi import smi_lines
from llmcluster.wire.records import RunRecord


class Clock:
    """attach's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(attach.time, "monotonic", fake)
    return fake


def _screen(view: str) -> tuple[attach._Screen, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=160, color_system=None)
    return attach._Screen(RunConfig(ranks=16), console, view, 0), out


def _marker(view: str, run: RunRecord, step: int) -> str:
    """A line only the frame of ``step`` holds (the grid's title; nvidia-smi's clock)."""
    if view == "grid":
        return f"GPUs @ step {step} "
    return smi_lines(run, make_ranks(run, step), 0)[0].strip()


def _frames(text: str, view: str, run: RunRecord) -> list[int]:
    """The step of every frame drawn, in order."""
    found = [(text.find(_marker(view, run, n)), n) for n in range(1, 11)]
    return [n for at, n in sorted(found) if at >= 0]


@pytest.mark.parametrize("view", ["grid", "smi"])
def test_a_burst_of_states_draws_one_frame_now_and_the_latest_when_due(
    clock: Clock, view: str
) -> None:
    run = make_run(16)
    screen, out = _screen(view)
    screen.show(run)
    for step in range(1, 11):  # ten states within one frame's time
        screen.show(make_ranks(run, step))
        screen.tick()
    assert _frames(out.getvalue(), view, run) == [1], "the first state is drawn at once"
    drawn = out.getvalue()
    clock.now += attach.REDRAW_S / 2
    screen.tick()
    assert out.getvalue() == drawn, "a frame before REDRAW_S"
    clock.now += attach.REDRAW_S
    screen.tick()
    assert out.getvalue() != drawn
    assert _frames(out.getvalue(), view, run) == [1, 10], "the latest state, not an older one"
    drawn = out.getvalue()
    clock.now += attach.REDRAW_S * 4
    screen.tick()
    assert out.getvalue() == drawn, "nothing new: no frame"


def test_the_summary_comes_after_the_last_state_however_recent(clock: Clock) -> None:
    run = make_run(16)
    screen, out = _screen("grid")
    screen.show(run)
    screen.show(make_ranks(run, 1))
    screen.show(make_ranks(run, 2))  # not due yet
    screen.show(make_summary())
    text = out.getvalue()
    assert _frames(text, "grid", run) == [1, 2]
    assert text.index("GPUs @ step 2 ") < text.index("Exit")
