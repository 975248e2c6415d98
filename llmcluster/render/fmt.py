"""Formatting helpers shared by the renderers: timestamps in real tools' formats, sizes, rates."""

from __future__ import annotations

import math
import time
from typing import Any

ASCII_MAP = str.maketrans(
    {"°": "", "█": "#", "▏": "|", "─": "-", "│": "|", "…": "...", "×": "x", "µ": "u"}
)


def ascii_safe(text: str) -> str:
    """Replace the few non-ASCII glyphs the renderers use by ASCII equivalents."""
    return text.translate(ASCII_MAP).encode("ascii", "replace").decode("ascii")


def clock(t: float) -> time.struct_time:
    """Local time of a simulated timestamp."""
    return time.localtime(t)


def iso(t: float) -> str:
    """``2026-11-22 14:03:07`` (Megatron, default style)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", clock(t))


def deepspeed_ts(t: float) -> str:
    """``2026-11-22 14:03:07,123`` (Python logging's default asctime)."""
    return f"{iso(t)},{int((t % 1) * 1000):03d}"


def glog(level: str, t: float, pid: int, where: str) -> str:
    """A glog prefix as torch.distributed prints it: ``W1122 14:03:07.123000 4242 file.py:803]``.

    Python's logging keeps milliseconds only, so the microseconds always end in ``000``.
    """
    stamp = time.strftime("%m%d %H:%M:%S", clock(t))
    return f"{level}{stamp}.{int((t % 1) * 1000):03d}000 {pid} {where}]"


def c10_glog(level: str, t: float, where: str) -> str:
    """A c10 (C++) log prefix: ``[E1122 14:03:07.123456789 ProcessGroupNCCL.cpp:616]``."""
    stamp = time.strftime("%H:%M:%S", clock(t))
    month_day = f"{clock(t).tm_mon:02d}{clock(t).tm_mday:02d}"
    return f"[{level}{month_day} {stamp}.{int((t % 1) * 1e9):09d} {where}]"


def human_bytes(n: float) -> str:
    """``16.06 GB`` (decimal units, as transformers and storage tools print)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} PB"


def human_count(n: float) -> str:
    """``8.03B``, ``1.23M``, ``950K``."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f}"


def duration(seconds: float) -> str:
    """``1:02:03`` or ``02:03`` (tqdm-style)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def hms(seconds: float) -> str:
    """``0:02:21``, ``27:04:09`` (hours not wrapped at a day)."""
    if not math.isfinite(seconds):
        return "?"
    hours, rest = divmod(int(max(0, seconds)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def finite(value: Any) -> bool:
    """False for a missing (JSON null) or NaN/infinite number."""
    return value is not None and math.isfinite(float(value))


def num(value: Any, spec: str) -> str:
    """Format a possibly missing (null) or NaN number as Python does: ``nan``, ``NAN`` for E."""
    return format(float("nan") if value is None else float(value), spec)


def plural(count: int, word: str, plural_form: str = "") -> str:
    """``1 node``, ``8 nodes`` (``plural_form`` for irregular words)."""
    return f"{count} {word if count == 1 else plural_form or word + 's'}"


def tee_prefix(local_rank: int) -> str:
    """The prefix torchrun ``--tee 3`` gives a worker's lines (role ``default``)."""
    return f"[default{local_rank}]:"


def tid_of(pid: int, offset: int = 0) -> int:
    """A plausible thread id for a process (NCCL prints pid:tid)."""
    return pid + offset
