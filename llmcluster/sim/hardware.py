"""Hardware models: FLOPs, MFU, memory per GPU and the alpha-beta cost of collectives.

Pure functions of the model, the GPU and the parallel layout; references are to
``shared/reference/physics.md``.

- FLOPs per token = 6N + 12·L·d·T (PaLM App. B; nanoGPT ``estimate_mfu``).
- MFU: published 35-55 % band (Llama 3 405B 43 % on H100, BLOOM ~48 % and
  Megatron 44-52 % on A100, MegaScale 55 %), lower for MI300X whose achievable
  matmul is 51 % of peak; penalties for pipeline bubbles, tensor-parallel
  traffic and full recomputation (8N instead of 6N FLOPs per token).
- Memory: 16 bytes/param for mixed-precision Adam, sharded by ZeRO stage
  (arXiv 1910.02054), activations 34·s·b·h per layer with selective recompute
  (FlashAttention-equivalent) or 2·s·b·h with full recompute (Korthikanti et
  al. 2022), fp32 logits, and CUDA context + NCCL buffers + allocator slack.
- Collectives: NCCL 2.30's tuning model (``src/graph/tuning.cc``): latency
  base + per-hop NVLink/network terms, bandwidth at ~80 % of the link spec
  (ml-engineering's rule of thumb) and NICs at 73 % (measured B200 4-node busbw, where
  per-GPU NIC rate = busbw x (k-1)/(n-1)), tree bandwidth x 0.92; hierarchical =
  intra-node reduce-scatter, inter-node ring on 1/ppn of the data, all-gather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmcluster.sim.catalog import GpuSpec, ModelSpec

GIB = 1024.0**3
LINK_EFFICIENCY = 0.8
NIC_EFFICIENCY = 0.73  # B200 4-node allreduce: per-GPU NIC rate ~73 % of wire speed
CUDA_CONTEXT_GIB = 0.5  # nvidia-smi: 516 MiB reserved on an 80 GB H100
NCCL_BUFFERS_GIB = 1.2
ALLOCATOR_SLACK = 0.06  # the caching allocator reserves more than it allocates
BASE_MFU = {
    "Volta": 0.47,
    "Ampere": 0.50,
    "Ada": 0.40,
    "Hopper": 0.45,
    "Blackwell": 0.42,
    "CDNA3": 0.40,
}
MFU_BAND = (0.40, 0.53)  # targets; the displayed MFU also pays for stragglers and comm
# NCCL Simple-protocol latencies in microseconds (tuning.cc)
NCCL_BASE_US = {"ring": 8.4, "tree": 8.4}
NCCL_NVLINK_US = {"ring": 3.4, "tree": 4.0}
NCCL_NET_US = {"ring": 14.0 * 1.4, "tree": 14.0}  # ring multi-node x1.4 on sm80+
TREE_BW_FACTOR = 0.92


def flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Training FLOPs per token: 6·N_active + 12·layers·hidden·seq."""
    return 6.0 * model.active_params + 12.0 * model.layers * model.hidden * seq_len


@dataclass(frozen=True)
class Layout:
    """How a model is spread over the GPUs."""

    tp: int
    pp: int
    dp: int
    zero_stage: int
    micro_batch: int
    grad_accum: int
    seq_len: int
    recompute: str  # "selective" | "full"


def mfu_target(model: ModelSpec, gpu: GpuSpec, layout: Layout) -> float:
    """Expected model-FLOPs utilisation of this layout (before stragglers and comm)."""
    mfu = BASE_MFU.get(gpu.arch, 0.42)
    mfu -= 0.015 * math.log2(layout.tp)
    mfu *= 1.0 - (layout.pp - 1) / (layout.pp - 1 + layout.grad_accum)  # 1F1B bubble
    mfu -= 0.02 if layout.zero_stage == 3 else 0.0
    mfu -= 0.03 * max(0.0, 3.0 - math.log2(layout.micro_batch * layout.seq_len / 1024))
    if model.active_params < 1e9:
        mfu -= 0.04  # small GEMMs do not fill the GPU
    if layout.recompute == "full":
        mfu *= 0.75  # 8N of work for 6N of model FLOPs
    return mfu


def clamp_mfu(mfu: float) -> float:
    """Keep a target inside the published band."""
    low, high = MFU_BAND
    return min(high, max(low, mfu))


@dataclass(frozen=True)
class Memory:
    """Per-GPU memory in GiB (the ``_gb`` fields of the output are GiB, as torch prints)."""

    weights_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float
    overhead_gb: float

    @property
    def total_gb(self) -> float:
        """Everything, including allocator slack."""
        core = self.weights_gb + self.grads_gb + self.optimizer_gb + self.activations_gb
        return core + self.overhead_gb


def memory_per_gpu(model: ModelSpec, layout: Layout) -> Memory:
    """Mixed-precision Adam state sharded by ZeRO stage, plus activations and overhead."""
    local = model.params / (layout.tp * layout.pp)
    dp, stage = layout.dp, layout.zero_stage
    weights = 2.0 * local / (dp if stage >= 3 else 1)
    grads = 2.0 * local / (dp if stage >= 2 else 1)
    optimizer = 12.0 * local / (dp if stage >= 1 else 1)
    if stage >= 3:  # one transformer block is gathered at a time (+ prefetch of the next)
        weights += 2 * 2.0 * (model.params / model.layers) / layout.tp
    s, b, h, t = layout.seq_len, layout.micro_batch, model.hidden, layout.tp
    per_layer = 34.0 * s * b * h / t if layout.recompute == "selective" else 2.0 * s * b * h
    layers_held = model.layers  # 1F1B: stage 1 keeps pp micro-batches of layers/pp layers
    activations = per_layer * layers_held
    if layout.recompute == "full":
        activations += 34.0 * s * b * h / t  # the layer being recomputed
    activations += 4.0 * s * b * model.vocab / t  # fp32 logits for the loss
    core = (weights + grads + optimizer + activations) / GIB
    overhead = CUDA_CONTEXT_GIB + NCCL_BUFFERS_GIB + ALLOCATOR_SLACK * core
    return Memory(
        weights_gb=weights / GIB,
        grads_gb=grads / GIB,
        optimizer_gb=optimizer / GIB,
        activations_gb=activations / GIB,
        overhead_gb=overhead,
    )


def capacity_gb(gpu: GpuSpec) -> float:
    """Usable memory in GiB as nvidia-smi reports the total."""
    return gpu.memory_mib / 1024.0


@dataclass(frozen=True)
class Fabric:
    """The group a gradient allreduce runs over and the links it crosses."""

    ranks: int
    nodes: int
    ranks_per_node: int
    nvlink_gbs: float
    nic_gbs: float


def allreduce_time_s(fabric: Fabric, nbytes: float, algorithm: str) -> float:
    """Modelled time of one allreduce of ``nbytes`` (NCCL's latency + bandwidth model)."""
    n, nodes, ppn = fabric.ranks, fabric.nodes, fabric.ranks_per_node
    if n <= 1:
        return 0.0
    nvlink = fabric.nvlink_gbs * LINK_EFFICIENCY * 1e9
    nic = fabric.nic_gbs * NIC_EFFICIENCY * 1e9
    if algorithm == "hierarchical" and nodes > 1 and ppn > 1:
        intra = 2.0 * (
            (ppn - 1) * NCCL_NVLINK_US["ring"] * 1e-6 + (ppn - 1) / ppn * nbytes / nvlink
        )
        inter_bytes = nbytes / ppn
        inter = 2.0 * (
            (nodes - 1) * NCCL_NET_US["ring"] * 1e-6 + (nodes - 1) / nodes * inter_bytes / nic
        )
        return NCCL_BASE_US["ring"] * 1e-6 + intra + inter
    bus = nvlink
    if nodes > 1:  # only the node-crossing hops ride the NICs (nccl-tests: k GPUs per node)
        bus = min(nvlink, nic * (n - 1) / max(1, ppn - 1))
    if algorithm == "tree":
        latency = NCCL_BASE_US["tree"] + 2.0 * (
            (ppn - 1) * NCCL_NVLINK_US["tree"] + math.log2(nodes) * NCCL_NET_US["tree"]
        )
        return latency * 1e-6 + nbytes / (bus * TREE_BW_FACTOR * 0.5)
    steps = 2 * (n - 1)
    inter_steps = 2 * (nodes - 1)
    latency = (
        NCCL_BASE_US["ring"]
        + (steps - inter_steps) * NCCL_NVLINK_US["ring"]
        + inter_steps * NCCL_NET_US["ring"]
    )
    return latency * 1e-6 + nbytes / (bus * n / steps)


def busbw_factor(ranks: int) -> float:
    """nccl-tests' allreduce bus-bandwidth factor 2(n-1)/n."""
    return 2.0 * (ranks - 1) / ranks if ranks > 1 else 0.0
