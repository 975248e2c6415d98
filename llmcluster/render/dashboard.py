"""The live dashboard (``--ui live``): header, progress, metrics, loss sparkline, GPU grid,
collective timings and a log tail, rebuilt from records by pure functions.

``DashboardState.update`` folds records in; ``dashboard_renderable`` turns the state
into a rich renderable for a given width. The sink owns the ``rich.live.Live``.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from llmcluster.render.fmt import ascii_safe, duration, human_bytes, human_count, iso, num
from llmcluster.render.grid import COMPRESS_NODES, mark, straggler_rank
from llmcluster.render.styles import STYLES

SPARKS = "▁▂▃▄▅▆▇█"
ASCII_SPARKS = "_.-~=+*#"
LOG_TAIL = 8
MARK_STYLE = {"!": "bold red", "*": "bold magenta", "^": "yellow", "": ""}


@dataclass
class DashboardState:
    """Everything the dashboard shows, folded from records."""

    style: str = "default"
    run: dict[str, Any] | None = None
    step: dict[str, Any] | None = None
    ranks: dict[str, Any] | None = None
    phase: str = "starting"
    losses: deque[float] = field(default_factory=lambda: deque(maxlen=120))
    log: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))
    summary: dict[str, Any] | None = None
    train_start: float | None = None

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
            if self.train_start is None:
                self.train_start = record["time"] - record["step_time_s"]
            self.losses.append(record["loss"])
            self._log([f"WARNING: {e['text']}" for e in record.get("events", [])])
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
            self._log([f"ERROR: rank {record['rank']} failed: {record['reason']}"])
        elif kind == "restart":
            self.phase = "restarting"
            self._log(
                [f"restarting from step {record['resume_step']} (attempt {record['attempt']})"]
            )
        elif kind == "log":
            self._log([f"{record.get('level', 'INFO')}: {record.get('text', '')}"])

    def _log(self, lines: list[str]) -> None:
        self.log.extend(lines)


def sparkline(values: list[float], width: int, *, ascii_only: bool) -> str:
    """The last ``width`` values as a one-line bar chart."""
    glyphs = ASCII_SPARKS if ascii_only else SPARKS
    values = [v for v in values[-width:] if v == v]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(
        glyphs[min(len(glyphs) - 1, int((v - low) / span * len(glyphs)))] for v in values
    )


def _bar(fraction: float, width: int, ascii_only: bool) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    full, empty = ("#", ".") if ascii_only else ("█", "░")
    return full * filled + empty * (width - filled)


def _grid(state: DashboardState, width: int, ascii_only: bool) -> list[Text]:
    run, record = state.run, state.ranks
    if run is None or record is None:
        return [Text("waiting for the first step ...", style="dim")]
    ranks = record["ranks"]
    straggler = straggler_rank(ranks)
    slowdown = run["gpu"]["slowdown_c"]
    nodes: dict[int, list[dict[str, Any]]] = {}
    for gpu in ranks:
        nodes.setdefault(gpu["node"], []).append(gpu)
    hosts = run.get("hosts", [])
    host_width = min(24, max(len(hosts[n]) if n < len(hosts) else 6 for n in nodes))
    lines = []
    compress = len(nodes) > COMPRESS_NODES
    cell = 22 if width >= host_width + 8 * 23 + 2 else 10
    for node, gpus in nodes.items():
        host = hosts[node] if node < len(hosts) else f"node{node}"
        text = Text(f"{host[-host_width:]:<{host_width}} ", style="cyan")  # keep the node number
        if compress:
            utils = [g["util"] for g in gpus]
            hottest = max(gpus, key=lambda g: g["temp_c"])
            marks = "".join(sorted({mark(g, run, straggler) for g in gpus} - {""}))
            text.append(
                f"util {min(utils):3.0f}/{statistics.mean(utils):3.0f}/{max(utils):3.0f}%  "
                f"max {hottest['temp_c']:.0f}C  {sum(g['power_w'] for g in gpus) / 1000:.1f}kW "
            )
            text.append(marks, style="bold red")
        else:
            for gpu in gpus:
                health = mark(gpu, run, straggler)
                temp_style = "red" if gpu["temp_c"] >= slowdown - 5 else "green"
                util_style = "green" if gpu["util"] >= 80 else "yellow"
                text.append(f"{gpu['util']:3.0f}%", style=util_style)
                text.append(f" {gpu['temp_c']:2.0f}C", style=temp_style)
                if cell > 10:
                    text.append(f" {gpu['mem_used_gb']:4.1f}G {gpu['power_w']:3.0f}W")
                text.append(f"{health or ' '} ", style=MARK_STYLE[health])
        if ascii_only:
            text = Text(ascii_safe(text.plain))
        text.truncate(width)
        lines.append(text)
    return lines


def dashboard_renderable(state: DashboardState, *, width: int, ascii_only: bool) -> RenderableType:
    """The whole screen for ``state``, no line wider than ``width``."""
    run = state.run
    if run is None:
        return Text("llmcluster: waiting for the ranks to rendezvous ...", style="dim")
    model, gpu, plan = run["model"], run["gpu"], run["plan"]
    head = Text(
        f"llmcluster | {model['name']} ({human_count(model['params'])}) on {run['world_size']} x "
        f"{gpu['name']} ({run['nnodes']} nodes) | {plan['strategy']} {plan['precision']} | "
        f"seed {run['seed']} | {state.phase}",
        style="bold",
    )
    parts: list[RenderableType] = [head]
    step = state.step
    total = plan["total_steps"]
    done = step["step"] if step else 0
    bar_width = max(10, min(50, width - 60))
    eta = (total - done) * step["step_time_s"] if step else float("nan")
    progress = Text(
        f"steps {done:>{len(str(total))}}/{total} {_bar(done / total, bar_width, ascii_only)} "
        f"{100 * done / total:5.1f}%  ETA {duration(eta)} (simulated)"
    )
    interval = plan["eval_interval"]
    into = done % interval if done % interval or not done else interval
    segment = Text(
        f"segment {into:>{len(str(interval))}}/{interval} "
        f"{_bar(into / interval, bar_width, ascii_only)} next eval + checkpoint at step "
        f"{min(total, (done // interval + 1) * interval)}"
    )
    parts += [progress, segment]
    if step:
        parts.append(
            Text(
                f"{iso(step['time'])}  loss {num(step['loss'], '.4f')}  "
                f"ppl {num(step['ppl'], '.2f')}  lr {step['lr']:.2e}  "
                f"grad {num(step['grad_norm'], '.3f')}  tok/s "
                f"{human_count(step['tokens_per_s'])}  MFU {100 * step['mfu']:.1f}%  "
                f"step {step['step_time_s']:.2f}s",
                style="bold green",
            )
        )
        coll = step["collective"]
        parts.append(
            Text(
                f"allreduce {coll['algorithm']} {human_bytes(coll['bytes'])}: model "
                f"{coll['model_ms']:.1f} ms busbw {coll['busbw_gbs']:.0f} GB/s | measured wall "
                f"{coll['wall_ms']:.2f} ms (real ZeroMQ)"
            )
        )
        spark = sparkline(list(state.losses), max(10, width - 12), ascii_only=ascii_only)
        parts.append(Text(f"loss {spark}", style="blue"))
    parts += _grid(state, width, ascii_only)
    for line in state.log:
        parts.append(Text(line, style="dim"))
    for part in parts:
        if isinstance(part, Text):
            part.no_wrap = True
            part.overflow = "ellipsis"
            if ascii_only:
                part.plain = ascii_safe(part.plain)
    return Group(*parts)
