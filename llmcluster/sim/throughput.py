"""Per-step work of one rank and the step's throughput figures, all from one step time.

step time = max over ranks of compute + exposed communication, where compute =
FLOPs per step / (GPUs x peak x MFU) minus the communication the backward pass
hides, stretched per rank by its silicon (MAMF spreads 5 % within a node),
its clock (temperature) and stragglers. tokens/s, samples/s,
TFLOPs/GPU and MFU are then all derived from that same step time, so
tokens/s x step time = tokens per step exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmcluster.sim import hardware, training
from llmcluster.sim.gpu import RankState
from llmcluster.sim.rng import Stream, generator
from llmcluster.sim.runplan import RunPlan

MFU_DRIFT = 0.015  # slow, relative
MFU_NOISE = 0.004  # per step, relative
COMPUTE_JITTER = 0.008  # per rank and step, relative
BACKWARD_SHARE = 0.66  # the part of the last micro-batch's compute that overlaps the allreduce


@dataclass(frozen=True)
class CommCost:
    """The modelled gradient allreduce of one step."""

    nbytes: int
    total_s: float
    exposed_s: float
    algbw_gbs: float
    busbw_gbs: float


def comm_time_s(plan: RunPlan, nbytes: float, algorithm: str) -> float:
    """Modelled allreduce time of ``nbytes`` over the data-parallel group."""
    return hardware.allreduce_time_s(plan.fabric, nbytes, algorithm)


def step_mfu(plan: RunPlan, step: int) -> float:
    """The MFU the cluster would reach at ``step`` without stragglers: slow drift + noise."""
    rng = generator(plan.seed, Stream.STEP, step)
    drift = MFU_DRIFT * math.sin(2.0 * math.pi * step / 97.0 + plan.seed % 7)
    return plan.mfu_target * (1.0 + drift) * (1.0 + MFU_NOISE * float(rng.standard_normal()))


def comm_cost(plan: RunPlan, algorithm: str) -> CommCost:
    """The step's gradient synchronisation: full modelled time and the exposed part."""
    nbytes = plan.grad_bucket_bytes
    total = comm_time_s(plan, nbytes * plan.comm_volume_factor, algorithm)
    nominal = plan.flops_per_step / (plan.world_size * plan.peak_flops * plan.mfu_target)
    hidden = BACKWARD_SHARE * nominal / plan.layout.grad_accum
    exposed = max(0.1 * total, total - hidden) if total else 0.0
    algbw = nbytes / total / 1e9 if total else 0.0
    return CommCost(nbytes, total, exposed, algbw, algbw * hardware.busbw_factor(plan.dp))


def nominal_compute_s(plan: RunPlan, step: int, exposed_s: float) -> float:
    """Compute time of an average rank at ``step`` (the exposed comm completes the step)."""
    target = plan.flops_per_step / (plan.world_size * plan.peak_flops * step_mfu(plan, step))
    return max(0.5 * target, target - exposed_s)


def step_time_model_s(plan: RunPlan) -> float:
    """Expected simulated seconds per step (used to choose the demo's speed)."""
    return plan.flops_per_step / (plan.world_size * plan.peak_flops * plan.mfu_target)


@dataclass(frozen=True)
class RankStep:
    """One rank's share of a step, before the allreduce."""

    local_loss: float
    local_tokens: int
    grad_sq: float
    compute_s: float


def local_tokens(plan: RunPlan, rank: int) -> int:
    """Tokens this rank contributes to the token count; the ranks' shares sum exactly."""
    share, extra = divmod(plan.tokens_per_step, plan.world_size)
    return share + (1 if rank < extra else 0)


def slowdown(plan: RunPlan, state: RankState, step: int) -> float:
    """How much slower than nominal this rank computes at ``step`` (>= ~0.97)."""
    factor = state.speed_factor * state.clock_factor(plan.gpu)
    for event in plan.events:
        if event.kind == "straggler" and event.rank == state.rank and event.active(step):
            factor *= event.magnitude
    return factor


def rank_step(plan: RunPlan, state: RankState, step: int, *, attempt: int = 0) -> RankStep:
    """This rank's local loss, token count, squared-gradient share and compute time.

    Ranks of one data-parallel replica (its TP x PP group) see the same micro-batches
    and so the same local loss; replicas differ by batch noise that shrinks with batch
    size. ``attempt`` changes only timing jitter: a replayed step has the same data.
    """
    dp_rank = (state.rank // plan.layout.tp) % plan.layout.dp
    glob = training.global_step(plan, step)
    data_rng = generator(plan.seed, Stream.LOCAL_LOSS, step, dp_rank)
    local_loss = glob.expected_loss + training.local_loss_sigma(plan) * float(
        data_rng.standard_normal()
    )
    step_rng = generator(plan.seed, Stream.STEP, step, 1)
    sigma = training.grad_norm_noise(plan, step)
    norm = training.grad_norm_at(plan, step) * math.exp(sigma * float(step_rng.standard_normal()))
    if glob.nan_skip:
        grad_sq = math.nan
    else:
        share = 1.0 + 0.05 * float(data_rng.standard_normal())
        grad_sq = norm * norm * share / plan.world_size
    # calibrated against the ring (NCCL's choice for large buckets), so that another
    # --algorithm shows its real cost in the step time and MFU
    exposed = comm_cost(plan, "ring").exposed_s
    jitter_rng = generator(plan.seed, Stream.COMPUTE, step, state.rank, attempt)
    jitter = 1.0 + COMPUTE_JITTER * float(jitter_rng.standard_normal())
    compute = nominal_compute_s(plan, step, exposed) * slowdown(plan, state, step) * jitter
    return RankStep(
        local_loss=max(training.LOSS_FLOOR, local_loss),
        local_tokens=local_tokens(plan, state.rank),
        grad_sq=grad_sq,
        compute_s=compute,
    )


@dataclass(frozen=True)
class StepMetrics:
    """Throughput figures of one step, all derived from its step time."""

    ppl: float
    tokens: int
    tokens_per_s: float
    samples_per_s: float
    tflops_per_gpu: float
    mfu: float
    comm_s: float
    busbw_gbs: float
    algbw_gbs: float


def step_metrics(
    plan: RunPlan, step: int, *, loss: float, step_time_s: float, comm_s: float
) -> StepMetrics:
    """PPL = e^loss; tokens/s = tokens per step / step time; MFU = achieved / peak FLOP/s."""
    achieved = plan.flops_per_step / step_time_s / plan.world_size
    algbw = plan.grad_bucket_bytes / comm_s / 1e9 if comm_s > 0 else 0.0
    return StepMetrics(
        ppl=math.exp(loss) if math.isfinite(loss) else math.nan,
        tokens=plan.tokens_per_step,
        tokens_per_s=plan.tokens_per_step / step_time_s,
        samples_per_s=plan.global_batch / step_time_s,
        tflops_per_gpu=achieved / 1e12,
        mfu=achieved / plan.peak_flops,
        comm_s=comm_s,
        busbw_gbs=algbw * hardware.busbw_factor(plan.dp),
        algbw_gbs=algbw,
    )
