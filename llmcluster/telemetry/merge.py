"""Merge per-rank stats into the ``step`` and ``ranks`` records, and close the run (pure).

The coordinator calls ``merge_step`` once every rank has reported a step (``merge_sample``
for a telemetry sample between steps). It also checks the invariant the collectives
promise: every rank holds the bit-identical global loss. A disagreement is returned, never
hidden. Stats and rank infos are zipped strictly: both are complete and in rank order.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from llmcluster import sim
from llmcluster.wire.messages import RankStats
from llmcluster.wire.records import (
    Collective,
    PhaseName,
    RankSample,
    RanksRecord,
    StepEvent,
    StepRecord,
    SummaryRecord,
)


@dataclass(frozen=True)
class RankInfo:
    """What a rank told the coordinator when it joined."""

    rank: int
    local_rank: int
    node: int
    host: str
    pid: int


@dataclass(frozen=True)
class MergedStep:
    """The two records for one step, plus any ranks whose loss bits disagree with rank 0's."""

    step: StepRecord
    ranks: RanksRecord
    disagreeing: tuple[int, ...]


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


def _samples(
    stats: Sequence[RankStats], infos: Sequence[RankInfo], *, arrivals: bool
) -> tuple[RankSample, ...]:
    earliest = min(s.arrive for s in stats) if arrivals else 0.0
    return tuple(
        RankSample(
            rank=info.rank,
            local_rank=info.local_rank,
            node=info.node,
            host=info.host,
            loss=s.loss,
            local_loss=s.local_loss,
            util=s.util,
            temp_c=s.temp_c,
            mem_used_gb=s.mem_used_gb,
            mem_total_gb=s.mem_total_gb,
            power_w=s.power_w,
            sm_clock_mhz=s.sm_clock_mhz,
            throttled=s.throttled,
            arrive_ms=(s.arrive - earliest) * 1000.0 if arrivals else 0.0,
            wait_ms=s.wait_ms,
            compute_ms=s.compute_s * 1000.0,
        )
        for info, s in zip(infos, stats, strict=True)
    )


def merge_step(
    plan: sim.RunPlan,
    *,
    step: int,
    stats: Sequence[RankStats],
    infos: Sequence[RankInfo],
    sim_time: float,
    tokens_total: int,
    algorithm: str,
) -> MergedStep:
    """Build the step and ranks records; ``stats`` and ``infos`` are complete, in rank order."""
    first = stats[0]
    reference = _bits(first.loss)
    disagreeing = tuple(i for i, s in enumerate(stats) if _bits(s.loss) != reference)
    metrics = sim.step_metrics(
        plan, step, loss=first.loss, step_time_s=first.step_time_s, comm_s=first.comm_s
    )
    glob = sim.global_step(plan, step)
    step_record = StepRecord(
        step=step,
        total_steps=plan.total_steps,
        time=sim_time,
        loss=first.loss,
        ppl=metrics.ppl,
        lr=glob.lr,
        grad_norm=first.grad_norm,
        loss_scale=glob.loss_scale,
        skipped=glob.nan_skip,
        tokens=metrics.tokens,
        tokens_total=tokens_total,
        step_time_s=first.step_time_s,
        tokens_per_s=metrics.tokens_per_s,
        samples_per_s=metrics.samples_per_s,
        tflops_per_gpu=metrics.tflops_per_gpu,
        mfu=metrics.mfu,
        events=tuple(
            StepEvent(kind=str(e["kind"]), rank=int(e["rank"]), text=str(e["text"]))  # type: ignore[call-overload]
            for e in glob.events
        ),
        collective=Collective(
            op="allreduce",
            algorithm=algorithm,
            bytes=plan.grad_bucket_bytes,
            model_ms=first.comm_s * 1000.0,
            exposed_ms=first.exposed_comm_s * 1000.0,
            busbw_gbs=metrics.busbw_gbs,
            wall_ms=max(s.wait_ms for s in stats),
        ),
    )
    ranks = RanksRecord(step=step, ranks=_samples(stats, infos, arrivals=True), time=sim_time)
    return MergedStep(step_record, ranks, disagreeing)


def merge_sample(
    *,
    step: int,
    phase: PhaseName,
    stats: Sequence[RankStats],
    infos: Sequence[RankInfo],
    sim_time: float,
) -> RanksRecord:
    """Every rank's telemetry sampled during ``phase`` (after ``step``)."""
    return RanksRecord(
        step=step, ranks=_samples(stats, infos, arrivals=False), phase=phase, time=sim_time
    )


def summary_record(
    *,
    sim_time: float,
    sim_seconds: float,
    wall_seconds: float,
    last_step: StepRecord | None,
    steps: int,
    tokens_total: int,
    mfu_mean: float,
    checkpoints: int,
    restarts: int,
    lost_s: float,
    dropped: int,
    rank_dropped: int,
    exit_reason: str,
) -> SummaryRecord:
    """The run's closing record."""
    final_loss = last_step.loss if last_step else math.nan
    return SummaryRecord(
        time=sim_time,
        steps=steps,
        final_loss=final_loss,
        final_ppl=math.exp(final_loss) if last_step and math.isfinite(final_loss) else math.nan,
        tokens_total=tokens_total,
        sim_seconds=sim_seconds,
        wall_seconds=wall_seconds,
        checkpoints=checkpoints,
        restarts=restarts,
        lost_s=lost_s,
        mfu=mfu_mean,
        dropped_messages=dropped + rank_dropped,
        dropped_by_coordinator=dropped,
        dropped_by_ranks=rank_dropped,
        exit=exit_reason,
    )
