"""Every performance figure of issue "performance", measured in one invocation.

    python benchmarks/run_all.py            # full run (~12 minutes on a 2-core box)
    python benchmarks/run_all.py --quick    # CI form; fails if a figure is >3x worse than recorded

Figures (the full form gives each as the median of 3 runs): launch -> all ranks past the
first barrier, from outside (the command's exec to its ready record) next to the in-process
figure; PSS per rank; per-step collective latency; allreduce busbw by size (through
``llmcluster bench``) in place and out of place, with this machine's memory bandwidth
measured alongside (numpy copy and add of 16 MB on one core, and the copy on every core at
once) and each 16 MB busbw given as a fraction of the limit that sets; CPU use of a default
demo; the wall time per step and ready at 256-2048 ranks (the 2048-rank run once: it takes
minutes); what a 1024-rank start is made of (page faults by kind of process, at this
machine's measured cost of a fresh page); the step and CPU of a run with three observers, a
scraped metrics endpoint and CURVE on against the same run bare. Baselines: torchrun+gloo
and mpirun+mpi4py as measured on this machine class (shared/reference/perf-anchors.md);
where mpi4py (with mpirun) or torch is installed, the full run also runs that baseline in
the same invocation (``baselines.py``: launch and step at 8 and 64 ranks, busbw at 2, 4 and
8, each busbw run right after one of ours so both see the same load) and its ratios use
those live figures, marked "this run"; otherwise the recorded figures are printed with their
source. Results go to benchmarks/last-run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import baselines  # noqa: E402  (sibling scripts)
import feature_cost  # noqa: E402
import figures  # noqa: E402
import start_cost  # noqa: E402
import step_latency  # noqa: E402

SOURCE = "shared/reference/perf-anchors.md (2-vCPU EPYC, torch 2.13 gloo, Open MPI 4.1.4)"
BASELINES = {
    "ready_s": {8: {"torchrun+gloo": 6.91, "mpirun+mpi4py": 0.94},
                64: {"torchrun+gloo": 51.9, "mpirun+mpi4py": 6.38},
                256: {}},
    "pss_mib": {64: {"torchrun+gloo": 144.5, "mpirun+mpi4py": 17.5}, 256: {}},
    "step_us": {8: {"torchrun+gloo": 3524, "mpirun+mpi4py": 34},
                64: {"torchrun+gloo": 39482, "mpirun+mpi4py": 1151}, 256: {}},
    "busbw_16mb_gbs": {2: {"torchrun+gloo": 1.40, "mpirun+mpi4py": 5.04},
                       4: {"torchrun+gloo": 0.92, "mpirun+mpi4py": 2.48},
                       8: {"torchrun+gloo": 0.46, "mpirun+mpi4py": 1.09}},
}  # fmt: skip
RECORDED = HERE / "recorded.json"
REPEATS = 3  # runs per figure in the full form (medians)
SCALE_RANKS = (256, 512, 1024, 2048)


LIVE_KEYS = {"ready_s": "ready_s", "ready_inproc_s": "ready_inproc_s",
             "step_us": "step_median_us", "busbw_16mb_gbs": "busbw_16mb_gbs",
             "busbw_16mb_oop_gbs": "busbw_16mb_oop_gbs"}  # fmt: skip
Live = dict[str, dict[int, dict[str, float]]]  # backend -> ranks -> figure -> median
T = TypeVar("T")


def _retried(measure: Callable[..., T], *args: Any) -> T:
    """``measure(*args)``, run again (up to twice) when the run fails: on a shared, loaded
    machine a run now and then does; every failure is printed."""
    for attempt in range(2):
        try:
            return measure(*args)
        except (RuntimeError, subprocess.SubprocessError) as failed:
            print(f"  ({measure.__name__}{args} failed, attempt {attempt + 1}: {failed})"
                  .replace("\n", "\n    "))  # fmt: skip
    return measure(*args)


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = {key for run in runs for key, value in run.items() if isinstance(value, float)}
    return {key: statistics.median(run[key] for run in runs if key in run) for key in keys}


def baselines_for(figure: str, n: int, live: Live) -> dict[str, float]:
    """Recorded baselines for ``figure`` at ``n``, replaced by live ones where measured."""
    base = dict(BASELINES.get(figure, {}).get(n, {}))
    for backend, runs in live.items():
        value = runs.get(n, {}).get(LIVE_KEYS[figure])
        if value is not None:
            base.pop(baselines.NAMES[backend], None)
            base[f"{baselines.NAMES[backend]} this run"] = round(value, 4)
    return base


def _ratio_text(value: float, baselines: dict[str, float], lower_is_better: bool) -> str:
    parts = []
    for name, base in baselines.items():
        ratio = base / value if lower_is_better else value / base
        parts.append(f"{ratio:.2f}x vs {name} ({base:g})")
    return "; ".join(parts) or "no baseline"


def main() -> int:
    parser = argparse.ArgumentParser(description="llmcluster performance figures")
    parser.add_argument("--quick", action="store_true", help="CI form with a 3x regression check")
    parser.add_argument("--out", default=str(HERE / "last-run.json"))
    args = parser.parse_args()
    quick = args.quick
    reps = 1 if quick else REPEATS
    results: dict[str, Any] = {"machine": os.uname().machine, "cpus": os.cpu_count(),
                               "baseline_source": SOURCE, "repeats": reps}  # fmt: skip
    print(f"baselines: {SOURCE}; every figure the median of {reps} run(s)")
    live: Live = {}
    memory = figures.memory_bandwidth()
    results.update({f"mem_{key}": value for key, value in memory.items()})
    print(f"memory bandwidth (numpy, 16 MB): one core copy {memory['copy_gbs']:.2f} GB/s, add "
          f"{memory['add_gbs']:.2f} GB/s; every core copying at once "
          f"{memory['copy_all_cores_gbs']:.2f} GB/s in total")  # fmt: skip
    for n in (8, 64) if quick else (8, 64, 256):
        _launch_and_step(n, reps, live, results, with_baselines=not quick and n <= 64)
    for n in (64,) if quick else (64, 256):
        samples = [_retried(figures.pss, n) for _ in range(reps)]
        per_rank = statistics.median(s["per_rank_mib"] for s in samples)
        total = statistics.median(s["total_mib"] for s in samples)
        results[f"pss_mib@{n}"], results[f"pss_total_mib@{n}"] = per_rank, total
        ratio = _ratio_text(per_rank, BASELINES["pss_mib"].get(n, {}), True)
        print(f"PSS  {n:4d} ranks: {per_rank:6.2f} MiB/rank, {total:.0f} MiB total   {ratio}")
    for n in (8,) if quick else (2, 4, 8):
        _busbw_rows(n, reps, live, memory, results, with_baselines=not quick)
    results["baselines_this_run"] = {b: {str(n): f for n, f in r.items()} for b, r in live.items()}
    if not quick:
        _demo_and_scale(results, reps)
        _start_cost(results)
        _feature_cost(results, reps)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")
    if quick:
        return _regressions(results)
    return 0


def _launch_and_step(
    n: int, reps: int, live: Live, results: dict[str, Any], with_baselines: bool
) -> None:
    """Ready (from exec and in-process) and the step's collectives at ``n`` ranks; each
    repetition of ours is followed by one of every baseline, so both see the same load."""
    launches, steps, theirs = [], [], {}
    for _ in range(reps):
        launches.append(_retried(figures.ready, n))
        steps.append(step_latency.measure(n, 100 if reps == 1 else 300))
        for backend in baselines.available() if with_baselines else ():
            run = baselines.measure(backend, n, busbw=False)
            if run is not None:
                theirs.setdefault(backend, []).append(run)
    for backend, runs in theirs.items():
        live.setdefault(backend, {}).setdefault(n, {}).update(_medians(runs))
    outside = statistics.median(r.from_exec for r in launches)
    inside = statistics.median(r.in_process for r in launches)
    results[f"ready_s@{n}"], results[f"ready_inproc_s@{n}"] = outside, inside
    ratio = _ratio_text(outside, baselines_for("ready_s", n, live), True)
    theirs_inside = ", ".join(f"{name} {value:.3f} s" for name, value in
                              baselines_for("ready_inproc_s", n, live).items())  # fmt: skip
    print(f"ready {n:4d} ranks: {outside:6.3f} s from exec (in-process {inside:.3f} s)   {ratio}"
          + (f"   [in-process: {theirs_inside}]" if theirs_inside else ""))  # fmt: skip
    median = statistics.median(run["median_us"] for run in steps)
    mean = statistics.median(run["mean_us"] for run in steps)
    results[f"step_us@{n}"], results[f"step_mean_us@{n}"] = median, mean
    ratio = _ratio_text(median, baselines_for("step_us", n, live), True)
    print(f"step {n:4d} ranks: median {median:8.0f} us, mean {mean:8.0f} us   {ratio}")


def _busbw_rows(
    n: int,
    reps: int,
    live: Live,
    memory: dict[str, float],
    results: dict[str, Any],
    with_baselines: bool,
) -> None:
    """16 MB busbw at ``n`` ranks in place and out of place, each run of ours next to a run
    of every baseline (so both see the same load), as a fraction of the memory limit."""
    ours, theirs = [], {}
    for _ in range(reps):
        ours.append(_retried(figures.busbw, n))
        for backend in baselines.available() if with_baselines else ():
            run = baselines.measure(backend, n, busbw=True)
            if run is not None:
                theirs.setdefault(backend, []).append(run)
    for backend, runs in theirs.items():
        medians = _medians(runs)
        wanted = {k: v for k, v in medians.items() if k.startswith("busbw")}
        live.setdefault(backend, {}).setdefault(n, {}).update(wanted)
    limit = figures.busbw_limit(memory, n)
    results[f"busbw_limit_gbs@{n}"] = limit
    for label, key, pick in (("in place", "busbw_16mb_gbs", "in_place"),
                             ("out of place", "busbw_16mb_oop_gbs", "out_of_place")):  # fmt: skip
        by_size = [getattr(run, pick) for run in ours]
        sizes = sorted(by_size[0])
        medians = {size: statistics.median(run[size] for run in by_size) for size in sizes}
        value = medians.get(figures.BUSBW_BYTES, float("nan"))
        results[f"{key}@{n}"] = value
        curve = ", ".join(f"{size}B {bw:.3f}" for size, bw in medians.items())
        ratio = _ratio_text(value, baselines_for(key, n, live), False)
        print(f"busbw {n} ranks {label}: {curve} GB/s   16MB: {value / limit:.2f} of the "
              f"{limit:.2f} GB/s memory limit; {ratio}")  # fmt: skip


def _demo_and_scale(results: dict[str, Any], reps: int) -> None:
    """CPU share of a default 64-rank demo; at 256-2048 ranks the wall time per step and the
    launch figures of runs that must start, train and exit cleanly (2048: one run)."""
    shares = _retried(figures.demo_cpu, 64, 20, reps)
    results["cpu_cores@64"] = statistics.median(shares)
    print(f"default demo, 64 ranks: {results['cpu_cores@64']:.3f} cores (median of {reps} "
          "20 s windows; target <= 0.25)")  # fmt: skip
    for n in SCALE_RANKS:
        runs = [_scale_or_none(n) for _ in range(reps if n < 2048 else 1)]
        done = [run for run in runs if run is not None]
        results[f"scale_failed@{n}"] = len(runs) - len(done)
        if not done:
            print(f"{n} ranks: every run failed")
            continue
        step = statistics.median(run.step_s for run in done)
        warmup = statistics.median(run.warmup_s for run in done)
        outside = statistics.median(run.ready.from_exec for run in done)
        inside = statistics.median(run.ready.in_process for run in done)
        results[f"wall_step_s@{n}"], results[f"warmup_s@{n}"] = step, warmup
        results[f"ready_s@{n}"], results[f"ready_inproc_s@{n}"] = outside, inside
        first = figures.WARMUP_STEPS + 1
        print(f"{n} ranks: wall per step {step:.3f} s (steps {first}+; ready -> step {first} "
              f"{warmup:.1f} s), ready {outside:.2f} s from exec (in-process {inside:.2f} s); "
              f"{len(done)}/{len(runs)} run(s) clean")  # fmt: skip
    under = [n for n in SCALE_RANKS if results.get(f"wall_step_s@{n}", 9e9) < 1.0]
    results["largest_n_step_under_1s"] = max(under, default=0)
    print(f"largest N tried {SCALE_RANKS} with a step under 1 s: "
          f"{results['largest_n_step_under_1s']}")  # fmt: skip


def _start_cost(results: dict[str, Any]) -> None:
    """What a 1024-rank start is made of: faults and CPU by kind of process at the ready
    record, this machine's cost of a fresh page, and a bare world's start of as many forked
    Python ranks (``start_cost.py``)."""
    try:
        run = start_cost.start_cost(1024)
        bare = start_cost.bare_world(1024)
    except (RuntimeError, subprocess.SubprocessError) as failed:
        print(f"1024-rank start cost: failed ({failed})")
        return
    cost = start_cost.page_cost(start_cost.touch_gib_for(run))
    results["start_cost@1024"] = {"run": asdict(run), "page": asdict(cost), "bare": asdict(bare)}
    print(start_cost.summary(run, cost, bare, os.cpu_count() or 1))


def _feature_cost(results: dict[str, Any], reps: int) -> None:
    """The step and CPU of a 64-rank run with 3 observers, a scraped metrics endpoint and
    CURVE on, against the same run bare (``feature_cost.py``; target: within 10 %)."""
    try:
        cost = feature_cost.measure(64, reps, steps=100, window_s=10.0)
    except (RuntimeError, subprocess.SubprocessError) as failed:
        print(f"64 ranks with observers, a scrape and CURVE: failed ({failed})")
        return
    results.update({f"features_{key}@64": value for key, value in cost.items()})
    print(f"64 ranks with 3 observers + a scrape every 1 s + CURVE: step {cost['step_ratio']:.2f}x "
          f"and CPU {cost['cpu_ratio']:.2f}x the bare run's ({cost['bare_step_s'] * 1e3:.1f} -> "
          f"{cost['featured_step_s'] * 1e3:.1f} ms, {cost['bare_cpu_cores']:.3f} -> "
          f"{cost['featured_cpu_cores']:.3f} cores; target <= 1.10x)")  # fmt: skip


def _scale_or_none(n: int) -> figures.Scale | None:
    """One large run, or None (printed) when it does not start, train and exit cleanly."""
    try:
        return figures.scale_run(n)
    except (RuntimeError, subprocess.SubprocessError) as failed:
        print(f"  ({n} ranks failed: {failed})".replace("\n", "\n    "))
        return None


def _regressions(results: dict[str, Any]) -> int:
    """Exit 1 if a figure is more than 3x worse than the recorded one."""
    recorded = json.loads(RECORDED.read_text())
    worse = []
    for key, value in recorded.items():
        if key not in results or not isinstance(value, (int, float)):
            continue
        higher_is_better = key.startswith("busbw")
        bad = results[key] < value / 3 if higher_is_better else results[key] > 3 * value
        if bad:
            worse.append(f"{key}: {results[key]:.4g} vs recorded {value:.4g}")
    for line in worse:
        print(f"REGRESSION {line}")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
