"""The run on the simulated clock: how long each phase around the steps takes (one owner for
the ranks, who sleep it, and the coordinator, who advances the run's clock by it), and how
far back a timeline must start so that no record is ever stamped in the future."""

from __future__ import annotations

from llmcluster.sim.phases import checkpoint_info, eval_time_s, export_info, init_time_s
from llmcluster.sim.plan import RunPlan
from llmcluster.sim.throughput import step_time_model_s

RESTART_OVERHEAD_S = 90.0  # detect, tear down, re-rendezvous, NCCL init (simulated)
STEP_TIME_MARGIN = 1.6  # stragglers, throttling and exposed communication stretch a step

PHASE_NAMES = ("init", "restore", "eval", "checkpoint", "export")


def phase_seconds(plan: RunPlan, name: str, step: int) -> float:
    """Simulated seconds of phase ``name`` after ``step`` (the physics, whatever the speed)."""
    if name == "init":
        return init_time_s(plan)
    if name == "eval":
        return eval_time_s(plan)
    if name in ("checkpoint", "restore"):
        return checkpoint_info(plan, step).save_s
    if name == "export":
        return export_info(plan).export_s
    raise ValueError(f"unknown phase {name!r}")


def run_span_s(plan: RunPlan, *, max_restarts: int) -> float:
    """An upper bound of the run's simulated duration, every restart spent: a timeline that
    starts this long before the launch never stamps a record later than the wall clock."""
    step_s = STEP_TIME_MARGIN * step_time_model_s(plan)
    evals = plan.total_steps // plan.eval_interval + 1
    checkpoints = plan.total_steps // plan.checkpoint_interval + 1
    save_s = phase_seconds(plan, "checkpoint", plan.total_steps)
    clean = (
        phase_seconds(plan, "init", 0)
        + plan.total_steps * step_s
        + evals * phase_seconds(plan, "eval", plan.total_steps)
        + checkpoints * save_s
        + phase_seconds(plan, "export", plan.total_steps)
    )
    lost_per_restart = RESTART_OVERHEAD_S + save_s + plan.checkpoint_interval * step_s
    return clean + max_restarts * (lost_per_restart + save_s)
