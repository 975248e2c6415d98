"""The parallel layout: TP, PP, ZeRO stage, micro-batch, accumulation and recompute.

The layout is the one with the best expected throughput that fits in memory;
nothing that does not fit is run. Global batches come as recipes give them:
the target tokens per step by model size (GPT-3 Table 2.1 0.5M-3.2M tokens,
Llama 1/2/3 4M, Pythia 2M; physics.md 1.4), reached with power-of-two
micro-batches and power-of-two gradient accumulation, so a power-of-two
data-parallel degree gives a power-of-two global batch (1024 = 16 x 2 x 32,
not 992 = 16 x 2 x 31); other degrees give the nearest batch of that form.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from llmcluster.sim import hardware
from llmcluster.sim.catalog import GpuSpec, ModelSpec
from llmcluster.sim.hardware import Fabric, Layout, Memory

MAX_GRAD_ACCUM = 32
MEMORY_HEADROOM = 0.94  # plan at most this fraction of the card, spread included
ACCUM_CHOICES = tuple(2**k for k in range(int(math.log2(MAX_GRAD_ACCUM)) + 1))


def target_batch_tokens(model: ModelSpec) -> float:
    """Tokens per optimizer step a recipe of this size uses."""
    n = model.active_params
    if n < 400e6:
        return 0.5e6
    if n < 2e9:
        return 1e6
    if n < 10e9:
        return 2e6 if model.family in ("gpt2", "gpt-neox") else 4e6
    if n < 100e9:
        return 4e6
    return 8e6


def seq_len(model: ModelSpec) -> int:
    """Training sequence length (8K for 2024 models, else up to 4K)."""
    if model.release >= 2024:
        return min(model.context, 8192)
    return min(model.context, 4096)


def _divisors_up_to(n: int, limit: int) -> list[int]:
    return [d for d in (1, 2, 4, 8, 16, 32, 64) if d <= limit and n % d == 0]


def fabric_for(layout: Layout, gpu: GpuSpec, nproc_per_node: int, world_size: int) -> Fabric:
    """The links the data-parallel gradient allreduce of ``layout`` crosses."""
    span = min(world_size, layout.dp * layout.tp)  # ranks of one pipeline stage
    nodes = max(1, math.ceil(span / nproc_per_node))
    return Fabric(
        ranks=layout.dp,
        nodes=nodes,
        ranks_per_node=max(1, layout.dp // nodes),
        nvlink_gbs=gpu.nvlink_gbs,
        nic_gbs=gpu.nic_gbs,
    )


@dataclass(frozen=True)
class Candidate:
    """A layout that fits, with its expected speed."""

    layout: Layout
    memory: Memory
    throughput: float  # tokens/s per GPU
    exposed_fraction: float
    step_s: float


def _parallel_shapes(model: ModelSpec, world_size: int, ppn: int) -> list[tuple[int, int]]:
    """(tp, pp) pairs Megatron would accept: TP inside a node dividing the heads, PP dividing
    the layers, and pipeline parallelism only for models too big to be worth less."""
    shapes = []
    for tp in _divisors_up_to(world_size, min(8, ppn)):
        if model.heads % tp or (model.kv_heads % tp and tp % model.kv_heads):
            continue
        for pp in _divisors_up_to(world_size // tp, 64):
            if model.layers % pp == 0 and (pp == 1 or model.params >= 20e9):
                shapes.append((tp, pp))
    return shapes


def _evaluate(
    model: ModelSpec, gpu: GpuSpec, layout: Layout, world_size: int, ppn: int
) -> Candidate:
    """Expected throughput (tokens/s per GPU) and exposed-communication share of a layout."""
    fabric = fabric_for(layout, gpu, ppn, world_size)
    tokens = layout.dp * layout.micro_batch * layout.grad_accum * layout.seq_len
    mfu = hardware.mfu_target(model, gpu, layout)
    compute = hardware.flops_per_token(model, layout.seq_len) * tokens
    compute /= world_size * gpu.bf16_tflops * 1e12 * mfu
    grads = 2.0 * model.params / (layout.tp * layout.pp)
    comm = hardware.allreduce_time_s(fabric, grads, "ring")
    exposed = max(0.1 * comm, comm - 0.66 * compute / layout.grad_accum)
    step = compute + exposed
    return Candidate(layout, hardware.memory_per_gpu(model, layout), tokens / step / world_size,
                     exposed / step, step)  # fmt: skip


def recipe_accum(target_seqs: float, dp: int, micro_batch: int) -> int:
    """The power-of-two accumulation whose global batch is nearest ``target_seqs`` (in log)."""
    wanted = math.log(max(1.0, target_seqs / (dp * micro_batch)))
    return min(ACCUM_CHOICES, key=lambda a: (abs(math.log(a) - wanted), a))


def _layouts(model: ModelSpec, gpu: GpuSpec, world_size: int, ppn: int) -> list[Candidate]:
    """Every layout that fits in memory, each with the largest micro-batch that fits."""
    seq = seq_len(model)
    target_seqs = max(1.0, target_batch_tokens(model) / seq)
    capacity = hardware.capacity_gb(gpu) * MEMORY_HEADROOM
    found = []
    for (tp, pp), stage, recompute in itertools.product(
        _parallel_shapes(model, world_size, ppn), (0, 1, 2, 3), ("selective", "full")
    ):
        dp = world_size // (tp * pp)
        for micro_batch in (8, 4, 2, 1):
            if micro_batch > max(1, target_seqs // dp):
                continue  # would overshoot the global batch already without accumulation
            # small clusters train with smaller batches rather than absurd accumulation
            accum = recipe_accum(target_seqs, dp, micro_batch)
            layout = Layout(tp, pp, dp, stage, micro_batch, accum, seq, recompute)
            if hardware.memory_per_gpu(model, layout).total_gb * 1.05 <= capacity:
                found.append(_evaluate(model, gpu, layout, world_size, ppn))
                break
    return found


def best_layout(model: ModelSpec, gpu: GpuSpec, world_size: int, ppn: int) -> Candidate | None:
    """The fastest layout that fits (None: the model does not fit on these GPUs)."""
    candidates = _layouts(model, gpu, world_size, ppn)
    if not candidates:
        return None
    # fastest first; among near-ties prefer less model parallelism and a lower ZeRO stage
    return max(
        candidates,
        key=lambda c: (
            round(c.throughput, -1 if c.throughput > 100 else 0),
            -c.layout.tp * c.layout.pp,
            -c.layout.zero_stage,
        ),
    )


def min_gpus_hint(model: ModelSpec, gpu: GpuSpec) -> int:
    """A GPU count that would hold the model's training state."""
    need = 16.0 * model.params / hardware.GIB / (hardware.capacity_gb(gpu) * 0.8)
    return max(2, 2 ** math.ceil(math.log2(max(1.0, need))))


def strategy_name(layout: Layout) -> str:
    """``ZeRO-1 + TP8 + PP4`` and the like."""
    parts = []
    if layout.tp > 1:
        parts.append(f"TP{layout.tp}")
    if layout.pp > 1:
        parts.append(f"PP{layout.pp}")
    names = {0: "DDP", 1: "ZeRO-1", 2: "ZeRO-2", 3: "FSDP" if not parts else "ZeRO-3"}
    return " + ".join([names[layout.zero_stage], *parts])
