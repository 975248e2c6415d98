"""The live dashboard (``--ui live``): header, progress, metrics, loss sparkline, GPU grid,
collective timings and a log tail (the style's own lines, from the launcher and NCCL on),
rebuilt from records.

``DashboardState.update`` folds records in (the ETA smooths the step time, so it does not
jump with one slow step); ``dashboard_renderable`` turns the state
into a rich renderable for a given width (80 to 200+ columns, one screen line per
``Text``, nothing wraps). The sink owns the ``rich.live.Live``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.text import Text

from llmcluster.render.base import Style
from llmcluster.render.fmt import (
    ascii_safe,
    duration,
    finite,
    human_bytes,
    human_count,
    iso,
    num,
    plural,
)
from llmcluster.render.grid import grid_segments
from llmcluster.render.styles import make_style
from llmcluster.wire.records import (
    CheckpointRecord,
    EvalRecord,
    FailureRecord,
    PhaseRecord,
    PlanInfo,
    RanksRecord,
    Record,
    RestartRecord,
    RunRecord,
    StepRecord,
    SummaryRecord,
)

SPARKS = "▁▂▃▄▅▆▇█"
ASCII_SPARKS = "_.-~=+*#"
LOG_TAIL = 8
ETA_SMOOTHING = 0.1  # weight of the newest step time in the ETA's moving average
LOSS_HISTORY = 240
GRID_STYLE = {
    "title": "bold",
    "host": "cyan",
    "util": "green",
    "low": "yellow",
    "temp": "green",
    "hot": "bold red",
    "plain": "",
    "!": "bold red",
    "*": "bold magenta",
    "^": "yellow",
}


def _due(done: int, total: int, interval: int) -> int:
    """How many steps after ``done`` end with an evaluation (or a checkpoint): every
    ``interval`` steps and the last step."""
    last = 1 if total % interval and done < total else 0
    return max(0, total // interval - done // interval) + last


@dataclass
class DashboardState:
    """Everything the dashboard shows, folded from records."""

    style: str = "default"
    run: RunRecord | None = None
    step: StepRecord | None = None
    ranks: RanksRecord | None = None
    phase: str = "starting"
    losses: deque[float] = field(default_factory=lambda: deque(maxlen=LOSS_HISTORY))
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))
    summary: SummaryRecord | None = None
    step_s: float = float("nan")  # smoothed simulated seconds per step
    eval_s: float = 0.0  # the latest evaluation's and checkpoint's durations
    save_s: float = 0.0
    renderer: Style = field(init=False)

    def __post_init__(self) -> None:
        self.renderer = make_style(self.style)

    def update(self, record: Record) -> None:
        """Fold one record in."""
        if isinstance(record, FailureRecord):
            self.phase = "failed"
            self.log.append(f"ERROR: rank {record.rank} on {record.host} failed: {record.reason}")
            return
        if isinstance(record, RestartRecord):
            self.phase = "restarting"
            self.log.append(f"restarting from step {record.resume_step} (attempt "
                            f"{record.attempt}/{record.max_restarts})")  # fmt: skip
            return
        if isinstance(record, SummaryRecord):
            self.summary, self.phase = record, "done"
            return
        if isinstance(record, RanksRecord):
            self.ranks = record
            return
        lines = self.renderer.lines(record)  # the style's own lines, launcher and NCCL included
        if isinstance(record, RunRecord):
            self.run, self.phase = record, "rendezvous"
        elif isinstance(record, StepRecord):
            self.step, self.phase = record, "training"
            self.step_s = (
                record.step_time_s
                if not finite(self.step_s)
                else ETA_SMOOTHING * record.step_time_s + (1 - ETA_SMOOTHING) * self.step_s
            )
            if finite(record.loss):
                self.losses.append(record.loss)
        elif isinstance(record, EvalRecord):
            self.eval_s = record.eval_s
        elif isinstance(record, CheckpointRecord):
            self.save_s = record.save_s
        elif isinstance(record, PhaseRecord):
            self.phase = record.name.value
        self.log.extend(lines)

    def eta_s(self) -> float:
        """Simulated seconds left: the smoothed step time over the steps left, plus the
        evaluations and checkpoints still due at their latest durations (NaN before a step)."""
        if self.step is None or self.run is None:
            return float("nan")
        plan: PlanInfo = self.run.plan
        done, total = self.step.step, plan.total_steps
        return (
            (total - done) * self.step_s
            + _due(done, total, plan.eval_interval) * self.eval_s
            + _due(done, total, plan.checkpoint_interval) * self.save_s
        )


def sparkline(values: list[float], width: int, *, ascii_only: bool) -> str:
    """The last ``width`` finite values as a one-line bar chart."""
    glyphs = ASCII_SPARKS if ascii_only else SPARKS
    values = [v for v in values[-width:] if finite(v)]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(
        glyphs[min(len(glyphs) - 1, int((v - low) / span * len(glyphs)))] for v in values
    )


def pack(fields: list[str], width: int, sep: str = "  ") -> list[str]:
    """Greedily join ``fields`` into as few lines of at most ``width`` as possible."""
    lines: list[str] = []
    for item in fields:
        if lines and len(lines[-1]) + len(sep) + len(item) <= width:
            lines[-1] += sep + item
        else:
            lines.append(item)
    return lines


def _bar(fraction: float, width: int, ascii_only: bool) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    full, empty = ("#", ".") if ascii_only else ("█", "░")
    return full * filled + empty * (width - filled)


def _grid(state: DashboardState, width: int, ascii_only: bool) -> list[Text]:
    if state.run is None or state.ranks is None:
        return [Text("waiting for the first step ...", style="dim")]
    rows = []
    for row in grid_segments(state.run, state.ranks, width=width):
        text = Text()
        for piece, tag in row:
            text.append(ascii_safe(piece) if ascii_only else piece, style=GRID_STYLE[tag])
        rows.append(text)
    return rows


def _progress(state: DashboardState, plan: PlanInfo, width: int,
              ascii_only: bool) -> list[Text]:  # fmt: skip
    total, interval = plan.total_steps, plan.eval_interval
    done = state.step.step if state.step else 0
    digits = len(str(total))
    bar_width = max(10, min(60, width - 50))
    into = done % interval if done % interval or not done else interval
    target = min(total, (done // interval + 1) * interval) if done < total else total
    return [
        Text(f"steps   {done:>{digits}}/{total} {_bar(done / total, bar_width, ascii_only)} "
             f"{100 * done / total:5.1f}%  ETA {duration(state.eta_s())} (sim)"),
        Text(f"segment {into:>{digits}}/{interval:<{digits}} "
             f"{_bar(into / interval, bar_width, ascii_only)} eval+ckpt @ {target}"),
    ]  # fmt: skip


def _metrics(step: StepRecord, width: int) -> list[Text]:
    coll = step.collective
    fields = [
        iso(step.time),
        f"loss {num(step.loss, '.4f')}",
        f"ppl {num(step.ppl, '.2f')}",
        f"lr {step.lr:.2e}",
        f"grad_norm {num(step.grad_norm, '.3f')}",
        f"tok/s {human_count(step.tokens_per_s)}",
        f"MFU {100 * step.mfu:.1f}%",
        f"step {step.step_time_s:.2f}s",
    ]
    collective = [
        f"allreduce {coll.algorithm} {human_bytes(coll.bytes)}",
        f"model {coll.model_ms:.1f} ms busbw {coll.busbw_gbs:.0f} GB/s |",
        f"measured wall {coll.wall_ms:.2f} ms (real ZeroMQ)",
    ]
    return [
        *(Text(line, style="bold green") for line in pack(fields, width)),
        *(Text(line) for line in pack(collective, width, sep=" ")),
    ]


def dashboard_renderable(state: DashboardState, *, width: int, ascii_only: bool) -> RenderableType:
    """The whole screen for ``state``, no line wider than ``width``."""
    run = state.run
    if run is None:
        return Text("llmcluster: waiting for the ranks to rendezvous ...", style="dim")
    model, gpu, plan = run.model, run.gpu, run.plan
    head = [
        f"llmcluster {run.run_id}",
        f"{model.name} ({human_count(model.params)})",
        f"{run.world_size} x {gpu.name} on {plural(run.nnodes, 'node')}",
        f"{plan.strategy} {plan.precision}",
        f"style {state.style}",
        f"seed {run.seed}",
        state.phase,
    ]
    parts: list[Text] = [Text(line, style="bold") for line in pack(head, width, sep=" | ")]
    parts += _progress(state, plan, width, ascii_only)
    if state.step:
        parts += _metrics(state.step, width)
        spark = sparkline(list(state.losses), max(10, width - 6), ascii_only=ascii_only)
        parts.append(Text(f"loss {spark}", style="blue"))
    parts += _grid(state, width, ascii_only)
    parts += [Text(line, style="dim") for line in state.log]
    for part in parts:
        if ascii_only:
            part.plain = ascii_safe(part.plain)
        part.no_wrap = True
        part.overflow = "crop" if ascii_only else "ellipsis"
        part.truncate(width, overflow=part.overflow)
    return Group(*parts)
