"""The GPU grid: one row per node, one cell per GPU, health marks; compressed for big runs.

Marks: ``!`` a thermally throttled GPU, ``*`` the straggler (the slowest compute this
step: the rank every collective waited for), ``^`` a GPU within 5 C of its slowdown
temperature. Cell detail shrinks with the terminal width (200, 120, 80 columns);
above ``COMPRESS_NODES`` nodes each node becomes one summary line.

``grid_segments`` returns rows of ``(text, tag)`` pieces so the log (plain lines) and
the live dashboard (coloured by tag) share one layout.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from llmcluster.render.fmt import ascii_safe
from llmcluster.render.launch import host_of
from llmcluster.wire.records import RankSample, RanksRecord, RunRecord

COMPRESS_NODES = 16
HOT_MARGIN_C = 5.0
LOW_UTIL = 80.0
LEGEND = "* straggler  ! throttled  ^ hot"
CELL_WIDTH = {2: 21, 1: 10, 0: 7}  # including the mark column
FIELDS = {2: "util temp mem-used power", 1: "util temp", 0: "util%/temp C"}

Segment = tuple[str, str]  # (text, tag); tags: title host util low temp hot plain ! * ^

STRAGGLER_MARGIN = 1.03


def straggler_rank(ranks: Sequence[RankSample]) -> int | None:
    """The rank the collective waited for, when it was noticeably (3 %) slower than the
    median; per-step jitter alone marks nobody, so the mark means something."""
    if len(ranks) < 2:
        return None
    slowest = max(ranks, key=lambda r: r.compute_ms)
    median = statistics.median(r.compute_ms for r in ranks)
    return slowest.rank if slowest.compute_ms > STRAGGLER_MARGIN * median else None


def is_hot(gpu: RankSample, run: RunRecord) -> bool:
    """Within ``HOT_MARGIN_C`` of the GPU's slowdown temperature."""
    return gpu.temp_c >= run.gpu.slowdown_c - HOT_MARGIN_C


def mark(gpu: RankSample, run: RunRecord, straggler: int | None) -> str:
    """The health mark of one GPU ('' when healthy); throttling outranks the others."""
    if gpu.throttled:
        return "!"
    if gpu.rank == straggler:
        return "*"
    return "^" if is_hot(gpu, run) else ""


def _cell(gpu: RankSample, run: RunRecord, health: str, detail: int) -> list[Segment]:
    util_tag = "util" if gpu.util >= LOW_UTIL else "low"
    temp_tag = "hot" if is_hot(gpu, run) else "temp"
    if detail == 0:
        cell = [
            (f"{gpu.util:3.0f}", util_tag),
            ("/", "plain"),
            (f"{gpu.temp_c:2.0f}", temp_tag),
        ]
    else:
        cell = [(f"{gpu.util:3.0f}%", util_tag), (f" {gpu.temp_c:2.0f}°C", temp_tag)]
    if detail == 2:
        cell.append((f" {gpu.mem_used_gb:4.1f}G {gpu.power_w:3.0f}W", "plain"))
    return [*cell, (f"{health:1}", health or "plain")]


def _detail_for(width: int, host_width: int, per_row: int) -> int:
    for detail in (2, 1, 0):
        if host_width + per_row * (CELL_WIDTH[detail] + 1) <= width:
            return detail
    return 0


def _nodes(ranks: Sequence[RankSample]) -> dict[int, list[RankSample]]:
    nodes: dict[int, list[RankSample]] = {}
    for gpu in ranks:
        nodes.setdefault(gpu.node, []).append(gpu)
    return nodes


def _summary(gpus: list[RankSample], run: RunRecord, straggler: int | None) -> list[Segment]:
    utils, temps = [g.util for g in gpus], [g.temp_c for g in gpus]
    hottest = max(gpus, key=lambda g: g.temp_c)
    marks = "".join(sorted({mark(g, run, straggler) for g in gpus} - {""}))
    power_kw = sum(g.power_w for g in gpus) / 1000
    return [
        (f"util {min(utils):3.0f}/{statistics.mean(utils):3.0f}/{max(utils):3.0f}%",
         "util" if min(utils) >= LOW_UTIL else "low"),
        (f" temp {min(temps):2.0f}/{statistics.mean(temps):2.0f}/{max(temps):2.0f}°C",
         "hot" if is_hot(hottest, run) else "temp"),
        (f" hottest gpu{hottest.local_rank} {power_kw:4.1f}kW ", "plain"),
        (marks, marks[:1] or "plain"),
    ]  # fmt: skip


def grid_segments(run: RunRecord, ranks_record: RanksRecord, *,
                  width: int) -> list[list[Segment]]:  # fmt: skip
    """The title row, then one row per node (cells, or a summary above COMPRESS_NODES)."""
    ranks = ranks_record.ranks
    straggler = straggler_rank(ranks)
    nodes = _nodes(ranks)
    host_width = min(24, max((len(host_of(run, n)) for n in nodes), default=4))
    per_row = max((len(g) for g in nodes.values()), default=1)
    compress = len(nodes) > COMPRESS_NODES
    detail = _detail_for(width, host_width, per_row)
    fields = "min/mean/max util, temp; hottest; power" if compress else FIELDS[detail]
    total = ranks[0].mem_total_gb if ranks else 0
    rows = [[(f"GPUs @ step {ranks_record.step} ({fields}; {total:.0f}G each) | {LEGEND}",
              "title")]]  # fmt: skip
    for node, gpus in nodes.items():
        row = [(f"{host_of(run, node)[-host_width:]:<{host_width}}", "host")]  # the tail differs
        if compress:
            row += [(" ", "plain"), *_summary(gpus, run, straggler)]
        else:
            for gpu in gpus:
                row += [(" ", "plain"), *_cell(gpu, run, mark(gpu, run, straggler), detail)]
        rows.append(row)
    return rows


def grid_lines(run: RunRecord, ranks_record: RanksRecord, *, width: int,
               ascii_only: bool) -> list[str]:  # fmt: skip
    """The grid for one ``ranks`` record as plain lines, each at most ``width`` long."""
    lines = []
    for row in grid_segments(run, ranks_record, width=width):
        line = "".join(text for text, _ in row)
        lines.append((ascii_safe(line) if ascii_only else line)[:width].rstrip())
    return lines
