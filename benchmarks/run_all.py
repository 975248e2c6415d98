"""Every performance figure of issue "performance", measured in one invocation.

    python benchmarks/run_all.py            # full run (~5 minutes on a 2-core box)
    python benchmarks/run_all.py --quick    # CI form; fails if a figure is >3x worse than recorded

Figures: launch -> all ranks past the first barrier; PSS per rank; per-step collective
latency; allreduce busbw by size (through ``llmcluster bench``); CPU use of a default
demo; the largest N whose step stays under 1 s of wall time. Baselines: torchrun+gloo and
mpirun+mpi4py as measured on this machine class (shared/reference/perf-anchors.md);
where mpi4py (with mpirun) or torch is installed, the full run also runs that baseline at
8 and 64 ranks in the same invocation (``baselines.py``) and its ratios use those live
figures, marked "this run"; otherwise the recorded figures are printed with their source.
Results go to benchmarks/last-run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import baselines  # noqa: E402  (sibling scripts)
import step_latency  # noqa: E402

MARK = "LLMCLUSTER_BENCH_MARK"  # identifies the processes of the run being measured
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
TARGETS = {"ready_s@64": 1.0, "pss_mib@64": 8.0, "step_us@64": 2500.0, "cpu_cores": 0.25}
RECORDED = HERE / "recorded.json"
LLMC = [sys.executable, "-m", "llmcluster"]


def _records(args: list[str], timeout: float = 600) -> list[dict[str, Any]]:
    done = subprocess.run([*LLMC, *args, "--format", "jsonl"], capture_output=True, text=True,
                          timeout=timeout, check=True)  # fmt: skip
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def ready_s(ranks: int, repeats: int) -> float:
    """Median seconds from launch until every rank has passed its first barrier."""
    values = []
    for _ in range(repeats):
        recs = _records(["--ranks", str(ranks), "--steps", "1", "--speed", "1e6"])
        values.append(next(r["ready_s"] for r in recs if r["type"] == "ready"))
    return statistics.median(values)


def _pids_marked(mark: str) -> list[int]:
    """Processes of the run started with ``mark`` in its environment (its agents and ranks
    inherit it), never other runs on the same machine."""
    needle = f"{MARK}={mark}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if needle in environ.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _smaps_pss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as src:
            for line in src:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # the process has just exited
        pass
    return 0.0


def _running(args: list[str], mark: str = "") -> subprocess.Popen[str]:
    return subprocess.Popen([*LLMC, *args, "--format", "jsonl"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, MARK: mark})  # fmt: skip


def _wait_step(proc: subprocess.Popen[str], step: int) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        record = json.loads(line)
        if record["type"] == "step" and record["step"] >= step:
            return
    raise RuntimeError("the run ended early")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)


def pss(ranks: int) -> dict[str, float]:
    """PSS per rank (median) and in total, during training."""
    mark = uuid.uuid4().hex
    proc = _running(["--ranks", str(ranks), "--steps", "100000", "--speed", "1e6"], mark)
    try:
        _wait_step(proc, 3)
        ranks_pss = []
        run_pids = [pid for pid in _pids_marked(mark) if pid != proc.pid]
        for pid in run_pids:
            try:
                with open(f"/proc/{pid}/comm") as comm:
                    is_rank = comm.read().startswith("llmc-rank")
            except OSError:
                continue
            if is_rank:
                ranks_pss.append(_smaps_pss_mib(pid))
        total = sum(_smaps_pss_mib(pid) for pid in run_pids) + _smaps_pss_mib(proc.pid)
    finally:
        _stop(proc)
    return {"per_rank_mib": statistics.median(ranks_pss), "total_mib": total}


def busbw(ranks: int, max_bytes: int) -> dict[int, float]:
    """busbw (GB/s) by size from ``llmcluster bench --json``."""
    done = subprocess.run([*LLMC, "bench", "--ranks", str(ranks), "--json", "--min-bytes", "4096",
                           "--max-bytes", str(max_bytes), "--factor", "16", "--iters", "10"],
                          capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {row["size"]: row["busbw_gbs"] for row in rows}


def _cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as src:
                fields = src.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return total


def demo_cpu(ranks: int, seconds: float) -> float:
    """CPU-seconds per wall-second of a default demo (auto speed), all its processes."""
    mark = uuid.uuid4().hex
    proc = _running(["--ranks", str(ranks), "--seed", "1"], mark)
    try:
        _wait_step(proc, 2)
        pids = _pids_marked(mark)  # the coordinator, its agents and ranks
        before, started = _cpu_seconds(pids), time.monotonic()
        time.sleep(seconds)  # measuring a fixed window is the point here
        used = _cpu_seconds(pids) - before
        return used / (time.monotonic() - started)
    finally:
        _stop(proc)


def wall_per_step(ranks: int, steps: int = 10) -> float:
    """Wall seconds per step at --speed 1e6 (compute sleeps ~0): from the first step record
    to the last, over the steps between (records can arrive in bursts, so not a median gap)."""
    proc = _running(["--ranks", str(ranks), "--steps", str(steps), "--speed", "1e6"])
    stamps = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["type"] == "step":
            stamps.append(time.monotonic())
    proc.wait(timeout=600)
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")


LIVE_KEYS = {"ready_s": "ready_s", "step_us": "step_median_us", "busbw_16mb_gbs": "busbw_16mb_gbs"}


def live_baselines() -> dict[str, dict[int, dict[str, Any]]]:
    """Run every installed baseline at 8 and 64 ranks (busbw at 8): backend -> N -> figures."""
    live: dict[str, dict[int, dict[str, Any]]] = {}
    for backend in baselines.available():
        for n in (8, 64):
            print(f"running {baselines.NAMES[backend]} at {n} ranks ...", flush=True)
            figures = baselines.measure(backend, n, busbw=n == 8)
            if figures is not None:
                live.setdefault(backend, {})[n] = figures
    return live


def baselines_for(figure: str, n: int, live: dict[str, dict[int, dict[str, Any]]]) -> dict:
    """Recorded baselines for ``figure`` at ``n``, replaced by live ones where measured."""
    base = dict(BASELINES[figure].get(n, {}))
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
        parts.append(f"{ratio:.1f}x vs {name} ({base:g})")
    return "; ".join(parts) or "no recorded baseline"


def main() -> int:
    parser = argparse.ArgumentParser(description="llmcluster performance figures")
    parser.add_argument("--quick", action="store_true", help="CI form with a 3x regression check")
    parser.add_argument("--out", default=str(HERE / "last-run.json"))
    args = parser.parse_args()
    quick = args.quick
    results: dict[str, Any] = {"machine": os.uname().machine, "cpus": os.cpu_count(),
                               "baseline_source": SOURCE}  # fmt: skip
    print(f"baselines: {SOURCE}")
    live = {} if quick else live_baselines()
    results["baselines_this_run"] = {b: {str(n): f for n, f in r.items()} for b, r in live.items()}
    for n in (8, 64) if quick else (8, 64, 256):
        value = ready_s(n, 1 if quick else 3)
        results[f"ready_s@{n}"] = value
        base = baselines_for("ready_s", n, live)
        print(f"ready {n:4d} ranks: {value:6.3f} s   {_ratio_text(value, base, True)}")
    for n in (64,) if quick else (64, 256):
        value = pss(n)
        results[f"pss_mib@{n}"] = value["per_rank_mib"]
        results[f"pss_total_mib@{n}"] = value["total_mib"]
        base = BASELINES["pss_mib"].get(n, {})
        ratio = _ratio_text(value["per_rank_mib"], base, True)
        print(f"PSS  {n:4d} ranks: {value['per_rank_mib']:6.2f} MiB/rank, "
              f"{value['total_mib']:.0f} MiB total   {ratio}")  # fmt: skip
    for n in (8, 64) if quick else (8, 64, 256):
        value = step_latency.measure(n, 100 if quick else 300)
        results[f"step_us@{n}"] = value["median_us"]
        results[f"step_mean_us@{n}"] = value["mean_us"]
        base = baselines_for("step_us", n, live)
        ratio = _ratio_text(value["median_us"], base, True)
        print(f"step {n:4d} ranks: median {value['median_us']:8.0f} us, mean "
              f"{value['mean_us']:8.0f} us   {ratio}")  # fmt: skip
    for n in (8,) if quick else (2, 4, 8):
        rows = busbw(n, 16 << 20)
        value = rows.get(16 << 20, float("nan"))
        results[f"busbw_16mb_gbs@{n}"] = value
        base = baselines_for("busbw_16mb_gbs", n, live)
        sizes = ", ".join(f"{size}B {bw:.3f}" for size, bw in rows.items())
        print(f"busbw {n} ranks: {sizes} GB/s   16MB: {_ratio_text(value, base, False)}")
    if not quick:
        results["cpu_cores@64"] = demo_cpu(64, 60)
        print(f"default demo, 64 ranks: {results['cpu_cores@64']:.3f} cores (target <= 0.25)")
        for n in (256, 512, 1024):
            value = wall_per_step(n)
            results[f"wall_step_s@{n}"] = value
            print(f"wall per step at {n} ranks: {value:.3f} s")
        under = [n for n in (256, 512, 1024) if results[f"wall_step_s@{n}"] < 1.0]
        results["largest_n_step_under_1s"] = max(under, default=0)
        print(f"largest N tried (256, 512, 1024) with a step under 1 s: "
              f"{results['largest_n_step_under_1s']}")  # fmt: skip
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")
    if quick:
        return _regressions(results)
    return 0


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
