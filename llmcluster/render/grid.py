"""The GPU grid: one row per node, eight GPUs per row, health marks; compressed for big runs.

Marks: ``*`` the straggler (slowest compute this step, at least 3 % behind the
median), ``!`` a thermally throttled GPU, ``^`` a GPU within 5 C of its slowdown
threshold. Cell detail shrinks with the terminal width (80, 120, 200 columns);
above ``COMPRESS_NODES`` nodes each node becomes one summary line.
"""

from __future__ import annotations

import statistics
from typing import Any

from llmcluster.render.fmt import ascii_safe

COMPRESS_NODES = 16
STRAGGLER_MARGIN = 1.03


def straggler_rank(ranks: list[dict[str, Any]]) -> int | None:
    """The rank the collective waited for, if it was noticeably slower than the rest."""
    if len(ranks) < 2:
        return None
    slowest = max(ranks, key=lambda r: r["compute_ms"])
    median = statistics.median(r["compute_ms"] for r in ranks)
    return slowest["rank"] if slowest["compute_ms"] > STRAGGLER_MARGIN * median else None


def mark(gpu: dict[str, Any], run: dict[str, Any], straggler: int | None) -> str:
    """The health mark of one GPU ('' when healthy)."""
    if gpu["throttled"]:
        return "!"
    if gpu["rank"] == straggler:
        return "*"
    if gpu["temp_c"] >= run["gpu"]["slowdown_c"] - 5:
        return "^"
    return ""


def _cell(gpu: dict[str, Any], mark_: str, detail: int) -> str:
    util, temp = f"{gpu['util']:3.0f}%", f"{gpu['temp_c']:2.0f}°C"
    if detail == 2:
        body = (
            f"{gpu['local_rank']}:{util} {temp} {gpu['mem_used_gb']:4.1f}/"
            f"{gpu['mem_total_gb']:.0f}G {gpu['power_w']:3.0f}W"
        )
        return f"{body}{mark_:1}"
    if detail == 1:
        return f"{util} {temp} {gpu['power_w']:3.0f}W{mark_:1}"
    return f"{gpu['util']:3.0f}/{gpu['temp_c']:2.0f}{mark_:1}"


CELL_WIDTH = {2: 27, 1: 16, 0: 7}


def _detail_for(width: int, host_width: int, per_row: int) -> int:
    for detail in (2, 1, 0):
        if host_width + 1 + per_row * (CELL_WIDTH[detail] + 1) <= width:
            return detail
    return 0


def _nodes(ranks: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    nodes: dict[int, list[dict[str, Any]]] = {}
    for gpu in ranks:
        nodes.setdefault(gpu["node"], []).append(gpu)
    return nodes


def _host(run: dict[str, Any], node: int) -> str:
    hosts = run.get("hosts", [])
    return hosts[node] if node < len(hosts) else f"node{node}"


def grid_lines(run: dict[str, Any], ranks_record: dict[str, Any], *, width: int,
               ascii_only: bool) -> list[str]:  # fmt: skip
    """The grid for one ``ranks`` record as plain lines, each at most ``width`` long."""
    ranks = ranks_record["ranks"]
    straggler = straggler_rank(ranks)
    nodes = _nodes(ranks)
    host_width = min(24, max(len(_host(run, n)) for n in nodes))
    title = (
        f"GPUs @ step {ranks_record['step']}: util temp"
        + (" mem" if width >= 120 else "")
        + " power | * straggler  ! throttled  ^ hot"
    )
    lines = [title[:width]]
    if len(nodes) > COMPRESS_NODES:
        for node, gpus in nodes.items():
            utils = [g["util"] for g in gpus]
            hottest = max(gpus, key=lambda g: g["temp_c"])
            marks = "".join(sorted({mark(g, run, straggler) for g in gpus} - {""}))
            power_kw = sum(g["power_w"] for g in gpus) / 1000
            line = (
                f"{_host(run, node)[-host_width:]:<{host_width}} util {min(utils):3.0f}/"
                f"{statistics.mean(utils):3.0f}/{max(utils):3.0f}% temp max "
                f"{hottest['temp_c']:.0f}°C (gpu{hottest['local_rank']}) {power_kw:.1f}kW {marks}"
            )
            lines.append(line[:width].rstrip())
    else:
        per_row = max(len(g) for g in nodes.values())
        detail = _detail_for(width, host_width, per_row)
        for node, gpus in nodes.items():
            cells = " ".join(_cell(g, mark(g, run, straggler), detail) for g in gpus)
            host = _host(run, node)[-host_width:]  # the tail tells nodes apart
            lines.append(f"{host:<{host_width}} {cells}"[:width].rstrip())
    if ascii_only:
        lines = [ascii_safe(line) for line in lines]
    return lines
