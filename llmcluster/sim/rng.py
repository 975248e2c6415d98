"""Seeded randomness: every draw of a run derives from ``--seed`` alone.

A run has one root seed; each purpose (loss noise, telemetry, events ...) and
each (step, rank) gets its own ``numpy.random.Generator`` spawned from it
through a ``SeedSequence`` key. Every process can therefore compute any rank's
draw for any step without talking to the others, and the same seed replays
the same run exactly.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """What a generator is for (part of its SeedSequence key, so streams never overlap)."""

    PLAN = 1
    LOCAL_LOSS = 2
    STEP = 3
    COMPUTE = 4
    TELEMETRY = 5
    PERSONALITY = 6
    EVAL = 7
    EVENTS = 8
    HOSTS = 9


def generator(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """The generator for ``stream`` at ``keys`` (e.g. step, rank) of the run seeded ``seed``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, int(stream), *keys])))
