"""The simulation: pure, seeded models of the hardware and the training dynamics.

Everything here is a function of the run plan (built from ``--seed`` and the
flags), the step and the rank; no I/O besides reading the catalogs, no global
state. The runtime calls only the names exported below.
"""

from llmcluster.sim.catalog import Catalog, CatalogError, load_catalog
from llmcluster.sim.describe import describe_plan
from llmcluster.sim.gpu import GpuSample, RankState, init_rank_state, rank_telemetry
from llmcluster.sim.phases import (
    checkpoint_info,
    eval_time_s,
    export_info,
    init_time_s,
    is_checkpoint_step,
    is_eval_step,
    local_val_loss,
    paced_s,
)
from llmcluster.sim.plan import PlanError, RunPlan, make_plan
from llmcluster.sim.throughput import (
    CommCost,
    RankStep,
    StepMetrics,
    comm_cost,
    comm_time_s,
    rank_step,
    step_metrics,
    step_time_model_s,
)
from llmcluster.sim.timeline import RESTART_OVERHEAD_S, phase_seconds, run_span_s
from llmcluster.sim.training import GlobalStep, global_step

__all__ = [
    "RESTART_OVERHEAD_S",
    "Catalog",
    "CatalogError",
    "CommCost",
    "GlobalStep",
    "GpuSample",
    "PlanError",
    "RankState",
    "RankStep",
    "RunPlan",
    "StepMetrics",
    "checkpoint_info",
    "comm_cost",
    "comm_time_s",
    "describe_plan",
    "eval_time_s",
    "export_info",
    "global_step",
    "init_rank_state",
    "init_time_s",
    "is_checkpoint_step",
    "is_eval_step",
    "load_catalog",
    "local_val_loss",
    "make_plan",
    "paced_s",
    "phase_seconds",
    "rank_step",
    "rank_telemetry",
    "run_span_s",
    "step_metrics",
    "step_time_model_s",
]
