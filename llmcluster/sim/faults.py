"""Injected faults for demos: ``--inject kill:rank=17,step=40`` and ``--chaos RATE``.

Process faults (``kill``, ``hang``, ``oom``) are carried out for real by the
rank process: SIGKILL to itself, going silent while alive, or torch's OOM
traceback and exit code 1 (natural OOM events of the plan join them).
Hardware and training faults (``straggler``, ``throttle``, ``nan``, ``spike``)
become simulation events, so their effects flow through the same physics as
natural ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmcluster.sim.rng import Stream, generator
from llmcluster.sim.runplan import Event, RunPlan


class FaultError(ValueError):
    """An ``--inject`` value that cannot be carried out; one line naming what is wrong."""


KEYS = {
    "kill": {"rank": True, "step": True},
    "hang": {"rank": True, "step": True},
    "oom": {"rank": True, "step": True},
    "straggler": {"rank": True, "slowdown": False, "step": False, "steps": False},
    "throttle": {"gpu": True, "step": False, "steps": False},
    "nan": {"step": True},
    "spike": {"step": True, "size": False},
}
THROTTLE_EXCESS_C = 25.0  # an injected throttle: full power would run 25 C past slowdown


@dataclass(frozen=True)
class Fault:
    """One injected fault."""

    kind: str
    rank: int = -1
    step: int = 1
    value: float = 0.0  # slowdown factor, spike size (nats)
    steps: int = 0  # duration in steps (0: to the end of the run)


def _number(kind: str, key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FaultError(f"--inject {kind}: {key} must be a number, got {text!r}") from None


def parse_fault(text: str) -> Fault:
    """Parse ``kind:key=value,...``; raises FaultError naming what is wrong."""
    kind, _, rest = text.strip().partition(":")
    if kind not in KEYS:
        raise FaultError(f"--inject: unknown fault {kind!r} (expected {', '.join(KEYS)})")
    values: dict[str, float] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in KEYS[kind]:
            allowed = ", ".join(KEYS[kind])
            raise FaultError(f"--inject {kind}: unknown or malformed {item!r} (keys: {allowed})")
        values[key] = _number(kind, key, value)
    missing = [k for k, required in KEYS[kind].items() if required and k not in values]
    if missing:
        raise FaultError(f"--inject {kind}: missing {', '.join(missing)}")
    rank = int(values.get("rank", values.get("gpu", -1)))
    step = int(values.get("step", 1))
    first = 0 if kind in ("kill", "hang") else 1  # step 0: in rendezvous, before the barrier
    if step < first:
        raise FaultError(f"--inject {kind}: step must be >= {first}, got {step}")
    default_value = {"straggler": 1.3, "spike": 0.8}.get(kind, 0.0)
    value = values.get("slowdown", values.get("size", default_value))
    if kind == "straggler" and not 1.0 < value <= 10.0:
        raise FaultError(f"--inject straggler: slowdown must be in (1, 10], got {value:g}")
    return Fault(kind, rank, step, value, int(values.get("steps", 0)))


def parse_faults(specs: list[str] | tuple[str, ...], ranks: int) -> tuple[Fault, ...]:
    """Parse every ``--inject`` value (each may hold several faults separated by ';')."""
    faults = [parse_fault(part) for spec in specs for part in spec.split(";") if part.strip()]
    for fault in faults:
        targets_rank = "rank" in KEYS[fault.kind] or "gpu" in KEYS[fault.kind]
        if targets_rank and not 0 <= fault.rank < ranks:
            raise FaultError(
                f"--inject {fault.kind}: rank must be between 0 and {ranks - 1}, got {fault.rank}"
            )
    return tuple(faults)


def chaos_faults(plan: RunPlan, rate: float) -> tuple[Fault, ...]:
    """Random rank failures (mostly crashes, some hangs) at ``rate`` per step, seeded."""
    if rate <= 0:
        return ()
    rng = generator(plan.seed, Stream.EVENTS, 2)
    count = int(rng.poisson(rate * plan.total_steps))
    steps = sorted(int(s) for s in rng.integers(2, plan.total_steps + 1, size=count))
    return tuple(
        Fault("hang" if rng.random() < 0.2 else "kill", int(rng.integers(plan.world_size)), step)
        for step in steps
    )


def process_faults(plan: RunPlan, faults: tuple[Fault, ...]) -> tuple[Fault, ...]:
    """Kills, hangs and OOMs (injected or the plan's) in the order they fire: the i-th fires
    in restart attempt i (a replayed step does not fail again)."""
    chosen = [f for f in faults if f.kind in ("kill", "hang")]
    chosen += [Fault("oom", e.rank, e.step) for e in plan.events if e.kind == "oom"]
    return tuple(sorted(chosen, key=lambda f: f.step))


def fault_events(plan: RunPlan, faults: tuple[Fault, ...]) -> tuple[Event, ...]:
    """Simulation events for the hardware and training faults."""
    events = []
    for fault in faults:
        span = float(fault.steps or plan.total_steps + 1 - fault.step)
        if fault.kind == "straggler":
            events.append(Event("straggler", fault.step, fault.rank, span, fault.value))
        elif fault.kind == "throttle":
            events.append(Event("thermal", fault.step, fault.rank, span, THROTTLE_EXCESS_C))
        elif fault.kind == "nan":
            events.append(Event("nan_skip", fault.step))
        elif fault.kind == "spike":
            events.append(Event("spike", fault.step, -1, 30.0, fault.value))
        elif fault.kind == "oom":
            events.append(Event("oom", fault.step, fault.rank))
    return tuple(events)
