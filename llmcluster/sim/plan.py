"""The run plan: catalog picks, parallel layout, batch, schedule, events — derived, not guessed.

``make_plan`` is deterministic in its arguments (every process of a run builds
the identical plan from the seed). Figures come from ``shared/reference/physics.md``:

- the pick (picks.py), the layout and the recipe batch (layout.py);
- peak LR: GPT-3 Table 2.1 interpolated in log-log by size; Llama's own
  (3e-4 up to 13B, 1.5e-4 to 70B, 8e-5 for 405B); minimum 10 % of peak;
- warmup 6 % of the steps (at least 10, at most 2,000 as in Llama 1/2/3);
- validation every third of the run with a recipe's ``eval_iters`` (10-100,
  within a fifth of the training time between evaluations);
- events (events.py).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from llmcluster.sim import hardware
from llmcluster.sim.catalog import Catalog, ModelSpec
from llmcluster.sim.events import plan_events
from llmcluster.sim.layout import best_layout, fabric_for, min_gpus_hint, strategy_name
from llmcluster.sim.picks import pick_dataset, pick_gpu, pick_model
from llmcluster.sim.rng import Stream, generator
from llmcluster.sim.runplan import Event, PlanError, RunPlan

__all__ = ["Event", "PlanError", "RunPlan", "make_plan"]

DEFAULT_STEPS = 250
MIN_WARMUP_STEPS = 10
EVAL_ITERS_CHOICES = (10, 20, 25, 50, 100)  # Megatron's default is 100, nanoGPT's 200
EVAL_BUDGET = 0.2  # validation costs at most this share of the training between evals
GPT3_LR = ((125e6, 6e-4), (350e6, 3e-4), (760e6, 2.5e-4), (1.3e9, 2e-4), (2.7e9, 1.6e-4),
           (6.7e9, 1.2e-4), (13e9, 1e-4), (175e9, 6e-5))  # fmt: skip
VERSIONS = (
    {"torch": "2.4.1+cu124", "nccl": "2.20.5", "cuda": "12.4", "driver": "550.90.07"},
    {"torch": "2.5.1+cu124", "nccl": "2.21.5", "cuda": "12.4", "driver": "550.127.08"},
    {"torch": "2.6.0+cu126", "nccl": "2.21.5", "cuda": "12.6", "driver": "560.35.03"},
    {"torch": "2.7.1+cu128", "nccl": "2.26.2", "cuda": "12.8", "driver": "570.133.20"},
)
ROCM_VERSIONS = ({"torch": "2.5.1+rocm6.2", "nccl": "2.20.5", "cuda": "rocm-6.2.41133",
                  "driver": "6.8.5"},)  # fmt: skip


def _peak_lr(model: ModelSpec) -> float:
    n = model.active_params
    if model.family == "llama":
        return 3e-4 if n <= 14e9 else 1.5e-4 if n <= 80e9 else 8e-5
    sizes = np.log([s for s, _ in GPT3_LR])
    rates = np.log([r for _, r in GPT3_LR])
    return float(math.exp(np.interp(math.log(n), sizes, rates)))


def _nice_interval(total: int) -> int:
    nice = [n * 10**e for e in range(8) for n in (1, 2, 2.5, 5)]
    return int(next(n for n in sorted(nice) if n >= total / 3 and n == int(n)))


def _warmup(total_steps: int) -> int:
    floor = min(MIN_WARMUP_STEPS, max(1, total_steps // 4))
    return max(floor, min(2000, round(0.06 * total_steps)))


def _eval_iters(interval: int, rng: np.random.Generator) -> int:
    # one eval iteration is a forward pass of a global batch, a third of a training step
    allowed = [n for n in EVAL_ITERS_CHOICES if n / 3.0 <= EVAL_BUDGET * interval]
    pool = allowed[-3:] or [max(1, round(3.0 * EVAL_BUDGET * interval))]
    return int(pool[int(rng.integers(len(pool)))])


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
        candidate_gpu = gpu_spec or pick_gpu(catalog, rng)
        if model_spec is None:
            picked = pick_model(catalog, candidate_gpu, world_size, ppn, rng, data_spec)
            if picked is not None:
                model_spec, gpu_spec = picked, candidate_gpu
        elif best_layout(model_spec, candidate_gpu, world_size, ppn) is not None:
            gpu_spec = candidate_gpu
        tries += 1
        if tries > 50:
            break
    if model_spec is None or gpu_spec is None:
        raise PlanError(f"no catalog model fits on {world_size} GPU(s); try more --ranks")
    best = best_layout(model_spec, gpu_spec, world_size, ppn)
    if best is None:
        raise PlanError(
            f"{model_spec.name} does not fit on {world_size} x {gpu_spec.name} "
            f"({hardware.capacity_gb(gpu_spec):.0f} GiB) even with ZeRO-3, tensor/pipeline "
            f"parallelism and full recompute; use at least "
            f"--ranks {min_gpus_hint(model_spec, gpu_spec)} or a larger --gpu"
        )
    if data_spec is None:
        data_spec = pick_dataset(catalog, model_spec, rng)
    layout = best.layout
    rng = generator(seed, Stream.PLAN, 1)  # derived values do not depend on how picks were made
    total_steps = steps or DEFAULT_STEPS
    tokens_per_step = layout.dp * layout.micro_batch * layout.grad_accum * layout.seq_len
    peak_lr = _peak_lr(model_spec)
    warmup = _warmup(total_steps)
    schedule = "wsd" if rng.random() < 0.25 else "cosine"
    precision = "bf16" if gpu_spec.bf16_supported else "fp16"
    interval = _nice_interval(total_steps)
    nnodes = -(-world_size // nproc_per_node)
    fitting = [p.pattern for p in catalog.hostname_patterns if p.fits(gpu_spec.name)]
    pattern = fitting[int(rng.integers(len(fitting)))]
    salt = int(rng.integers(1, 250))
    stacks = ROCM_VERSIONS if gpu_spec.vendor == "AMD" else VERSIONS
    versions = dict(stacks[int(rng.integers(len(stacks)))])
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
        strategy=strategy_name(layout),
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
        fabric=fabric_for(layout, gpu_spec, ppn, world_size),
        grad_bucket_bytes=int(2 * model_spec.params / (layout.tp * layout.pp)),
        comm_volume_factor=1.5 if layout.zero_stage == 3 else 1.0,
        eval_interval=interval,
        eval_iters=_eval_iters(interval, rng),
        checkpoint_interval=interval,
        init_s=12.0 + 2.0 * math.log2(world_size) + 0.15 * model_spec.params / 1e9,
        node_names=tuple(_host(pattern, n, salt) for n in range(nnodes)),
        versions=versions,
        run_name=f"{model_spec.name.lower()}-{data_spec.name.lower()}-{world_size}x"
        f"{gpu_spec.name.split('-')[0].lower()}",
    )
    return replace(plan, events=plan_events(plan, generator(seed, Stream.EVENTS)))


def _host(pattern: str, node: int, salt: int) -> str:
    try:
        return pattern.format(n=node, r=salt)
    except (KeyError, IndexError, ValueError):
        return f"node{node:03d}"
