"""The arithmetic of the step's fused small reduction, on Python floats.

A step reduces a handful of numbers (loss terms, step time, a stop flag). As numpy arrays,
each stack, reduce and copy costs a microsecond or more of interpreter time per rank, and
on an oversubscribed machine every rank's microseconds add up on the collective's critical
path; as lists of floats the same work is a few hundred nanoseconds. Folds are IEEE
float64 operations applied in a fixed order, exactly what numpy's ``add``/``maximum``/
``minimum`` would compute, so every rank still holds the bit-identical result.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import numpy as np

Span = tuple[Callable[[float, float], float], int, int]  # (fold, first, end) of one part


def _maximum(a: float, b: float) -> float:
    """``np.maximum`` on two floats: NaN if either is NaN."""
    return a if a >= b or a != a else b


def _minimum(a: float, b: float) -> float:
    """``np.minimum`` on two floats: NaN if either is NaN."""
    return a if a <= b or a != a else b


FOLDS: dict[str, Callable[[float, float], float]] = {
    "sum": operator.add, "mean": operator.add, "max": _maximum, "min": _minimum,
}  # fmt: skip


def flatten(parts: Sequence[tuple[np.ndarray, str]]) -> tuple[list[float], list[Span]]:
    """Every part's values as one list of floats, and where each part lies in it."""
    values: list[float] = []
    spans: list[Span] = []
    for array, op in parts:
        lo = len(values)
        values.extend(np.asarray(array, dtype=np.float64).ravel().tolist())
        spans.append((FOLDS[op], lo, len(values)))
    return values, spans


def fold(acc: list[float], row: Sequence[float], spans: Sequence[Span]) -> None:
    """``acc = acc op row`` element by element, each span with its own op (in place)."""
    for op, lo, hi in spans:
        acc[lo:hi] = map(op, acc[lo:hi], row[lo:hi])


def fold_rows(acc: list[float], rows: Sequence[float], spans: Sequence[Span]) -> None:
    """``acc = acc op row`` for each row of ``len(acc)`` values laid end to end in ``rows``,
    row after row (the same order as ``fold`` once per row, in one pass per element)."""
    width = len(acc)
    if not width:
        return
    for op, lo, hi in spans:
        for j in range(lo, hi):
            total = acc[j]
            for value in rows[j::width]:
                total = op(total, value)
            acc[j] = total


def split(
    result: Sequence[float], parts: Sequence[tuple[np.ndarray, str]], spans: Sequence[Span],
    world_size: int,
) -> list[np.ndarray]:  # fmt: skip
    """The per-part results as float64 arrays (``mean`` parts divided by ``world_size``)."""
    out = []
    for (_, op), (_, lo, hi) in zip(parts, spans, strict=True):
        chunk = result[lo:hi]
        out.append(np.array([v / world_size for v in chunk] if op == "mean" else chunk,
                            dtype=np.float64))  # fmt: skip
    return out
