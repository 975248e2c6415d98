"""A run's setup: what every process of the run derives from its configuration.

The plan (from the seed and the flags) with the injected and chaos events applied, and the
process faults the ranks carry out. ``checked_plan`` is the CLI's form: every problem is a
one-line ConfigError naming the flag, before anything starts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from llmcluster import sim
from llmcluster.config import MAX_RANKS, ConfigError, RunConfig
from llmcluster.sim.catalog import load_catalog
from llmcluster.sim.faults import (
    Fault,
    FaultError,
    chaos_faults,
    fault_events,
    parse_faults,
    process_faults,
)


@dataclass(frozen=True)
class RunSetup:
    """The plan with injected and chaos events applied, and the process faults to carry out."""

    plan: sim.RunPlan
    process_faults: tuple[Fault, ...]


@functools.lru_cache(maxsize=4)
def build_setup(config: RunConfig) -> RunSetup:
    """What every process of the run derives from the config (identically, from the seed);
    kept, so that a node agent builds it once and the ranks it forks inherit it."""
    plan = sim.make_plan(
        load_catalog(),
        seed=config.seed,
        world_size=config.ranks,
        nproc_per_node=config.nproc_per_node,
        steps=config.steps,
        model=config.model,
        gpu=config.gpu,
        dataset=config.dataset,
    )
    faults = parse_faults(tuple(config.inject), config.ranks) + chaos_faults(plan, config.chaos)
    # a plan's own OOMs kill ranks: only when failures are asked for (--chaos), never by surprise
    natural = tuple(e for e in plan.events if e.kind != "oom" or config.chaos > 0)
    events = tuple(sorted(natural + fault_events(plan, faults), key=lambda e: (e.step, e.kind)))
    plan = replace(plan, events=events)
    return RunSetup(plan, process_faults(plan, faults))


def checked_plan(config: RunConfig) -> sim.RunPlan:
    """The run's plan, with every --inject checked against it; ConfigError if it cannot be."""
    try:
        faults = parse_faults(config.inject, config.ranks)
    except FaultError as exc:
        raise ConfigError(str(exc)) from None
    except (OverflowError, ValueError):  # int() of an infinite or NaN value
        raise ConfigError("--inject values must be finite numbers") from None
    try:
        setup = build_setup(config)
    except ValueError as exc:  # PlanError: an unknown name, or nothing fits
        if config.model and str(exc).startswith("no catalog model fits"):
            raise ConfigError(model_hint(config)) from None
        raise ConfigError(str(exc)) from None
    total = setup.plan.total_steps
    for fault in faults:
        if fault.step > total:
            raise ConfigError(
                f"--inject {fault.kind}: step must be between 1 and {total} (--steps), "
                f"got {fault.step}"
            )
    return setup.plan


def model_hint(config: RunConfig) -> str:
    """Why the named model fits on no GPU type at --ranks: how many of the largest it needs."""
    catalog = load_catalog()
    largest = max(catalog.gpus, key=lambda gpu: gpu.memory_mib)
    ranks = config.ranks
    while ranks < MAX_RANKS:
        ranks = min(MAX_RANKS, ranks * 2)
        try:
            sim.make_plan(
                catalog, seed=config.seed, world_size=ranks,
                nproc_per_node=config.nproc_per_node, model=config.model, gpu=largest.name,
            )  # fmt: skip
        except ValueError:
            continue
        return (
            f"--model {config.model} does not fit on {config.ranks} GPU(s) of any type; "
            f"it needs --ranks {ranks} or more on {largest.name} "
            f"({largest.memory_mib / 1024:.0f} GiB), the largest GPU"
        )
    return f"--model {config.model} does not fit on even {MAX_RANKS} GPUs of any type"
