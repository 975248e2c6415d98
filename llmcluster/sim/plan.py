"""The run plan: catalog picks, parallel layout, batch, schedule, events — derived, not guessed.

``make_plan`` is deterministic in its arguments (every process of a run builds
the identical plan from the seed). Figures come from ``shared/reference/physics.md``:

- global batch by model size: GPT-3 Table 2.1 (0.5M-3.2M tokens), Llama 1/2/3
  (4M tokens; 405B ramps to 16M), Pythia (2M);
- peak LR: GPT-3 Table 2.1 interpolated in log-log by size; Llama's own
  (3e-4 up to 13B, 1.5e-4 to 70B, 8e-5 for 405B); minimum 10 % of peak;
- the layout (TP, PP, ZeRO stage, micro-batch, recompute) is the one with the best
  expected throughput that fits in memory; nothing that does not fit is run;
- event rates are scaled to a demo run (a few per few hundred steps), not the
  per-GPU-hour rates of real clusters, which would show nothing in three minutes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmcluster.sim import hardware
from llmcluster.sim.catalog import Catalog, DatasetSpec, GpuSpec, ModelSpec
from llmcluster.sim.hardware import Fabric, Layout, Memory
from llmcluster.sim.rng import Stream, generator

DEFAULT_STEPS = 250
MAX_GRAD_ACCUM = 32
MEMORY_HEADROOM = 0.94  # plan at most this fraction of the card, spread included
STORAGE_GBS_PER_NODE = 1.2  # BLOOM: 2.3 TB in 40 s from 48 nodes [D]
CHECKPOINT_BYTES_PER_PARAM = 14  # bf16 weights + fp32 master, m, v
EXPORT_SHARD_BYTES = 5_000_000_000  # transformers' default max_shard_size "5GB"
GPU_WEIGHTS = {"H100-SXM": 8, "A100-SXM-80GB": 4, "H200-SXM": 3, "B200": 2, "MI300X": 1}
GPT3_LR = ((125e6, 6e-4), (350e6, 3e-4), (760e6, 2.5e-4), (1.3e9, 2e-4), (2.7e9, 1.6e-4),
           (6.7e9, 1.2e-4), (13e9, 1e-4), (175e9, 6e-5))  # fmt: skip
# (rate per step, kinds) scaled so a 300-step demo sees one or two of them
EVENT_RATES = {"spike": 1 / 350, "nan_skip": 1 / 600, "oom_retry": 1 / 900,
               "straggler": 1 / 450, "thermal": 1 / 600}  # fmt: skip
VERSIONS = (
    {"torch": "2.4.1+cu124", "nccl": "2.20.5", "cuda": "12.4", "driver": "550.90.07"},
    {"torch": "2.5.1+cu124", "nccl": "2.21.5", "cuda": "12.4", "driver": "550.127.08"},
    {"torch": "2.6.0+cu126", "nccl": "2.21.5", "cuda": "12.6", "driver": "560.35.03"},
    {"torch": "2.7.1+cu128", "nccl": "2.26.2", "cuda": "12.8", "driver": "570.133.20"},
)
ROCM_VERSIONS = ({"torch": "2.5.1+rocm6.2", "nccl": "2.20.5", "cuda": "rocm-6.2.41133",
                  "driver": "6.8.5"},)  # fmt: skip


class PlanError(ValueError):
    """A request the simulation cannot honour (unknown name, does not fit); one line."""


@dataclass(frozen=True)
class Event:
    """Something that happens to the run: a loss spike, a skipped step, a slow rank ..."""

    kind: str  # spike | nan_skip | oom_retry | straggler | thermal
    step: int
    rank: int = -1
    duration: float = 1.0  # steps (spike decay constant, straggler/thermal span)
    magnitude: float = 0.0  # nats for a spike, slowdown factor for a straggler

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
            "oom_retry": (
                f"rank {self.rank}: CUDA out of memory in backward; "
                "emptied the allocator cache and retried the micro-batch"
            ),
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


def _peak_lr(model: ModelSpec) -> float:
    n = model.active_params
    if model.family == "llama":
        return 3e-4 if n <= 14e9 else 1.5e-4 if n <= 80e9 else 8e-5
    sizes = np.log([s for s, _ in GPT3_LR])
    rates = np.log([r for _, r in GPT3_LR])
    return float(math.exp(np.interp(math.log(n), sizes, rates)))


def _target_batch_tokens(model: ModelSpec) -> float:
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


def _seq_len(model: ModelSpec) -> int:
    if model.release >= 2024:
        return min(model.context, 8192)
    return min(model.context, 4096)


def _divisors_up_to(n: int, limit: int) -> list[int]:
    return [d for d in (1, 2, 4, 8, 16, 32, 64) if d <= limit and n % d == 0]


def _fabric(layout: Layout, gpu: GpuSpec, nproc_per_node: int, world_size: int) -> Fabric:
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
class _Candidate:
    layout: Layout
    memory: Memory
    throughput: float
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
) -> _Candidate:
    """Expected throughput (tokens/s per GPU) and exposed-communication share of a layout."""
    fabric = _fabric(layout, gpu, ppn, world_size)
    tokens = layout.dp * layout.micro_batch * layout.grad_accum * layout.seq_len
    mfu = hardware.mfu_target(model, gpu, layout)
    compute = hardware.flops_per_token(model, layout.seq_len) * tokens
    compute /= world_size * gpu.bf16_tflops * 1e12 * mfu
    grads = 2.0 * model.params / (layout.tp * layout.pp)
    comm = hardware.allreduce_time_s(fabric, grads, "ring")
    exposed = max(0.1 * comm, comm - 0.66 * compute / layout.grad_accum)
    step = compute + exposed
    return _Candidate(layout, hardware.memory_per_gpu(model, layout), tokens / step / world_size,
                      exposed / step, step)  # fmt: skip


def _layouts(model: ModelSpec, gpu: GpuSpec, world_size: int, ppn: int) -> list[_Candidate]:
    """Every layout that fits in memory, each with the largest micro-batch that fits."""
    seq = _seq_len(model)
    target_seqs = max(1, round(_target_batch_tokens(model) / seq))
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
            accum = max(1, min(MAX_GRAD_ACCUM, round(target_seqs / (dp * micro_batch))))
            layout = Layout(tp, pp, dp, stage, micro_batch, accum, seq, recompute)
            if hardware.memory_per_gpu(model, layout).total_gb * 1.05 <= capacity:
                found.append(_evaluate(model, gpu, layout, world_size, ppn))
                break
    return found


def _best_layout(model: ModelSpec, gpu: GpuSpec, world_size: int, ppn: int) -> _Candidate | None:
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


def _min_gpus_hint(model: ModelSpec, gpu: GpuSpec) -> int:
    need = 16.0 * model.params / hardware.GIB / (hardware.capacity_gb(gpu) * 0.8)
    return max(2, 2 ** math.ceil(math.log2(max(1.0, need))))


def _strategy(layout: Layout) -> str:
    parts = []
    if layout.tp > 1:
        parts.append(f"TP{layout.tp}")
    if layout.pp > 1:
        parts.append(f"PP{layout.pp}")
    names = {0: "DDP", 1: "ZeRO-1", 2: "ZeRO-2", 3: "FSDP" if not parts else "ZeRO-3"}
    return " + ".join([names[layout.zero_stage], *parts])


def _nice_interval(total: int) -> int:
    nice = [n * 10**e for e in range(8) for n in (1, 2, 2.5, 5)]
    return int(next(n for n in sorted(nice) if n >= total / 3 and n == int(n)))


def _events(plan: RunPlan, rng: np.random.Generator) -> tuple[Event, ...]:
    steps, ranks = plan.total_steps, plan.world_size
    events: list[Event] = []
    if plan.precision == "fp16":  # the dynamic scaler calibrates down from 2^32
        events += [Event("nan_skip", s) for s in range(1, int(rng.integers(6, 14)) + 1)]
    for kind, rate in EVENT_RATES.items():
        if kind in ("straggler", "thermal", "oom_retry") and ranks == 1:
            continue
        earliest = max(2, steps // 20)
        count = int(rng.poisson(rate * steps))
        for start in sorted(int(s) for s in rng.integers(earliest, steps + 1, size=count)):
            rank = int(rng.integers(ranks))
            if kind == "spike":
                events.append(Event(kind, start, -1, float(rng.uniform(8, 30)),
                                    float(rng.uniform(0.25, 1.0))))  # fmt: skip
            elif kind == "nan_skip":
                events.append(Event(kind, start))
            elif kind == "oom_retry":
                events.append(Event(kind, start, rank, 1.0, 1.5))
            elif kind == "straggler":
                events.append(Event(kind, start, rank, float(rng.uniform(20, 80)),
                                    float(rng.uniform(1.1, 1.4))))  # fmt: skip
            else:
                events.append(Event(kind, start, rank, float(rng.uniform(40, 150)), 1.45))
    unique = {(e.kind, e.step): e for e in events}
    return tuple(sorted(unique.values(), key=lambda e: (e.step, e.kind)))


def _pick_gpu(catalog: Catalog, rng: np.random.Generator) -> GpuSpec:
    weights = np.array([GPU_WEIGHTS.get(g.name, 0.5) for g in catalog.gpus], dtype=float)
    return catalog.gpus[int(rng.choice(len(catalog.gpus), p=weights / weights.sum()))]


def _pick_model(
    catalog: Catalog, gpu: GpuSpec, world_size: int, ppn: int, rng: np.random.Generator
) -> ModelSpec | None:
    order = rng.permutation(len(catalog.models))
    humorous_turn = rng.random() < 0.2
    for index in order:
        model = catalog.models[int(index)]
        if model.humorous != humorous_turn:
            continue
        best = _best_layout(model, gpu, world_size, ppn)
        if best is not None and best.exposed_fraction < 0.25 and 1.0 <= best.step_s <= 60.0:
            return model  # a combination a team would actually run
    return None


def _lookup(find: Any, name: str) -> Any:
    try:
        return find(name)
    except KeyError as exc:
        raise PlanError(str(exc.args[0])) from None


def make_plan(
    catalog: Catalog,
    *,
    seed: int,
    world_size: int,
    nproc_per_node: int,
    steps: int | None = None,
    model: str | None = None,
    gpu: str | None = None,
    dataset: str | None = None,
) -> RunPlan:
    """Pick (or look up) model, GPU and dataset and derive the whole training setup.

    Picks and derived values use separate streams, so a plan rebuilt from the
    picked names (as ranks do) is identical to the one that made the picks.
    """
    rng = generator(seed, Stream.PLAN)
    gpu_spec = _lookup(catalog.gpu, gpu) if gpu else None
    model_spec = _lookup(catalog.model, model) if model else None
    data_spec = _lookup(catalog.dataset, dataset) if dataset else None
    ppn = min(nproc_per_node, world_size)
    tries = 0
    while model_spec is None or gpu_spec is None:
        candidate_gpu = gpu_spec or _pick_gpu(catalog, rng)
        if model_spec is None:
            picked = _pick_model(catalog, candidate_gpu, world_size, ppn, rng)
            if picked is not None:
                model_spec, gpu_spec = picked, candidate_gpu
        elif _best_layout(model_spec, candidate_gpu, world_size, ppn) is not None:
            gpu_spec = candidate_gpu
        tries += 1
        if tries > 50:
            break
    if model_spec is None or gpu_spec is None:
        raise PlanError(f"no catalog model fits on {world_size} GPU(s); try more --ranks")
    best = _best_layout(model_spec, gpu_spec, world_size, ppn)
    if best is None:
        raise PlanError(
            f"{model_spec.name} does not fit on {world_size} x {gpu_spec.name} "
            f"({hardware.capacity_gb(gpu_spec):.0f} GiB) even with ZeRO-3, tensor/pipeline "
            f"parallelism and full recompute; use at least "
            f"--ranks {_min_gpus_hint(model_spec, gpu_spec)} or a larger --gpu"
        )
    if data_spec is None:
        real = [d for d in catalog.datasets if not d.humorous]
        pool = catalog.datasets if model_spec.humorous or not real else tuple(real)
        data_spec = pool[int(rng.integers(len(pool)))]
    layout = best.layout
    rng = generator(seed, Stream.PLAN, 1)  # derived values do not depend on how picks were made
    total_steps = steps or DEFAULT_STEPS
    tokens_per_step = layout.dp * layout.micro_batch * layout.grad_accum * layout.seq_len
    peak_lr = _peak_lr(model_spec)
    warmup = max(1, min(2000, round(0.06 * total_steps)))
    schedule = "wsd" if rng.random() < 0.25 else "cosine"
    fabric = _fabric(layout, gpu_spec, ppn, world_size)
    precision = "bf16" if gpu_spec.bf16_supported else "fp16"
    interval = _nice_interval(total_steps)
    nnodes = -(-world_size // nproc_per_node)
    pattern = catalog.hostname_patterns[int(rng.integers(len(catalog.hostname_patterns)))]
    salt = int(rng.integers(1, 250))
    versions = dict((ROCM_VERSIONS if gpu_spec.vendor == "AMD" else VERSIONS)[
        int(rng.integers(len(ROCM_VERSIONS if gpu_spec.vendor == "AMD" else VERSIONS)))
    ])  # fmt: skip
    versions["python"] = "3.11.10"
    plan = RunPlan(
        seed=seed,
        world_size=world_size,
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        model=model_spec,
        gpu=gpu_spec,
        dataset=data_spec,
        total_steps=total_steps,
        layout=layout,
        global_batch=layout.dp * layout.micro_batch * layout.grad_accum,
        tokens_per_step=tokens_per_step,
        strategy=_strategy(layout),
        precision=precision,
        peak_lr=peak_lr,
        min_lr=0.1 * peak_lr,
        warmup_steps=warmup,
        schedule=schedule,
        decay_start=warmup + round(0.9 * (total_steps - warmup)),
        anneal_nats=float(rng.uniform(0.04, 0.07)) * 3.0,
        grad_norm_init=float(rng.uniform(4.0, 12.0)),
        grad_norm_floor=float(rng.uniform(0.2, 0.45)),
        grad_norm_tau=max(3.0, warmup / 2.0),
        flops_per_token=hardware.flops_per_token(model_spec, layout.seq_len),
        mfu_target=hardware.clamp_mfu(hardware.mfu_target(model_spec, gpu_spec, layout)),
        memory=best.memory,
        mem_spread=float(rng.uniform(0.015, 0.045)) if world_size > 1 else 0.0,
        fabric=fabric,
        grad_bucket_bytes=int(2 * model_spec.params / (layout.tp * layout.pp)),
        comm_volume_factor=1.5 if layout.zero_stage == 3 else 1.0,
        eval_interval=interval,
        eval_iters=max(2, min(40, total_steps // 8)),
        checkpoint_interval=interval,
        init_s=12.0 + 2.0 * math.log2(world_size) + 0.15 * model_spec.params / 1e9,
        node_names=tuple(_host(pattern, n, salt) for n in range(nnodes)),
        versions=versions,
        run_name=f"{model_spec.name.lower()}-{data_spec.name.lower()}-{world_size}x"
        f"{gpu_spec.name.split('-')[0].lower()}",
    )
    object.__setattr__(plan, "events", _events(plan, generator(seed, Stream.EVENTS)))
    return plan


def _host(pattern: str, node: int, salt: int) -> str:
    try:
        return pattern.format(n=node, r=salt)
    except (KeyError, IndexError, ValueError):
        return f"node{node:03d}"
