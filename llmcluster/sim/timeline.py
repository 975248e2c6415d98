"""The run on the simulated clock: how long each phase around the steps takes (one owner for
the ranks, who sleep it, and the coordinator, who advances the run's clock by it), and how
far back a timeline must start so that no record is ever stamped in the future."""

from __future__ import annotations

import math

from llmcluster.sim.export import export_info
from llmcluster.sim.phases import (
    checkpoint_info,
    eval_time_s,
    init_time_s,
    rendezvous_time_s,
    restart_overhead_s,
    restore_time_s,
)
from llmcluster.sim.runplan import RunPlan
from llmcluster.sim.throughput import step_time_model_s

SAMPLE_SIM_S = 15.0  # a GPU sample every ~15 simulated seconds of a phase
MAX_SAMPLES = 8
STEP_TIME_MARGIN = 1.6  # stragglers, throttling and exposed communication stretch a step

PHASE_NAMES = ("init", "restore", "eval", "checkpoint", "export")


def phase_seconds(plan: RunPlan, name: str, step: int) -> float:
    """Simulated seconds of phase ``name`` after ``step`` (the physics, whatever the speed)."""
    if name == "init":
        return init_time_s(plan)
    if name == "eval":
        return eval_time_s(plan, step)
    if name == "checkpoint":
        return checkpoint_info(plan, step).save_s
    if name == "restore":
        return restore_time_s(plan, step)
    if name == "export":
        return export_info(plan).export_s
    raise ValueError(f"unknown phase {name!r}")


def phase_samples(plan: RunPlan, name: str, step: int) -> int:
    """How many GPU samples every rank reports during phase ``name`` after ``step``."""
    return max(1, min(MAX_SAMPLES, math.ceil(phase_seconds(plan, name, step) / SAMPLE_SIM_S)))


def run_span_s(plan: RunPlan, *, max_restarts: int) -> float:
    """An upper bound of the run's simulated duration, every restart spent: a timeline that
    starts this long before the launch never stamps a record later than the wall clock."""
    step_s = STEP_TIME_MARGIN * step_time_model_s(plan)
    evals = plan.total_steps // plan.eval_interval + 1
    checkpoints = plan.total_steps // plan.checkpoint_interval + 1
    save_s = 1.2 * phase_seconds(plan, "checkpoint", plan.total_steps)  # seeded jitter
    clean = (
        rendezvous_time_s(plan)
        + phase_seconds(plan, "init", 0)
        + plan.total_steps * step_s
        + evals * 1.2 * eval_time_s(plan)
        + checkpoints * save_s
        + phase_seconds(plan, "export", plan.total_steps)
    )
    lost_per_restart = (
        restart_overhead_s(plan) + rendezvous_time_s(plan) + plan.checkpoint_interval * step_s
    )
    return clean + max_restarts * (lost_per_restart + save_s)
