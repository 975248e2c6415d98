"""Merge one step's per-rank stats into the ``step`` and ``ranks`` output records (pure).

The coordinator calls ``merge_step`` once every rank has reported a step. It
also checks the invariant the collectives promise: every rank holds the
bit-identical global loss. A disagreement is returned, never hidden.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from llmcluster import sim


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

    step: dict[str, Any]
    ranks: dict[str, Any]
    disagreeing: tuple[int, ...]


STATS_FIELDS = (
    "loss", "local_loss", "grad_norm", "compute_s", "step_time_s", "comm_s", "exposed_comm_s",
    "arrive", "wait_ms",
    "util", "temp_c", "power_w", "mem_used_gb", "mem_total_gb", "sm_clock_mhz",
)  # fmt: skip


def valid_stats(stats: dict[str, Any]) -> bool:
    """True if a rank's stats carry every numeric field ``merge_step`` reads, all finite or NaN."""
    if not isinstance(stats.get("tokens"), int) or not isinstance(stats.get("throttled"), bool):
        return False
    return all(
        isinstance(stats.get(name), (int, float)) and not isinstance(stats.get(name), bool)
        for name in STATS_FIELDS
    )


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


def merge_step(
    plan: sim.RunPlan,
    *,
    step: int,
    stats: list[dict[str, Any]],
    infos: list[RankInfo],
    sim_time: float,
    tokens_total: int,
    algorithm: str,
) -> MergedStep:
    """Build the step and ranks records; ``stats`` and ``infos`` are in rank order."""
    first = stats[0]
    reference = _bits(first["loss"])
    disagreeing = tuple(i for i, s in enumerate(stats) if _bits(s["loss"]) != reference)
    step_time_s = float(first["step_time_s"])
    comm_s = float(first["comm_s"])
    metrics = sim.step_metrics(
        plan, step, loss=first["loss"], step_time_s=step_time_s, comm_s=comm_s
    )
    glob = sim.global_step(plan, step)
    earliest = min(s["arrive"] for s in stats)
    coll_wall_ms = max(s["wait_ms"] for s in stats)
    step_record = {
        "type": "step",
        "step": step,
        "total_steps": plan.total_steps,
        "time": sim_time,
        "loss": first["loss"],
        "ppl": metrics.ppl,
        "lr": glob.lr,
        "grad_norm": first["grad_norm"],
        "loss_scale": glob.loss_scale,
        "skipped": glob.nan_skip,
        "tokens": metrics.tokens,
        "tokens_total": tokens_total,
        "step_time_s": step_time_s,
        "tokens_per_s": metrics.tokens_per_s,
        "samples_per_s": metrics.samples_per_s,
        "tflops_per_gpu": metrics.tflops_per_gpu,
        "mfu": metrics.mfu,
        "events": list(glob.events),
        "collective": {
            "op": "allreduce",
            "algorithm": algorithm,
            "bytes": plan.grad_bucket_bytes,
            "model_ms": comm_s * 1000.0,
            "exposed_ms": float(first["exposed_comm_s"]) * 1000.0,
            "busbw_gbs": metrics.busbw_gbs,
            "wall_ms": coll_wall_ms,
        },
    }
    ranks_record = {
        "type": "ranks",
        "step": step,
        "ranks": [
            {
                "rank": info.rank,
                "local_rank": info.local_rank,
                "node": info.node,
                "host": info.host,
                "loss": s["loss"],
                "local_loss": s["local_loss"],
                "util": s["util"],
                "temp_c": s["temp_c"],
                "mem_used_gb": s["mem_used_gb"],
                "mem_total_gb": s["mem_total_gb"],
                "power_w": s["power_w"],
                "sm_clock_mhz": s["sm_clock_mhz"],
                "throttled": s["throttled"],
                "arrive_ms": (s["arrive"] - earliest) * 1000.0,
                "wait_ms": s["wait_ms"],
                "compute_ms": s["compute_s"] * 1000.0,
            }
            for info, s in zip(infos, stats, strict=False)
        ],
    }
    return MergedStep(step_record, ranks_record, disagreeing)


def summary_record(
    *,
    sim_time: float,
    sim_seconds: float,
    wall_seconds: float,
    last_step: dict[str, Any] | None,
    steps: int,
    tokens_total: int,
    mfu_mean: float,
    checkpoints: int,
    restarts: int,
    lost_s: float,
    dropped: int,
    rank_dropped: int,
    exit_reason: str,
) -> dict[str, Any]:
    """The run's closing record."""
    final_loss = float(last_step["loss"]) if last_step else float("nan")
    return {
        "type": "summary",
        "time": sim_time,
        "steps": steps,
        "final_loss": final_loss,
        "final_ppl": math.exp(final_loss) if last_step else float("nan"),
        "tokens_total": tokens_total,
        "sim_seconds": sim_seconds,
        "wall_seconds": wall_seconds,
        "checkpoints": checkpoints,
        "restarts": restarts,
        "lost_s": lost_s,
        "mfu": mfu_mean,
        "dropped_messages": dropped + rank_dropped,
        "dropped_by_coordinator": dropped,
        "dropped_by_ranks": rank_dropped,
        "exit": exit_reason,
    }
