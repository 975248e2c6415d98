"""nccl-tests' ``all_reduce_perf`` table for ``llmcluster bench`` (real-logs.md 2f).

Out-of-place (send buffer -> receive buffer) and in-place (``out=`` the input) are timed
separately, as nccl-tests does, and the average bus bandwidth covers both.
Each rank is one process driving one GPU, as with ``mpirun -np N all_reduce_perf``,
hence ``nGpus 1``.
"""

from __future__ import annotations

from typing import Any


def _time(us: float) -> str:
    if us >= 10000:
        return f"{us:7.0f}"
    if us >= 100:
        return f"{us:7.1f}"
    return f"{us:7.2f}"


def _columns(figures: dict[str, Any]) -> str:
    return (
        f"  {_time(figures['time_us'])}  {figures['algbw_gbs']:6.2f}  {figures['busbw_gbs']:6.2f}"
        f"  {figures['wrong']:5g}"
    )


def bench_table_lines(rows: list[dict[str, Any]], *, world_size: int, algorithm: str,
                      iters: int = 20, warmup: int = 5) -> list[str]:  # fmt: skip
    """Header, one row per size, and the footer with the average bus bandwidth."""
    if not rows:
        return ["# no sizes measured"]
    first, last = rows[0]["size"], rows[-1]["size"]
    factor = rows[1]["size"] // rows[0]["size"] if len(rows) > 1 else 2
    lines = [
        f"# nThread 1 nGpus 1 minBytes {first} maxBytes {last} step: {factor}(factor) "
        f"warmup iters: {warmup} iters: {iters} agg iters: 1 validation: 1 graph: 0",
        f"# llmcluster allreduce over ZeroMQ: {world_size} ranks, algorithm {algorithm}",
        "#",
        "#                                                              out-of-place"
        "                       in-place          ",
        "#       size         count      type   redop    root     time   algbw   busbw #wrong"
        "     time   algbw   busbw #wrong",
        "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)      "
        "      (us)  (GB/s)  (GB/s)       ",
    ]
    for row in rows:
        lines.append(
            f"{row['size']:12d}  {row['count']:12d}  {row['type']:>8}  {row['redop']:>6}  {-1:6d}"
            f"{_columns(row)}{_columns(row['in_place'])}"
        )
    variants = [figures for row in rows for figures in (row, row["in_place"])]
    wrong = sum(figures["wrong"] for figures in variants)
    average = sum(figures["busbw_gbs"] for figures in variants) / len(variants)
    lines += [
        f"# Out of bounds values : {wrong} {'OK' if wrong == 0 else 'FAILED'}",
        f"# Avg bus bandwidth    : {average:g} ",
        "#",
    ]
    return lines
