"""Training dynamics: learning-rate schedule, loss curve, gradient norm, loss scale.

Pure functions of (plan, step); references are to ``shared/reference/physics.md``.

- LR: linear warmup then cosine to 10 % of peak (GPT-3 App. B, Llama 2 section 2.2),
  or warmup-stable-decay with the last 10 % decaying (MiniCPM, arXiv 2404.06395).
- Loss: the Chinchilla form L(N, D) = E + A/N^alpha + B/D^beta with Epoch AI's refit
  (E 1.8172, A 482.01, B 2085.43, alpha 0.3478, beta 0.3658; arXiv 2404.10102),
  shifted per kind of data (data.py: code and TinyStories sit far lower than web
  text), shifted by D0 so step 1 starts just above ln(vocab) (near-zero logits),
  with D counting tokens at the warmed-up learning rate and saturating once the
  data repeats (Muennighoff 2023), an annealing term that keeps the loss up while
  the LR is high (the WSD "river valley": loss drops in the decay), memorisation
  that pulls the training loss below validation after a few epochs, and spikes.
- Spikes have the shape of BLOOM-176B's logbook (real-logs.md 2d, 2022-04-12): the
  gradient norm climbs geometrically over ~5 steps to 100-1000x its level before
  the loss peaks (2.2 -> 5.1 nats there), then the loss falls fast and recovers
  over ~30 iterations while the norm decays back.
- Gradient norm: the pre-clip norm PyTorch's ``clip_grad_norm_`` returns, large
  at initialisation, settling below the clip value 1.0, rising late in the run
  (Defazio 2025) and exploding before a spike.
- Loss scale: 1.0 in bf16; in fp16 Megatron's dynamic scaler (initial 2^32,
  halved on every overflow, doubled after 1000 clean steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from llmcluster.sim import data
from llmcluster.sim.rng import Stream, generator
from llmcluster.sim.runplan import FATAL_KINDS, Event, RunPlan

EPOCH_A, EPOCH_B = 482.01, 2085.43  # E comes from the kind of data (data.py)
EPOCH_ALPHA, EPOCH_BETA = 0.3478, 0.3658
START_ABOVE_LN_VOCAB = 0.1  # a real run starts slightly above ln V (GPT-2 124M: 10.96 vs 10.83)
FP16_INITIAL_SCALE = 2.0**32
FP16_SCALE_WINDOW = 1000
LOSS_FLOOR = 0.05  # numerical safety only; the data's floor is data.KIND_LAWS
MEMORISED_LOSS = 0.08  # the training loss on samples the model has learned by heart
OVERFIT_VAL_RISE = 0.1  # relative rise of the validation loss per e-fold of 4 repeated epochs
GRAD_NOISE = 0.08  # step-to-step log-normal spread of the norm
SPIKE_GRAD_NOISE = 0.35  # far noisier while it explodes (BLOOM: 353 -> 379 -> 650 after 960)
SPIKE_PRECURSOR_LOSS = 0.12  # share of the peak the loss wobbles up while the norm climbs
SPIKE_FAST_SHARE = 0.7  # BLOOM: 5.10 -> 3.49 -> 3.21 -> 2.80 ... back to 2.2 in ~30 steps


@dataclass(frozen=True)
class SpikeShape:
    """How one spike unfolds around its loss peak at ``peak``."""

    peak: int
    precursor_steps: int  # the norm starts climbing this many steps before the peak
    norm_growth: float  # the norm at the peak over its level before (100-1000x)
    nats: float  # loss excess at the peak
    recovery_steps: float


@cache
def _shape(seed: int, peak: int, nats: float, recovery: float) -> SpikeShape:
    rng = generator(seed, Stream.EVENTS, 3, peak)
    return SpikeShape(peak, int(rng.integers(4, 7)), float(10.0 ** rng.uniform(2.0, 3.0)),
                      nats, recovery)  # fmt: skip


def spike_shapes(plan: RunPlan) -> tuple[SpikeShape, ...]:
    """The shape of every spike of the run, in order."""
    return tuple(
        _shape(plan.seed, e.step, e.magnitude, e.duration) for e in plan.events if e.kind == "spike"
    )


def spike_loss_at(shape: SpikeShape, step: int) -> float:
    """Loss excess (nats) of one spike at ``step``."""
    t = step - shape.peak
    if t < -shape.precursor_steps:
        return 0.0
    if t < 0:
        climb = (shape.precursor_steps + t + 1) / shape.precursor_steps
        return shape.nats * SPIKE_PRECURSOR_LOSS * climb * climb
    slow = max(1.0, shape.recovery_steps / 4.0)
    return shape.nats * (
        SPIKE_FAST_SHARE * math.exp(-t) + (1.0 - SPIKE_FAST_SHARE) * math.exp(-t / slow)
    )


def spike_norm_factor(shape: SpikeShape, step: int) -> float:
    """Factor on the gradient norm from one spike at ``step`` (1 outside it)."""
    t = step - shape.peak
    if t < -shape.precursor_steps:
        return 1.0
    if t <= 0:
        return shape.norm_growth ** ((t + shape.precursor_steps) / shape.precursor_steps)
    decay = max(1.0, shape.recovery_steps / 6.0)
    return 1.0 + (shape.norm_growth - 1.0) * 0.45 * math.exp(-t / decay)


def in_spike(plan: RunPlan, step: int) -> bool:
    """True while a spike's norm is far above its level (its noise is larger then)."""
    return any(spike_norm_factor(s, step) > 3.0 for s in spike_shapes(plan))


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
    """E + A/N^alpha for this data: the loss this model approaches with unlimited data."""
    law = data.kind_law(plan)
    return law.floor + law.model_scale * EPOCH_A / effective_params(plan) ** EPOCH_ALPHA


def law_offset_tokens(plan: RunPlan) -> float:
    """D0 such that the law gives ln(vocab) + 0.1 before the first update."""
    gap = max(0.5, math.log(plan.model.vocab) + START_ABOVE_LN_VOCAB - law_floor(plan))
    return (data.kind_law(plan).data_scale * EPOCH_B / gap) ** (1.0 / EPOCH_BETA)


def spike_at(plan: RunPlan, step: int) -> float:
    """Extra loss (nats) from the run's spikes at ``step``."""
    return sum(spike_loss_at(shape, step) for shape in spike_shapes(plan))


def generalising_loss(plan: RunPlan, step: int) -> float:
    """The law's loss at ``step`` on unseen data of the same kind (before memorisation)."""
    tokens = data.unique_tokens(plan, effective_tokens(plan, step)) + law_offset_tokens(plan)
    law = law_floor(plan) + data.kind_law(plan).data_scale * EPOCH_B / tokens**EPOCH_BETA
    anneal = plan.anneal_nats * lr_at(plan, step) / plan.peak_lr
    return law + anneal + spike_at(plan, step)


def expected_loss(plan: RunPlan, step: int) -> float:
    """The global training loss for ``step`` (before batch noise)."""
    general = generalising_loss(plan, step)
    memorised = data.memorisation(plan, step)
    return max(LOSS_FLOOR, general - memorised * max(0.0, general - MEMORISED_LOSS))


def expected_val_loss(plan: RunPlan, step: int) -> float:
    """The validation loss for ``step`` without its small held-out gap and noise: the law's,
    rising as the model overfits the repeated training samples, the more the more it repeats."""
    overfit = data.memorisation(plan, step) * math.log1p(data.repeated_epochs(plan, step) / 4.0)
    return generalising_loss(plan, step) * (1.0 + OVERFIT_VAL_RISE * overfit)


def local_loss_sigma(plan: RunPlan) -> float:
    """Std-dev of one data-parallel group's mean loss: per-token losses spread ~2.5 nats,
    and tokens of one document are correlated (about 100 tokens per independent sample)."""
    return 2.5 / math.sqrt(max(1.0, plan.tokens_per_step / plan.dp / 100.0))


def grad_norm_at(plan: RunPlan, step: int) -> float:
    """Expected pre-clip global gradient norm at ``step`` (before per-step noise)."""
    progress = step / plan.total_steps
    settle = plan.grad_norm_floor + plan.grad_norm_init * math.exp(-step / plan.grad_norm_tau)
    factor = 1.0
    for shape in spike_shapes(plan):
        factor *= spike_norm_factor(shape, step)
    return settle * (1.0 + 0.6 * progress**2) * factor


def grad_norm_noise(plan: RunPlan, step: int) -> float:
    """Log-normal sigma of the norm around :func:`grad_norm_at` at ``step``."""
    return SPIKE_GRAD_NOISE if in_spike(plan, step) else GRAD_NOISE


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
    """Events whose first step is ``step`` (a fatal one is announced by the failure instead,
    and would not happen again when the step is replayed after the restart)."""
    return tuple(e for e in plan.events if e.step == step and e.kind not in FATAL_KINDS)


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
