"""The live dashboard (``--ui live``): header, progress, metrics, loss sparkline, GPU grid,
collective timings and a log tail, rebuilt from records by pure functions.

``DashboardState.update`` folds records in; ``dashboard_renderable`` turns the state
into a rich renderable for a given width (80 to 200+ columns, one screen line per
``Text``, nothing wraps). The sink owns the ``rich.live.Live``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from llmcluster.render.fmt import ascii_safe, duration, finite, human_bytes, human_count, iso, num
from llmcluster.render.grid import grid_segments
from llmcluster.render.styles import STYLES

SPARKS = "▁▂▃▄▅▆▇█"
ASCII_SPARKS = "_.-~=+*#"
LOG_TAIL = 8
ETA_WINDOW = 20  # steps whose record times give the pace for the ETA
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


@dataclass
class DashboardState:
    """Everything the dashboard shows, folded from records."""

    style: str = "default"
    run: dict[str, Any] | None = None
    step: dict[str, Any] | None = None
    ranks: dict[str, Any] | None = None
    phase: str = "starting"
    losses: deque[float] = field(default_factory=lambda: deque(maxlen=LOSS_HISTORY))
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))
    summary: dict[str, Any] | None = None
    pace: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=ETA_WINDOW))

    def update(self, record: dict[str, Any]) -> None:
        """Fold one record in."""
        kind, style = record.get("type"), STYLES[self.style]
        if kind == "run":
            self.run, self.phase = record, "rendezvous"
            return
        run = self.run
        if kind == "summary":
            self.summary, self.phase = record, "done"
        if run is None:
            return
        if kind == "step":
            self.step, self.phase = record, "training"
            if self.pace and record["step"] <= self.pace[-1][0]:
                self.pace.clear()  # resumed from a checkpoint: the pace starts again
            self.pace.append((record["step"], record["time"]))
            if finite(record["loss"]):
                self.losses.append(record["loss"])
            self._log(style.step_line(run, record))
        elif kind == "ranks":
            self.ranks = record
        elif kind == "phase":
            self.phase = record["name"]
            self._log(style.phase_lines(run, record))
        elif kind == "eval":
            self._log(style.eval_lines(run, record))
        elif kind == "checkpoint":
            self._log(style.checkpoint_lines(run, record))
        elif kind == "export":
            self._log(style.export_lines(run, record))
        elif kind == "failure":
            self.phase = "failed"
            self._log([f"ERROR: rank {record['rank']} on {record['host']} failed: "
                       f"{record['reason']}"])  # fmt: skip
        elif kind == "restart":
            self.phase = "restarting"
            self._log([f"restarting from step {record['resume_step']} (attempt "
                       f"{record['attempt']}/{record['max_restarts']})"])  # fmt: skip
        elif kind == "log":
            self._log([f"{record.get('level', 'INFO')}: {record.get('text', '')}"])

    def _log(self, lines: list[str]) -> None:
        self.log.extend(lines)

    def eta_s(self) -> float:
        """Simulated seconds left at the pace of recent step records (NaN before a step)."""
        if self.step is None or self.run is None:
            return float("nan")
        left = self.run["plan"]["total_steps"] - self.step["step"]
        if len(self.pace) < 2:
            return left * self.step["step_time_s"]
        (first, t0), (last, t1) = self.pace[0], self.pace[-1]
        return left * (t1 - t0) / (last - first)


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


def _progress(state: DashboardState, plan: dict[str, Any], width: int,
              ascii_only: bool) -> list[Text]:  # fmt: skip
    total, interval = plan["total_steps"], plan["eval_interval"]
    done = state.step["step"] if state.step else 0
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


def _metrics(step: dict[str, Any], width: int) -> list[Text]:
    coll = step["collective"]
    fields = [
        iso(step["time"]),
        f"loss {num(step['loss'], '.4f')}",
        f"ppl {num(step['ppl'], '.2f')}",
        f"lr {step['lr']:.2e}",
        f"grad_norm {num(step['grad_norm'], '.3f')}",
        f"tok/s {human_count(step['tokens_per_s'])}",
        f"MFU {100 * step['mfu']:.1f}%",
        f"step {step['step_time_s']:.2f}s",
    ]
    collective = [
        f"allreduce {coll['algorithm']} {human_bytes(coll['bytes'])}",
        f"model {coll['model_ms']:.1f} ms busbw {coll['busbw_gbs']:.0f} GB/s |",
        f"measured wall {coll['wall_ms']:.2f} ms (real ZeroMQ)",
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
    model, gpu, plan = run["model"], run["gpu"], run["plan"]
    head = [
        f"llmcluster {run['run_id']}",
        f"{model['name']} ({human_count(model['params'])})",
        f"{run['world_size']} x {gpu['name']} on {run['nnodes']} nodes",
        f"{plan['strategy']} {plan['precision']}",
        f"style {state.style}",
        f"seed {run['seed']}",
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
