"""The run plan's data types: the plan every process derives from the seed, and its events.

Only data and the facts read straight off it; ``plan.make_plan`` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmcluster.sim.catalog import DatasetSpec, GpuSpec, ModelSpec
from llmcluster.sim.hardware import Fabric, Layout, Memory

FATAL_KINDS = ("oom",)  # events that kill the rank (the run fails over and restarts)


class PlanError(ValueError):
    """A request the simulation cannot honour (unknown name, does not fit); one line."""


@dataclass(frozen=True)
class Event:
    """Something that happens to the run: a loss spike, a skipped step, a slow rank ..."""

    kind: str  # spike | nan_skip | oom | straggler | thermal
    step: int  # a spike's loss peak; the step an OOM kills its rank in
    rank: int = -1
    duration: float = 1.0  # steps (spike recovery, straggler/thermal span)
    # spike: nats at the peak; straggler: slowdown factor; thermal: how far (C) past slowdown
    # full power would drive the GPU with its cooling degraded
    magnitude: float = 0.0

    def active(self, step: int) -> bool:
        """True while the event affects ``step``."""
        return self.step <= step < self.step + max(1, round(self.duration))

    def describe(self, plan: RunPlan) -> dict[str, Any]:
        """The event as an output record entry (kind, rank, text)."""
        texts = {
            "spike": f"loss spike (+{self.magnitude:.2f} nats), recovering",
            "nan_skip": (
                "gradient overflow, skipping iteration and halving the loss scale"
                if plan.precision == "fp16"
                else "NaN in gradients, skipping iteration"
            ),
            "oom": f"rank {self.rank}: torch.OutOfMemoryError: CUDA out of memory",
            "straggler": (
                f"rank {self.rank} is {100 * (self.magnitude - 1):.0f}% slower than its peers "
                f"(fail-slow, ~{self.duration:.0f} steps)"
            ),
            "thermal": f"rank {self.rank}: GPU cooling degraded, temperature rising",
        }
        return {"kind": self.kind, "rank": self.rank, "text": texts[self.kind]}


@dataclass(frozen=True)
class RunPlan:
    """Everything fixed for the run; built identically by every process from the seed."""

    seed: int
    world_size: int
    nproc_per_node: int
    nnodes: int
    model: ModelSpec
    gpu: GpuSpec
    dataset: DatasetSpec
    total_steps: int
    layout: Layout
    global_batch: int
    tokens_per_step: int
    strategy: str
    precision: str
    peak_lr: float
    min_lr: float
    warmup_steps: int
    schedule: str
    decay_start: int
    anneal_nats: float
    grad_norm_init: float
    grad_norm_floor: float
    grad_norm_tau: float
    flops_per_token: float
    mfu_target: float
    memory: Memory
    mem_spread: float
    fabric: Fabric
    grad_bucket_bytes: int
    comm_volume_factor: float
    eval_interval: int
    eval_iters: int
    checkpoint_interval: int
    init_s: float
    node_names: tuple[str, ...]
    versions: dict[str, str]
    run_name: str
    events: tuple[Event, ...] = field(default=())

    @property
    def dp(self) -> int:
        """Data-parallel degree."""
        return self.layout.dp

    @property
    def seq_len(self) -> int:
        """Training sequence length."""
        return self.layout.seq_len

    @property
    def flops_per_step(self) -> float:
        """Model FLOPs of one optimizer step over the whole cluster."""
        return self.flops_per_token * self.tokens_per_step

    @property
    def peak_flops(self) -> float:
        """Dense BF16 (fp16 on V100) FLOP/s of one GPU."""
        return self.gpu.bf16_tflops * 1e12

    @property
    def checkpoint_dir(self) -> str:
        """Where checkpoints go."""
        return f"/checkpoints/{self.run_name}"

    @property
    def export_dir(self) -> str:
        """Where the final SafeTensors export goes."""
        return f"/exports/{self.run_name}"
