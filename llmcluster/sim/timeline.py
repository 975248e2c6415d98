"""How long each phase around the steps takes on the simulated clock (one owner for both the
ranks, who sleep it, and the coordinator, who advances the run's clock by it)."""

from __future__ import annotations

from llmcluster.sim.phases import checkpoint_info, eval_time_s, export_info, init_time_s
from llmcluster.sim.plan import RunPlan

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
