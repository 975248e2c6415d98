"""The phases around the training steps: start-up, validation, checkpoints, restarts.

Every duration is simulated seconds from the same physics as the steps, the
same for a seed at any ``--speed`` (pacing.py decides only how much wall time
a phase takes): validation runs ``eval_iters`` forward passes of a global
batch (a third of a training step's FLOPs each, within ~1.5 % from one
evaluation to the next); checkpoints write 14 bytes per
parameter (bf16 weights + fp32 master weights, m and v) sharded over all ranks
at a per-node storage bandwidth derived from BLOOM (2.3 TB in 40 s from 48
nodes, slower by a few per cent when other jobs share the storage), and a
restart reads the same back; a restart first stops the failed
group and starts the processes again (torchrun: SIGTERM, wait, new rendezvous
round, interpreter and CUDA/NCCL start, model build).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmcluster.sim import training
from llmcluster.sim.rng import Stream, generator
from llmcluster.sim.runplan import RunPlan
from llmcluster.sim.throughput import step_time_model_s

CHECKPOINT_BYTES_PER_PARAM = 14  # bf16 weights + fp32 master, m, v
STORAGE_GBS_PER_NODE = 1.2  # BLOOM: 2.3 TB in 40 s from 48 nodes [D]
CHECKPOINT_FIXED_S = 1.5  # barrier, metadata, fsync
STOP_GROUP_S = 4.0  # torchrun: SIGTERM to the surviving workers and waiting for them
RENDEZVOUS_BASE_S = 1.5  # c10d rendezvous round with every agent present
RENDEZVOUS_PER_DOUBLING_S = 0.4
EVAL_SPREAD = 0.015  # relative step-to-step spread of a validation pass (data loading, kernels)
STORAGE_SPREAD = 0.06  # of a checkpoint's write time (other jobs on the shared storage)
VAL_GAP_NATS = (0.02, 0.06)  # val tracks train a little above (GPT-2 on OWT ~0.01, BLOOM 0.12)
EVAL_TIME_KEY, STORAGE_KEY = 10**9 + 1, 10**9 + 2  # EVAL stream keys no step can take


def init_time_s(plan: RunPlan) -> float:
    """Simulated seconds from rendezvous to the first step (model build, data index, warm-up)."""
    return plan.init_s


def rendezvous_time_s(plan: RunPlan) -> float:
    """Simulated seconds of one rendezvous round of all ``nnodes`` agents."""
    return RENDEZVOUS_BASE_S + RENDEZVOUS_PER_DOUBLING_S * math.log2(plan.nnodes + 1)


def restart_overhead_s(plan: RunPlan) -> float:
    """Simulated seconds a restart costs before its rendezvous and checkpoint load: stopping
    the failed group, then starting its processes and rebuilding the model again."""
    return STOP_GROUP_S + plan.init_s


def is_eval_step(plan: RunPlan, step: int) -> bool:
    """Validation runs every ``eval_interval`` steps and after the last step."""
    return step % plan.eval_interval == 0 or step == plan.total_steps


def is_checkpoint_step(plan: RunPlan, step: int) -> bool:
    """Checkpoints are saved every ``checkpoint_interval`` steps and after the last step."""
    return step % plan.checkpoint_interval == 0 or step == plan.total_steps


def _jitter(plan: RunPlan, kind: int, step: int, spread: float) -> float:
    return 1.0 + spread * float(generator(plan.seed, Stream.EVAL, kind, step).standard_normal())


def eval_time_s(plan: RunPlan, step: int | None = None) -> float:
    """Simulated seconds of one validation pass: ``eval_iters`` forward passes, varying a
    little from one evaluation to the next (``step``; None: the nominal figure)."""
    nominal = plan.eval_iters * step_time_model_s(plan) / 3.0
    return nominal if step is None else nominal * _jitter(plan, EVAL_TIME_KEY, step, EVAL_SPREAD)


def local_val_loss(plan: RunPlan, step: int, rank: int) -> float:
    """This rank's validation loss (its data-parallel replica's shard of the eval batches)."""
    dp_rank = (rank // plan.layout.tp) % plan.layout.dp
    gap = generator(plan.seed, Stream.EVAL, 0).uniform(*VAL_GAP_NATS)
    rng = generator(plan.seed, Stream.EVAL, step, dp_rank)
    sigma = training.local_loss_sigma(plan) / math.sqrt(plan.eval_iters)
    mean = training.expected_val_loss(plan, step) + float(gap)
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


def checkpoint_info(plan: RunPlan, step: int) -> CheckpointInfo:
    """Size, layout and duration of the checkpoint saved after ``step``."""
    total = int(CHECKPOINT_BYTES_PER_PARAM * plan.model.params)
    bandwidth = STORAGE_GBS_PER_NODE * plan.nnodes
    contention = max(0.8, _jitter(plan, STORAGE_KEY, step, STORAGE_SPREAD))  # shared storage
    return CheckpointInfo(
        step=step,
        path=f"{plan.checkpoint_dir}/iter_{step:07d}",
        shards=plan.world_size,
        bytes_total=total,
        bytes_per_rank=total // plan.world_size,
        save_s=CHECKPOINT_FIXED_S + total / (bandwidth * 1e9) * contention,
        bandwidth_gbs=bandwidth / contention,
    )


def restore_time_s(plan: RunPlan, step: int) -> float:
    """Simulated seconds to load the checkpoint of ``step`` after a restart (read back at the
    bandwidth it was written with)."""
    return checkpoint_info(plan, step).save_s
