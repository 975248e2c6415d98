"""Print the README's performance table from a saved full run of ``run_all.py``.

    python benchmarks/run_all.py --out /tmp/bench.json
    python benchmarks/readme_table.py /tmp/bench.json

Baseline columns come from the same run where a baseline ran live ("this run"), else from
the recorded figures in shared/reference/perf-anchors.md.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from run_all import BASELINES, LIVE_KEYS

COLUMNS = {"gloo": "torchrun+gloo", "mpi": "mpirun+mpi4py"}
BUSBW_VARIANTS = (("in place", "busbw_16mb_gbs"), ("out of place", "busbw_16mb_oop_gbs"))


def _baseline(results: dict[str, Any], backend: str, figure: str, n: int) -> str:
    live = results.get("baselines_this_run", {}).get(backend, {}).get(str(n), {})
    if figure in LIVE_KEYS and LIVE_KEYS[figure] in live:
        return f"{_fmt(figure, live[LIVE_KEYS[figure]])} (this run)"
    recorded = BASELINES.get(figure, {}).get(n, {}).get(COLUMNS[backend])
    return "-" if recorded is None else _fmt(figure, recorded)


def _fmt(figure: str, value: float) -> str:
    if figure.startswith("ready"):
        return f"{value:.2f} s"
    if figure == "step_us":
        return f"{value / 1000:.2f} ms"
    if figure.startswith("busbw"):
        return f"{value:.2f} GB/s"
    return f"{value:.1f} MiB"


def table(results: dict[str, Any]) -> list[str]:
    """Markdown rows: figure | llmcluster | torchrun + gloo | mpirun + mpi4py."""
    rows = ["| figure | llmcluster | torchrun + gloo | mpirun + mpi4py |", "|---|---|---|---|"]

    def row(label: str, figure: str, n: int, ours: str) -> None:
        gloo, mpi = _baseline(results, "gloo", figure, n), _baseline(results, "mpi", figure, n)
        rows.append(f"| {label} | {ours} | {gloo} | {mpi} |")

    for n in (8, 64, 256):
        row(f"launch (exec of the command) -> all {n} ranks past the first barrier", "ready_s",
            n, _fmt("ready_s", results[f"ready_s@{n}"]))  # fmt: skip
        row(f"the same, in-process (from the first process's start in /proc), {n} ranks",
            "ready_inproc_s", n,
            _fmt("ready_s", results[f"ready_inproc_s@{n}"]))  # fmt: skip
    for n in (64, 256):
        ours = f"{results[f'pss_mib@{n}']:.1f} MiB ({results[f'pss_total_mib@{n}']:.0f} MiB total)"
        row(f"PSS per rank at {n} ranks", "pss_mib", n, ours)
    for n in (8, 64, 256):
        ours = (f"{results[f'step_us@{n}'] / 1000:.2f} ms "
                f"(mean {results[f'step_mean_us@{n}'] / 1000:.2f})")  # fmt: skip
        row(f"step barrier + loss allreduce, {n} ranks (median)", "step_us", n, ours)
    for n in (2, 4, 8):
        limit = results[f"busbw_limit_gbs@{n}"]
        for label, figure in BUSBW_VARIANTS:
            value = results[f"{figure}@{n}"]
            ours = f"{_fmt(figure, value)} ({value / limit:.2f} of the {limit:.2f} GB/s limit)"
            row(f"allreduce 16 MB busbw, {n} ranks, {label}", figure, n, ours)
    rows.append(f"| CPU of a default 64-rank demo (all processes) | "
                f"{results['cpu_cores@64']:.2f} cores | - | - |")  # fmt: skip
    walls = " / ".join(f"{results.get(f'wall_step_s@{n}', float('nan')):.2f}"
                       for n in (256, 512, 1024, 2048))  # fmt: skip
    rows.append(
        f"| wall time per step (steps 11-20) at 256 / 512 / 1024 / 2048 ranks | {walls} s | - | - |"
    )
    warmups = " / ".join(f"{results.get(f'warmup_s@{n}', float('nan')):.1f}"
                         for n in (256, 512, 1024, 2048))  # fmt: skip
    rows.append(f"| the same runs, ready -> step 11 | {warmups} s | - | - |")
    readies = " / ".join(f"{results.get(f'ready_s@{n}', float('nan')):.1f}" for n in (1024, 2048))
    rows.append(f"| launch (exec) -> all ranks past the first barrier, 1024 / 2048 ranks | "
                f"{readies} s | - | - |")  # fmt: skip
    rows.append(f"| largest N with a step under 1 s (of 256, 512, 1024, 2048) | "
                f"{results['largest_n_step_under_1s']} | - | - |")  # fmt: skip
    rows.append(f"| memory bandwidth, numpy 16 MB | one core: copy {results['mem_copy_gbs']:.2f}"
                f" GB/s, add {results['mem_add_gbs']:.2f} GB/s; every core copying: "
                f"{results['mem_copy_all_cores_gbs']:.2f} GB/s | - | - |")  # fmt: skip
    return rows


if __name__ == "__main__":
    with open(sys.argv[1]) as source:
        print("\n".join(table(json.load(source))))
