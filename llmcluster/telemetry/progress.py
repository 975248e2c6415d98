"""The run's progress on the simulated clock, and the records that move it (pure).

``Progress`` owns the simulated timeline: steps, phases, checkpoints and restarts advance
it by the simulation's durations only, so one seed gives the same timeline at any
``--speed``. The coordinator's machine calls these methods; they return the records to
publish.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmcluster import sim
from llmcluster.telemetry.merge import MergedStep, RankInfo, merge_step, summary_record
from llmcluster.wire.messages import RankStats
from llmcluster.wire.records import (
    CheckpointRecord,
    EvalRecord,
    ExportFile,
    ExportRecord,
    PhaseName,
    PhaseRecord,
    Record,
    RestartRecord,
    StepRecord,
    SummaryRecord,
)


@dataclass
class Progress:
    """Where the run is on the simulated clock; mutated only through its methods."""

    plan: sim.RunPlan
    start_time: float
    sim_time: float = 0.0
    sim_seconds: float = 0.0
    tokens_total: int = 0
    steps_done: int = 0
    mfu_sum: float = 0.0
    last_step: StepRecord | None = None
    checkpoints: int = 0
    last_checkpoint_step: int = 0
    checkpoint_time: float = 0.0  # simulated time the last checkpoint (or the start) was at
    restarts: int = 0
    lost_s: float = 0.0
    last_seq: int = 0
    mfu_steps: int = field(default=0)

    def __post_init__(self) -> None:
        self.sim_time = self.checkpoint_time = self.start_time

    @property
    def resume_step(self) -> int:
        """The step a restarted worker group begins with."""
        return self.last_checkpoint_step + 1

    def step(
        self, step: int, stats: Sequence[RankStats], infos: Sequence[RankInfo], algorithm: str
    ) -> MergedStep:
        """All ranks reported ``step``: advance the clock by its step time and merge."""
        first = stats[0]
        self.sim_time += first.step_time_s
        self.sim_seconds += first.step_time_s
        self.tokens_total += first.tokens
        merged = merge_step(
            self.plan,
            step=step,
            stats=stats,
            infos=infos,
            sim_time=self.sim_time,
            tokens_total=self.tokens_total,
            algorithm=algorithm,
        )
        self.steps_done = step
        self.last_seq = first.seq
        self.mfu_sum += merged.step.mfu
        self.mfu_steps += 1
        self.last_step = merged.step
        return merged

    def rendezvous(self) -> None:
        """Every rank passed the first barrier: the rendezvous round took its modelled time."""
        self.sim_time += sim.rendezvous_time_s(self.plan)
        self.sim_seconds += sim.rendezvous_time_s(self.plan)

    def phase_begins(self, name: PhaseName, step: int) -> PhaseRecord:
        """A phase starts now; ``expected_s`` is its modelled duration."""
        return PhaseRecord(
            name=name,
            step=step,
            time=self.sim_time,
            expected_s=sim.phase_seconds(self.plan, name.value, step),
        )

    def phase_ends(self, name: PhaseName, step: int, val_loss: float | None) -> Record | None:
        """A phase ended: advance the clock by its modelled duration; its record, if any."""
        elapsed = sim.phase_seconds(self.plan, name.value, step)
        self.sim_time += elapsed
        self.sim_seconds += elapsed
        if name in (PhaseName.CHECKPOINT, PhaseName.INIT, PhaseName.RESTORE):
            self.checkpoint_time = self.sim_time  # work after this is lost on a failure
        if name is PhaseName.EVAL and val_loss is not None:
            return EvalRecord(
                step=step,
                time=self.sim_time,
                val_loss=val_loss,
                val_ppl=math.exp(val_loss),
                eval_iters=self.plan.eval_iters,
                eval_s=elapsed,
            )
        if name is PhaseName.CHECKPOINT:
            info = sim.checkpoint_info(self.plan, step)
            self.checkpoints += 1
            self.last_checkpoint_step = step
            return CheckpointRecord(
                step=step,
                time=self.sim_time,
                path=info.path,
                shards=info.shards,
                bytes_total=info.bytes_total,
                bytes_per_rank=info.bytes_per_rank,
                save_s=info.save_s,
                bandwidth_gbs=info.bandwidth_gbs,
            )
        if name is PhaseName.EXPORT:
            export = sim.export_info(self.plan)
            return ExportRecord(
                time=self.sim_time,
                path=export.path,
                format="safetensors",
                files=tuple(ExportFile(name=n, bytes=b) for n, b in export.files),
                bytes_total=export.bytes_total,
                export_s=export.export_s,
            )
        return None

    def restart(
        self, *, attempt: int, max_restarts: int, merged_step: int, reason: str
    ) -> RestartRecord:
        """The group restarts from the last checkpoint: the work since then is lost."""
        overhead = sim.restart_overhead_s(self.plan) + sim.rendezvous_time_s(self.plan)
        lost = max(0.0, self.sim_time - self.checkpoint_time) + overhead
        self.sim_time += overhead
        self.lost_s += lost
        self.restarts += 1
        resume = self.resume_step
        self.steps_done = resume - 1
        self.tokens_total = self.plan.tokens_per_step * (resume - 1)
        return RestartRecord(
            time=self.sim_time,
            attempt=attempt,
            max_restarts=max_restarts,
            restarts_left=max_restarts - attempt,
            resume_step=resume,
            replayed_steps=max(0, merged_step - self.last_checkpoint_step),
            lost_s=lost,
            reason=reason,
        )

    def summary(
        self, *, wall_seconds: float, dropped: int, rank_dropped: int, exit_reason: str
    ) -> SummaryRecord:
        """The closing record."""
        return summary_record(
            sim_time=self.sim_time,
            sim_seconds=self.sim_seconds,
            wall_seconds=wall_seconds,
            last_step=self.last_step,
            steps=self.steps_done,
            tokens_total=self.tokens_total,
            mfu_mean=self.mfu_sum / self.mfu_steps if self.mfu_steps else 0.0,
            checkpoints=self.checkpoints,
            restarts=self.restarts,
            lost_s=self.lost_s,
            dropped=dropped,
            rank_dropped=rank_dropped,
            exit_reason=exit_reason,
        )
