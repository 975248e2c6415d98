"""A rank's own framework lines (Megatron, DeepSpeed, HF), written by the rank process itself.

With torchrun's log options and a framework style, every rank writes what that framework
prints on that rank: its lines to its own stdout (its ``stdout.log``, tailed by its agent
with ``--tee``), its warnings to its stderr, so the interleaving of the ranks on a shared
console is their real concurrency. Rank 0's display then shows only torchrun's, NCCL's and
the run's own lines (``render.base.View.AGENT``).

The rank replays the coordinator's simulated clock (``telemetry.progress``, pure) from its
attempt's start with its own step stats, which every rank holds bit-identical after the
step's allreduce, so its records, and every number in its lines, are the ones the
coordinator publishes; the style's RANK view picks the lines its rank prints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from typing import Any, TextIO

from llmcluster import sim
from llmcluster.config import RunConfig
from llmcluster.render.base import View, framework_view
from llmcluster.render.styles import make_style
from llmcluster.telemetry.describe import run_record
from llmcluster.telemetry.merge import RankInfo
from llmcluster.telemetry.progress import Progress
from llmcluster.wire.messages import RankStats
from llmcluster.wire.records import PhaseName, Record


def writes_own_lines(config: RunConfig) -> bool:
    """Whether each rank writes its own framework lines (a framework style, log files on)."""
    return framework_view(config.style, makes_files=config.makes_log_files) is View.AGENT


class FrameworkLog:
    """One rank's framework output for one attempt (``spec`` is the rank's ``RankSpec``;
    ``lock``: rank 0's display's, so a record it shows is never cut by these lines)."""

    def __init__(self, spec: Any, plan: sim.RunPlan, lock: threading.Lock | None = None) -> None:
        config: RunConfig = spec.config
        self.style = make_style(config.style, width=shutil.get_terminal_size().columns,
                                ascii_only=config.ascii_only, view=View.RANK,
                                rank=spec.rank)  # fmt: skip
        self.algorithm = config.algorithm
        self.total_steps = plan.total_steps
        self.progress = Progress(plan, start_time=spec.sim_time)
        self.progress.tokens_total = plan.tokens_per_step * (spec.start_step - 1)
        self.info = RankInfo(rank=spec.rank, local_rank=spec.local_rank, node=spec.node,
                             host=spec.host, pid=os.getpid())  # fmt: skip
        self.run = run_record(config, plan, run_id=spec.run_id, speed=spec.speed,
                              start_time=spec.sim_time, attempt=spec.attempt, hosts=(),
                              real_hosts=(), pids=(), env=(), agent_pid=0)  # fmt: skip
        self.warned = False
        self.started = time.monotonic()
        self.lock = lock or threading.Lock()  # rank 0: its display's (whole records at once)

    def _write(self, out: TextIO, lines: list[str]) -> None:
        if lines:
            with self.lock, contextlib.suppress(OSError):  # closed stdout: training goes on
                out.write("".join(f"{line}\n" for line in lines))
                out.flush()

    def _show(self, record: Record | None) -> None:
        if record is not None:
            self._write(sys.stdout, self.style.lines(record))

    def ready(self) -> None:
        """The process group is up: the rendezvous took its modelled time; the set-up lines."""
        self.progress.rendezvous()
        self._show(self.run)

    def phase_begin(self, name: PhaseName, step: int) -> None:
        self._show(self.progress.phase_begins(name, step))

    def phase_end(self, name: PhaseName, step: int, val_loss: float | None) -> None:
        self._show(self.progress.phase_ends(name, step, val_loss))

    def step(self, step: int, stats: RankStats) -> None:
        """A step done: its lines, and the process's warnings at its first step."""
        merged = self.progress.step(step, [stats], [self.info], self.algorithm)
        self._show(merged.step)
        if not self.warned:
            self.warned = True
            self._write(sys.stderr, self.style.warnings(self.run))

    def finish(self, last_step: int) -> None:
        """Training returned: the framework's closing lines when it ran to the end."""
        if last_step == self.total_steps:
            summary = self.progress.summary(wall_seconds=time.monotonic() - self.started,
                                            dropped=0, rank_dropped=0,
                                            exit_reason="completed")  # fmt: skip
            self._show(summary)
