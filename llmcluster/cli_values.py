"""argparse value types for ``llmcluster``'s flags: each turns a bad value into one line
(argparse's ``ArgumentTypeError``), never a traceback."""

from __future__ import annotations

import argparse
import datetime
import math
import time
from collections.abc import Callable

from llmcluster.config import ConfigError, parse_duration
from llmcluster.worker.logspec import parse_ranks_filter, std_from_str

MAX_SIZE_BYTES = 1 << 40


def int_value(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def float_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def interval_value(text: str) -> float:
    """Seconds in (0, 3600], as torchrun's ``--monitor-interval``."""
    value = float_value(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 3600], got {text!r}")
    return value


def speed_value(text: str) -> float | None:
    return None if text.strip().lower() == "auto" else float_value(text)


def duration_value(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def start_time_value(text: str) -> float:
    """``--start-time``: an ISO 8601 time (local time unless it says), or ``-2h``-style."""
    value = text.strip()
    if value.startswith("-"):
        try:
            return time.time() - parse_duration(value[1:])
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError, OSError):
        raise argparse.ArgumentTypeError(
            f"expected an ISO time like 2026-11-30T09:00 or a relative one like -2h, got {text!r}"
        ) from None


def size_value(text: str) -> int:
    units = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
             "g": 1 << 30, "gb": 1 << 30}  # fmt: skip
    lowered = text.strip().lower()
    number = lowered.rstrip("kmgb")
    unit = lowered[len(number) :]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        value = math.nan
    if not 0 <= value <= MAX_SIZE_BYTES:  # also NaN and infinities
        raise argparse.ArgumentTypeError(
            f"expected a size like 16M or 4096 (at most 1T), got {text!r}"
        )
    return int(value)


def _checked_by(parse: Callable[[str], object], what: str) -> Callable[[str], str]:
    """A value type that keeps the text ``parse`` accepts and turns its ValueError (torch's
    own message) into argparse's one line."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    check.__name__ = check.__qualname__ = what
    check.__doc__ = f"A {what.replace('_', ' ')}, checked as torch checks it."
    return check


std_value = _checked_by(std_from_str, "std_value")  # --redirects / --tee
ranks_filter_value = _checked_by(parse_ranks_filter, "ranks_filter_value")  # --local-ranks-filter
