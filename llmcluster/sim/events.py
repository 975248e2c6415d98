"""The run's natural events, drawn from the seed: spikes, skipped steps, slow or hot GPUs, OOMs.

Rates are scaled to a demo run (a few per few hundred steps), not the per-GPU-hour
rates of real clusters, which would show nothing in three minutes, but keep
the conditions real events need:

- loss spikes are rare and come at high learning rate in bigger models (PaLM saw
  ~20 in 540B and none in its small models; BLOOM one; Llama 3 "few"): most
  250-step runs have none, some one; never in the last 10 % of a run, and each
  recovers (~30 steps) before the run ends;
- an out-of-memory error kills its rank (no mainstream framework retries a
  micro-batch); it needs a plan that already fills the card (fragmentation
  tips it over), so only tight plans draw one;
- fp16 runs skip their first steps while the dynamic loss scaler calibrates down
  from 2^32.
"""

from __future__ import annotations

import numpy as np

from llmcluster.sim.runplan import Event, RunPlan
from llmcluster.sim.training import lr_at

SPIKE_RATE_BY_SIZE = ((1e9, 1 / 2000), (10e9, 1 / 700), (float("inf"), 1 / 400))  # per step
SPIKE_MIN_LR_SHARE = 0.6  # only while the LR is within this share of its peak
SPIKE_LATEST_SHARE = 0.9  # never in the last 10 % of the run
SPIKE_RECOVERY_STEPS = (22.0, 40.0)
SPIKE_NATS = (0.4, 1.4)
SPIKE_MIN_GAP = 60  # steps between two spikes
EVENT_RATES = {"nan_skip": 1 / 600, "straggler": 1 / 450, "thermal": 1 / 600, "oom": 1 / 1200}
OOM_MIN_MEMORY_SHARE = 0.85  # of the card's capacity, before the allocator's fragmentation
THERMAL_EXCESS_C = (15.0, 40.0)  # how far above slowdown full power would drive a degraded GPU


def _spike_rate(plan: RunPlan) -> float:
    return next(rate for size, rate in SPIKE_RATE_BY_SIZE if plan.model.active_params < size)


def spike_window(plan: RunPlan) -> tuple[int, ...]:
    """Steps a natural spike may peak at: after warmup, at high LR, early enough to recover
    and outside the last 10 % of the run."""
    latest = min(int(SPIKE_LATEST_SHARE * plan.total_steps),
                 plan.total_steps - int(SPIKE_RECOVERY_STEPS[1]))  # fmt: skip
    return tuple(
        s
        for s in range(plan.warmup_steps + 6, latest + 1)
        if lr_at(plan, s) >= SPIKE_MIN_LR_SHARE * plan.peak_lr
    )


def _spikes(plan: RunPlan, rng: np.random.Generator) -> list[Event]:
    window = spike_window(plan)
    count = int(rng.poisson(_spike_rate(plan) * len(window))) if window else 0
    peaks: list[int] = []
    for step in sorted(int(s) for s in rng.choice(window, size=count)) if count else ():
        if not peaks or step - peaks[-1] >= SPIKE_MIN_GAP:
            peaks.append(step)
    return [
        Event(
            "spike",
            step,
            -1,
            float(rng.uniform(*SPIKE_RECOVERY_STEPS)),
            float(rng.uniform(*SPIKE_NATS)),
        )
        for step in peaks
    ]


def memory_share(plan: RunPlan) -> float:
    """How full the plan keeps the fullest card (spread included)."""
    return plan.memory.total_gb * (1.0 + plan.mem_spread) / (plan.gpu.memory_mib / 1024.0)


def plan_events(plan: RunPlan, rng: np.random.Generator) -> tuple[Event, ...]:
    """Every natural event of the run, in step order."""
    steps, ranks = plan.total_steps, plan.world_size
    events: list[Event] = []
    if plan.precision == "fp16":  # the dynamic scaler calibrates down from 2^32
        events += [Event("nan_skip", s) for s in range(1, int(rng.integers(6, 14)) + 1)]
    events += _spikes(plan, rng)
    for kind, rate in EVENT_RATES.items():
        if kind != "nan_skip" and ranks == 1:
            continue
        if kind == "oom" and memory_share(plan) < OOM_MIN_MEMORY_SHARE:
            continue
        earliest = max(2, steps // 20)
        count = int(rng.poisson(rate * steps))
        for start in sorted(int(s) for s in rng.integers(earliest, steps + 1, size=count)):
            rank = int(rng.integers(ranks))
            if kind == "nan_skip":
                events.append(Event(kind, start))
            elif kind == "oom":
                events.append(Event(kind, start, rank))
            elif kind == "straggler":
                events.append(Event(kind, start, rank, float(rng.uniform(20, 80)),
                                    float(rng.uniform(1.1, 1.4))))  # fmt: skip
            else:
                events.append(Event(kind, start, rank, float(rng.uniform(40, 150)),
                                    float(rng.uniform(*THERMAL_EXCESS_C))))  # fmt: skip
    unique = {(e.kind, e.step): e for e in events}
    return tuple(sorted(unique.values(), key=lambda e: (e.step, e.kind)))
