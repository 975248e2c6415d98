"""The phases around the training steps: start-up, validation, checkpoints, export.

Durations are simulated seconds from the same physics as the steps:
validation runs ``eval_iters`` forward passes of a global batch (a third of a
training step's FLOPs each); checkpoints write 14 bytes per parameter (bf16
weights + fp32 master weights, m and v) sharded over all ranks at a per-node
storage bandwidth derived from BLOOM (2.3 TB in 40 s from 48 nodes); the export
gathers the bf16 weights and writes SafeTensors shards of at most 5 GB, as
``transformers``' ``save_pretrained`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmcluster.sim import training
from llmcluster.sim.plan import (
    CHECKPOINT_BYTES_PER_PARAM,
    EXPORT_SHARD_BYTES,
    STORAGE_GBS_PER_NODE,
    RunPlan,
)
from llmcluster.sim.rng import Stream, generator
from llmcluster.sim.throughput import step_time_model_s

CHECKPOINT_FIXED_S = 1.5  # barrier, metadata, fsync
EXPORT_FIXED_S = 4.0  # gather to rank 0, dtype conversion, index file
VAL_GAP_NATS = (0.02, 0.06)
# With --speed auto, phases last at least this long on the wall clock so a demo has the
# rhythm of a real run (init 5-10 s, validation 5-10 s, checkpoint 3-5 s, export 5-10 s);
# the simulated duration is stretched to match, so the clock stays consistent.
PHASE_FLOOR_WALL_S = {"init": 6.0, "eval": 5.5, "checkpoint": 3.5, "export": 6.0, "restore": 3.0}


def paced_s(seconds: float, phase: str, pacing_speed: float) -> float:
    """``seconds`` of simulated time, at least the phase's wall floor at ``pacing_speed``
    (0 disables pacing: an explicit --speed gets the physics alone)."""
    return max(seconds, PHASE_FLOOR_WALL_S.get(phase, 0.0) * pacing_speed)


def init_time_s(plan: RunPlan, pacing_speed: float = 0.0) -> float:
    """Simulated seconds from rendezvous to the first step (model build, data index, warm-up)."""
    return paced_s(
        plan.init_s, "init", pacing_speed
    )  # val tracks train a little above (GPT-2 on OWT ~0.01, BLOOM 0.12)


def is_eval_step(plan: RunPlan, step: int) -> bool:
    """Validation runs every ``eval_interval`` steps and after the last step."""
    return step % plan.eval_interval == 0 or step == plan.total_steps


def is_checkpoint_step(plan: RunPlan, step: int) -> bool:
    """Checkpoints are saved every ``checkpoint_interval`` steps and after the last step."""
    return step % plan.checkpoint_interval == 0 or step == plan.total_steps


def eval_time_s(plan: RunPlan, pacing_speed: float = 0.0) -> float:
    """Simulated seconds of one validation pass."""
    return paced_s(plan.eval_iters * step_time_model_s(plan) / 3.0, "eval", pacing_speed)


def local_val_loss(plan: RunPlan, step: int, rank: int) -> float:
    """This rank's validation loss (its data-parallel replica's shard of the eval batches)."""
    dp_rank = (rank // plan.layout.tp) % plan.layout.dp
    gap = generator(plan.seed, Stream.EVAL, 0).uniform(*VAL_GAP_NATS)
    rng = generator(plan.seed, Stream.EVAL, step, dp_rank)
    sigma = training.local_loss_sigma(plan) / math.sqrt(plan.eval_iters)
    mean = training.expected_loss(plan, step) + float(gap)
    return max(training.LOSS_FLOOR, mean + sigma * float(rng.standard_normal()))


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint save."""

    step: int
    path: str
    shards: int
    bytes_total: int
    bytes_per_rank: int
    save_s: float
    bandwidth_gbs: float


def checkpoint_info(plan: RunPlan, step: int, pacing_speed: float = 0.0) -> CheckpointInfo:
    """Size, layout and duration of the checkpoint saved after ``step``."""
    total = int(CHECKPOINT_BYTES_PER_PARAM * plan.model.params)
    physics = CHECKPOINT_FIXED_S + total / (STORAGE_GBS_PER_NODE * plan.nnodes * 1e9)
    save_s = paced_s(physics, "checkpoint", pacing_speed)
    bandwidth = total / (save_s - CHECKPOINT_FIXED_S) / 1e9  # what the storage delivered
    return CheckpointInfo(
        step=step,
        path=f"{plan.checkpoint_dir}/iter_{step:07d}",
        shards=plan.world_size,
        bytes_total=total,
        bytes_per_rank=total // plan.world_size,
        save_s=save_s,
        bandwidth_gbs=bandwidth,
    )


@dataclass(frozen=True)
class ExportInfo:
    """The final SafeTensors export."""

    path: str
    files: tuple[tuple[str, int], ...]
    bytes_total: int
    export_s: float


def export_info(plan: RunPlan, pacing_speed: float = 0.0) -> ExportInfo:
    """Shards and duration of the bf16 SafeTensors export of the final weights."""
    total = int(2 * plan.model.params)
    count = max(1, math.ceil(total / EXPORT_SHARD_BYTES))
    if count == 1:
        files = (("model.safetensors", total),)
    else:
        size, rest = divmod(total, count)
        files = tuple(
            (f"model-{i + 1:05d}-of-{count:05d}.safetensors", size + (rest if i == 0 else 0))
            for i in range(count)
        )
    return ExportInfo(
        path=plan.export_dir,
        files=files,
        bytes_total=total,
        export_s=paced_s(
            EXPORT_FIXED_S + total / (STORAGE_GBS_PER_NODE * 1e9), "export", pacing_speed
        ),
    )
