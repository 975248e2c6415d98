"""Rendering: typed records in, the lines and renderables rank 0 shows out.

``sinks`` is the only module that owns a terminal (rich Console / Live); ``styles`` holds
the registry of log styles, whose stateful renderers turn records into text in the
formats real tools print. Nothing here imports the simulation, the coordinator or the
workers: renderers take records (and the config) only.
"""

from llmcluster.render.bench import bench_table_lines
from llmcluster.render.dashboard import DashboardState, dashboard_renderable
from llmcluster.render.grid import grid_lines
from llmcluster.render.launch import gpu_detect_lines, launcher_lines
from llmcluster.render.nccl import merged_init_lines
from llmcluster.render.report import (
    failure_lines,
    interrupt_lines,
    restart_lines,
    summary_lines,
    summary_renderable,
)
from llmcluster.render.styles import STYLES, Style, make_style

__all__ = [
    "STYLES",
    "DashboardState",
    "Style",
    "bench_table_lines",
    "dashboard_renderable",
    "failure_lines",
    "gpu_detect_lines",
    "grid_lines",
    "interrupt_lines",
    "launcher_lines",
    "make_style",
    "merged_init_lines",
    "restart_lines",
    "summary_lines",
    "summary_renderable",
]
