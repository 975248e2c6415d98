"""Rendering: pure functions from records to the lines and renderables rank 0 shows.

``sinks`` is the only module that owns a terminal (rich Console / Live); the rest
turn records into text in the formats real tools print.
"""

from llmcluster.render.bench import bench_table_lines
from llmcluster.render.dashboard import DashboardState, dashboard_renderable
from llmcluster.render.grid import grid_lines
from llmcluster.render.launch import gpu_detect_lines, launcher_lines, nccl_init_lines
from llmcluster.render.report import (
    failure_lines,
    restart_lines,
    summary_lines,
    summary_renderable,
)
from llmcluster.render.styles import STYLES, Style, rank_prefix

__all__ = [
    "STYLES",
    "DashboardState",
    "Style",
    "bench_table_lines",
    "dashboard_renderable",
    "failure_lines",
    "gpu_detect_lines",
    "grid_lines",
    "launcher_lines",
    "nccl_init_lines",
    "rank_prefix",
    "restart_lines",
    "summary_lines",
    "summary_renderable",
]
