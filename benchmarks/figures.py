"""llmcluster's own figures for ``run_all.py``, each one run of the CLI (or of numpy).

Every function measures once; ``run_all`` repeats and takes medians. "Ready" is taken
from outside the process: the wall time just before the ``llmcluster`` command is exec'd
to the moment its ``ready`` record (every rank past the first barrier) can be read from
its output, next to the in-process ``ready_s`` the coordinator reports (from its own
process start as /proc records it, as the baselines' in-process figure starts at their
first rank's).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

LLMC = [sys.executable, "-m", "llmcluster"]
BUSBW_BYTES = 16 << 20
FAILED_TAIL_LINES = 20  # of a failed scale run's records and stderr, in its error


@dataclass(frozen=True)
class Ready:
    """Launch figures of one run, in seconds."""

    from_exec: float  # exec of the command -> its ready record on the pipe
    in_process: float  # the coordinator's own ready_s (its process start, in /proc -> ready)


@dataclass(frozen=True)
class Busbw:
    """One ``llmcluster bench`` run: busbw (GB/s) by size, out of place and in place."""

    out_of_place: dict[int, float]
    in_place: dict[int, float]


def running(
    args: list[str], stderr: IO[bytes] | int = subprocess.DEVNULL, *, own_group: bool = False
) -> subprocess.Popen[str]:
    """``llmcluster ARGS --format jsonl``, its records on a pipe; with ``own_group``, in a
    session and process group of its own (its pid), which its agents and ranks inherit."""
    return subprocess.Popen(
        [*LLMC, *args, "--format", "jsonl"],
        stdout=subprocess.PIPE,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=own_group,
    )


def ready(ranks: int) -> Ready:
    """One launch of a 1-step run."""
    launched = time.time()
    with tempfile.TemporaryFile() as stderr:
        proc = running(["--ranks", str(ranks), "--steps", "1", "--speed", "1e6"], stderr)
        assert proc.stdout is not None
        lines = []
        try:
            for line in proc.stdout:
                record = json.loads(line)
                if record["type"] == "ready":
                    seen = time.time()
                    return Ready(seen - launched, float(record["ready_s"]))
                lines.append(line.strip()[:300])
        finally:
            proc.communicate(timeout=600)
        raise RuntimeError(f"a {ranks}-rank run exited {proc.returncode} without a ready record; "
                           + _last_words(lines, stderr))  # fmt: skip


def _last_words(lines: list[str], stderr: IO[bytes]) -> str:
    """A failed run's last records and the tail of its stderr, for its error message."""
    stderr.seek(0)
    said = stderr.read().decode(errors="replace").splitlines()[-FAILED_TAIL_LINES:]
    return "its last records and stderr:\n" + "\n".join(lines[-FAILED_TAIL_LINES:] + said)


def run_pids(root: int) -> list[int]:
    """The run's processes: ``root`` and its descendants (found by parentage, not by name)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as src:
                    parents[int(entry)] = int(src.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        found.append(pid)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return found


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as src:
            return src.read().strip()
    except OSError:
        return ""


def _smaps_pss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as src:
            for line in src:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # the process has just exited
        pass
    return 0.0


def _wait_step(proc: subprocess.Popen[str], step: int) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        record = json.loads(line)
        if record["type"] == "step" and record["step"] >= step:
            return
    raise RuntimeError("the run ended early")


def stop(proc: subprocess.Popen[str]) -> None:
    """Interrupt a run as Ctrl+C does and wait for it to end."""
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)


def pss(ranks: int) -> dict[str, float]:
    """PSS per rank (median over ranks) and in total, during training."""
    proc = running(["--ranks", str(ranks), "--steps", "100000", "--speed", "1e6"])
    try:
        _wait_step(proc, 3)
        pids = run_pids(proc.pid)
        per_rank = [_smaps_pss_mib(pid) for pid in pids if _comm(pid).startswith("llmc-rank")]
        total = sum(_smaps_pss_mib(pid) for pid in pids)
    finally:
        stop(proc)
    return {"per_rank_mib": statistics.median(per_rank), "total_mib": total}


def busbw(ranks: int, max_bytes: int = BUSBW_BYTES) -> Busbw:
    """busbw (GB/s) by size from ``llmcluster bench --json`` (registered buffers)."""
    done = subprocess.run([*LLMC, "bench", "--ranks", str(ranks), "--json", "--min-bytes", "4096",
                           "--max-bytes", str(max_bytes), "--factor", "16", "--iters", "10"],
                          capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return Busbw({row["size"]: row["busbw_gbs"] for row in rows},
                 {row["size"]: row["in_place"]["busbw_gbs"] for row in rows})  # fmt: skip


def cpu_seconds(pids: list[int]) -> float:
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


def demo_cpu(ranks: int, seconds: float, windows: int) -> list[float]:
    """CPU-seconds per wall-second of a default demo (auto speed), all its processes, over
    ``windows`` consecutive windows of ``seconds``."""
    proc = running(["--ranks", str(ranks), "--seed", "1"])
    try:
        _wait_step(proc, 2)
        pids = run_pids(proc.pid)
        shares = []
        for _ in range(windows):
            before, started = cpu_seconds(pids), time.monotonic()
            time.sleep(seconds)  # measuring a fixed window is the point here
            shares.append((cpu_seconds(pids) - before) / (time.monotonic() - started))
        return shares
    finally:
        stop(proc)


@dataclass(frozen=True)
class Scale:
    """One large run: its launch figures, the wall seconds per step once it runs steadily, and
    the seconds from its ready record to its first steady step."""

    ready: Ready
    step_s: float
    warmup_s: float


WARMUP_STEPS = 10  # a large world's first steps are slow (each rank faults in the step's
# code; the first eval and checkpoint after step 10); steady steps are timed after them


def scale_run(ranks: int, steps: int = 2 * WARMUP_STEPS) -> Scale:
    """A ``ranks``-rank run at --speed 1e6 (compute sleeps ~0) that must start, train and
    exit cleanly (RuntimeError otherwise): ready from exec and in-process; the wall time per
    step from the record of step WARMUP_STEPS + 1 to the last (records can arrive in bursts,
    so not a median gap), and from the ready record to that of step WARMUP_STEPS + 1."""
    launched = time.time()
    with tempfile.TemporaryFile() as stderr:
        proc = running(["--ranks", str(ranks), "--steps", str(steps), "--speed", "1e6",
                        "--max-restarts", "0"], stderr)  # fmt: skip
        stamps, ready_at, ready_stamp, others = [], None, 0.0, []
        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            if record["type"] == "ready":
                ready_at = Ready(time.time() - launched, float(record["ready_s"]))
                ready_stamp = time.monotonic()
            elif record["type"] == "step":
                stamps.append(time.monotonic())
            elif record["type"] not in ("ranks", "phase"):
                others.append(line.strip()[:300])
        code = proc.wait(timeout=600)
        if code != 0 or ready_at is None or len(stamps) != steps:
            raise RuntimeError(f"a {ranks}-rank run exited {code} after {len(stamps)} step(s); "
                               + _last_words(others, stderr))  # fmt: skip
    steady = stamps[WARMUP_STEPS:]
    return Scale(ready_at, (steady[-1] - steady[0]) / (len(steady) - 1), steady[0] - ready_stamp)


def _rates(nbytes: int, repeats: int) -> tuple[float, float]:
    """This process's numpy copy and add of ``nbytes`` float32: median GB/s of the output."""
    a, b = np.ones(nbytes // 4, np.float32), np.ones(nbytes // 4, np.float32)
    c = np.empty_like(a)

    def rate(run: Any) -> float:
        run()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return nbytes / statistics.median(times) / 1e9

    return rate(lambda: np.copyto(c, a)), rate(lambda: np.add(a, b, out=c))


def _copy_on_every_core(nbytes: int, repeats: int, cores: int) -> float:
    """The summed copy rate of ``cores`` processes copying at once (started together
    through a pipe): the memory bandwidth ranks on every core share."""
    go_read, go_write = os.pipe()
    done_read, done_write = os.pipe()
    children = []
    for _ in range(cores - 1):
        pid = os.fork()
        if pid == 0:  # a child: wait for the start, measure, report, leave
            code = 1
            try:
                os.read(go_read, 1)
                os.write(done_write, f"{_rates(nbytes, repeats)[0]:.6f}\n".encode())
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    os.write(go_write, b"x" * len(children))
    total = _rates(nbytes, repeats)[0]
    for pid in children:
        os.waitpid(pid, 0)
    os.close(done_write)
    with os.fdopen(done_read) as reports:
        total += sum(float(line) for line in reports)
    for fd in (go_read, go_write):
        os.close(fd)
    return total


def memory_bandwidth(nbytes: int = BUSBW_BYTES, repeats: int = 20) -> dict[str, float]:
    """One core's numpy copy and add of ``nbytes`` float32, and the copy rate of every core
    copying at once (GB/s of the output size; medians)."""
    copy, add = _rates(nbytes, repeats)
    cores = os.cpu_count() or 1
    every = _copy_on_every_core(nbytes, repeats, cores) if cores > 1 else copy
    return {"copy_gbs": copy, "add_gbs": add, "copy_all_cores_gbs": every}


def busbw_limit(memory: dict[str, float], ranks: int) -> float:
    """The busbw no allreduce can beat here: each of the ``ranks`` inputs read once and each
    output written once (2 x ranks x size bytes of traffic) at the copy rate the cores reach
    together (a copy moves 2 bytes per byte copied), or one core's for a single rank; as
    nccl-tests' busbw, x 2(n-1)/n over that time."""
    rate = memory["copy_all_cores_gbs"] if ranks > 1 else memory["copy_gbs"]
    return rate * 2 * (ranks - 1) / ranks**2
