"""The simulation: pure, seeded models of the hardware and the training dynamics.

Everything here is a function of the run plan (built from ``--seed`` and the
flags), the step and the rank; no I/O besides reading the catalogs, no global
state. Simulated durations never depend on ``--speed``; ``wall_seconds`` alone
turns them into wall time. The runtime calls only the names exported below.
"""

from llmcluster.sim.catalog import Catalog, CatalogError, load_catalog
from llmcluster.sim.data import epoch_at, samples_per_epoch
from llmcluster.sim.describe import describe_plan
from llmcluster.sim.export import ExportInfo, export_info
from llmcluster.sim.gpu import GpuSample, RankState, init_rank_state, rank_telemetry
from llmcluster.sim.oom import fatal_event, oom_message, oom_traceback
from llmcluster.sim.pacing import wall_seconds
from llmcluster.sim.phases import (
    CheckpointInfo,
    checkpoint_info,
    eval_time_s,
    init_time_s,
    is_checkpoint_step,
    is_eval_step,
    local_val_loss,
    rendezvous_time_s,
    restart_overhead_s,
    restore_time_s,
)
from llmcluster.sim.plan import make_plan
from llmcluster.sim.runplan import Event, PlanError, RunPlan
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
from llmcluster.sim.timeline import phase_samples, phase_seconds, run_span_s
from llmcluster.sim.training import GlobalStep, global_step

__all__ = [
    "Catalog",
    "CatalogError",
    "CheckpointInfo",
    "CommCost",
    "Event",
    "ExportInfo",
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
    "epoch_at",
    "eval_time_s",
    "export_info",
    "fatal_event",
    "global_step",
    "init_rank_state",
    "init_time_s",
    "is_checkpoint_step",
    "is_eval_step",
    "load_catalog",
    "local_val_loss",
    "make_plan",
    "oom_message",
    "oom_traceback",
    "phase_samples",
    "phase_seconds",
    "rank_step",
    "rank_telemetry",
    "rendezvous_time_s",
    "restart_overhead_s",
    "restore_time_s",
    "run_span_s",
    "samples_per_epoch",
    "step_metrics",
    "step_time_model_s",
    "wall_seconds",
]
