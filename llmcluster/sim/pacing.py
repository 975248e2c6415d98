"""How much wall time a simulated phase takes: the only place pacing lives.

The simulation's durations never depend on the speed (phases.py). With an
explicit ``--speed`` every phase passes at that speed. With ``--speed auto``
(about half a second of wall time per training step), the phases around the
steps would flash by or drag, so each gets a watchable wall duration instead:
its time at the auto speed, held inside the phase's band (start-up 5-10 s,
validation ~5 s, checkpoint 3-5 s, export 5-10 s) and never slower than real
time.
"""

from __future__ import annotations

WATCHABLE_WALL_S = {
    "init": (5.0, 10.0),
    "eval": (4.0, 6.0),
    "checkpoint": (3.0, 5.0),
    "restore": (3.0, 5.0),
    "export": (5.0, 10.0),
}


def wall_seconds(phase: str, sim_seconds: float, speed: float, *, auto: bool) -> float:
    """Wall seconds a phase of ``sim_seconds`` simulated seconds should take at ``speed``
    (simulated seconds per wall second); ``auto``: the speed was chosen for the steps."""
    if sim_seconds <= 0.0:
        return 0.0
    plain = sim_seconds / speed
    band = WATCHABLE_WALL_S.get(phase)
    if not auto or band is None:
        return plain
    low, high = band
    return min(sim_seconds, max(low, min(high, plain)))
