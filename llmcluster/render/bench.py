"""nccl-tests' ``all_reduce_perf`` table for ``llmcluster bench`` (real-logs.md 2f).

Out-of-place (send buffer -> receive buffer) and in-place (``out=`` the input) are timed
separately, as nccl-tests does, and the average bus bandwidth covers both.
Each rank is one process driving one GPU, as with ``mpirun -np N all_reduce_perf``,
hence ``nGpus 1``. ``BenchStyle`` is what the bench shows of the run's records: only
nccl-tests' own failure lines.
"""

from __future__ import annotations

from typing import Any, ClassVar

from llmcluster.render.base import Style
from llmcluster.render.launch import host_of, pid_of
from llmcluster.wire.records import FailureRecord, Record, RunRecord

NCCL_FAILURE_AT = "common.cu:392"
TEST_STACK = ("common.cu:590", "all_reduce.cu:90", "common.cu:623", "common.cu:1078")


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


class BenchStyle(Style):
    """What ``llmcluster bench`` shows of a run's records: nccl-tests prints no launcher,
    plan or summary, only its table (rank 0 prints it) and, when a rank dies, its peer's
    ``Test NCCL failure`` trace."""

    name: ClassVar[str] = "bench"

    def _dispatch(self, record: Record) -> list[str]:
        if isinstance(record, RunRecord):
            self.run = record
        elif isinstance(record, FailureRecord) and self.run is not None:
            return nccl_failure_lines(self.run, record)
        return []


def nccl_failure_lines(run: RunRecord, rec: FailureRecord) -> list[str]:
    """all_reduce_perf on the dead rank's ring successor: the failed NCCL call, then the
    test's call stack (``Test failure`` per frame)."""
    peer = (rec.rank + 1) % run.world_size
    host, pid = host_of(run, peer // run.nproc_per_node), pid_of(run, peer)
    return [
        f"{host}: Test NCCL failure {NCCL_FAILURE_AT} 'remote process exited or there was a "
        "network error / '",
        *(f" .. {host} pid {pid}: Test failure {where}" for where in TEST_STACK),
    ]
