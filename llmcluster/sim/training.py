"""Training dynamics: learning-rate schedule, loss curve, gradient norm, loss scale.

Pure functions of (plan, step); references are to ``shared/reference/physics.md``.

- LR: linear warmup then cosine to 10 % of peak (GPT-3 App. B, Llama 2 section 2.2),
  or warmup-stable-decay with the last 10 % decaying (MiniCPM, arXiv 2404.06395).
- Loss: the Chinchilla form L(N, D) = E + A/N^alpha + B/D^beta with Epoch AI's refit
  (E 1.8172, A 482.01, B 2085.43, alpha 0.3478, beta 0.3658; arXiv 2404.10102),
  shifted by D0 so step 1 starts just above ln(vocab) (near-zero logits), with
  D counting tokens at the warmed-up learning rate, an annealing term that keeps
  the loss up while the LR is high (the WSD "river valley": loss drops in the
  decay), and spikes that recover exponentially over tens of steps (PaLM 5.1).
- Gradient norm: the pre-clip norm PyTorch's ``clip_grad_norm_`` returns, large
  at initialisation, settling below the clip value 1.0, rising late in the run
  (Defazio 2025) and jumping during spikes.
- Loss scale: 1.0 in bf16; in fp16 Megatron's dynamic scaler (initial 2^32,
  halved on every overflow, doubled after 1000 clean steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmcluster.sim.plan import Event, RunPlan

EPOCH_E, EPOCH_A, EPOCH_B = 1.8172, 482.01, 2085.43
EPOCH_ALPHA, EPOCH_BETA = 0.3478, 0.3658
START_ABOVE_LN_VOCAB = 0.1  # a real run starts slightly above ln V (GPT-2 124M: 10.96 vs 10.83)
FP16_INITIAL_SCALE = 2.0**32
FP16_SCALE_WINDOW = 1000
LOSS_FLOOR = 1.0


def lr_at(plan: RunPlan, step: int) -> float:
    """Learning rate used for ``step`` (1-based)."""
    peak, floor = plan.peak_lr, plan.min_lr
    if step <= plan.warmup_steps:
        return peak * step / plan.warmup_steps
    if plan.schedule == "wsd":
        if step <= plan.decay_start:
            return peak
        frac = (step - plan.decay_start) / max(1, plan.total_steps - plan.decay_start)
        return floor + (peak - floor) * (1.0 - frac)
    frac = (step - plan.warmup_steps) / max(1, plan.total_steps - plan.warmup_steps)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * min(1.0, frac)))


def effective_tokens(plan: RunPlan, step: int) -> float:
    """Tokens trained before ``step``, each weighted by how warmed-up the LR was."""
    done, warm = step - 1, plan.warmup_steps
    if done <= warm:
        weighted = done * (done + 1) / (2.0 * warm)
    else:
        weighted = (warm + 1) / 2.0 + (done - warm)
    return weighted * plan.tokens_per_step


def effective_params(plan: RunPlan) -> float:
    """N in the scaling law: the parameter count, or for a mixture of experts the
    geometric mean of total and active parameters."""
    model = plan.model
    return math.sqrt(model.params * model.active_params)


def law_floor(plan: RunPlan) -> float:
    """E + A/N^alpha: the loss this model approaches with unlimited data."""
    return EPOCH_E + EPOCH_A / effective_params(plan) ** EPOCH_ALPHA


def law_offset_tokens(plan: RunPlan) -> float:
    """D0 such that the law gives ln(vocab) + 0.1 before the first update."""
    gap = max(0.5, math.log(plan.model.vocab) + START_ABOVE_LN_VOCAB - law_floor(plan))
    return (EPOCH_B / gap) ** (1.0 / EPOCH_BETA)


def spike_at(plan: RunPlan, step: int) -> float:
    """Extra loss (nats) from spikes that started at or before ``step``, decaying."""
    extra = 0.0
    for event in plan.events:
        if event.kind == "spike" and event.step <= step:
            extra += event.magnitude * math.exp(-(step - event.step) / event.duration)
    return extra


def expected_loss(plan: RunPlan, step: int) -> float:
    """The global training loss the law predicts for ``step`` (before batch noise)."""
    tokens = effective_tokens(plan, step) + law_offset_tokens(plan)
    law = law_floor(plan) + EPOCH_B / tokens**EPOCH_BETA
    anneal = plan.anneal_nats * lr_at(plan, step) / plan.peak_lr
    return max(LOSS_FLOOR, law + anneal + spike_at(plan, step))


def local_loss_sigma(plan: RunPlan) -> float:
    """Std-dev of one data-parallel group's mean loss: per-token losses spread ~2.5 nats,
    and tokens of one document are correlated (about 100 tokens per independent sample)."""
    return 2.5 / math.sqrt(max(1.0, plan.tokens_per_step / plan.dp / 100.0))


def grad_norm_at(plan: RunPlan, step: int) -> float:
    """Expected pre-clip global gradient norm at ``step`` (before per-step noise)."""
    progress = step / plan.total_steps
    settle = plan.grad_norm_floor + plan.grad_norm_init * math.exp(-step / plan.grad_norm_tau)
    return settle * (1.0 + 0.6 * progress**2) * (1.0 + 4.0 * spike_at(plan, step))


def skipped_steps(plan: RunPlan) -> tuple[int, ...]:
    """Steps whose update is skipped (fp16 overflow or a NaN gradient), in order."""
    return tuple(e.step for e in plan.events if e.kind == "nan_skip")


def loss_scale_at(plan: RunPlan, step: int) -> float:
    """The dynamic loss scale in effect at ``step`` (1.0 when training in bf16)."""
    if plan.precision != "fp16":
        return 1.0
    scale, clean_since = FP16_INITIAL_SCALE, 1
    for skipped in skipped_steps(plan):
        if skipped > step:
            break
        scale *= 2.0 ** ((skipped - clean_since) // FP16_SCALE_WINDOW)
        scale = max(1.0, scale / 2.0)
        clean_since = skipped + 1
    return scale * 2.0 ** (max(0, step - clean_since) // FP16_SCALE_WINDOW)


@dataclass(frozen=True)
class GlobalStep:
    """What every rank agrees on for one step without communicating."""

    step: int
    lr: float
    expected_loss: float
    loss_scale: float
    spike: bool
    nan_skip: bool
    events: tuple[dict[str, object], ...]


def events_starting(plan: RunPlan, step: int) -> tuple[Event, ...]:
    """Events whose first step is ``step``."""
    return tuple(e for e in plan.events if e.step == step)


def global_step(plan: RunPlan, step: int) -> GlobalStep:
    """The schedule, expected loss and events of ``step``."""
    starting = events_starting(plan, step)
    return GlobalStep(
        step=step,
        lr=lr_at(plan, step),
        expected_loss=expected_loss(plan, step),
        loss_scale=loss_scale_at(plan, step),
        spike=any(e.kind == "spike" for e in starting),
        nan_skip=any(e.kind == "nan_skip" for e in starting),
        events=tuple(e.describe(plan) for e in starting),
    )
