"""What the open telemetry plane costs a run: bare, against observers + a scraped endpoint + CURVE.

Each repetition runs the same one-node ``llmcluster launch`` on loopback TCP twice, the two
forms alternating so both see the same load: bare (no token: plain TCP, nothing attached)
and with every feature on (``LLMCLUSTER_TOKEN``: CurveZMQ on the control, record and training
planes; ``--metrics-port``, scraped every second as Prometheus would; three ``llmcluster
attach`` observers, one per view). Two figures of each form:

- the wall time per step at ``--speed 1e6`` (the machinery's own cost), over the steps after
  every observer has shown its first line;
- the CPU share of a run at the default speed (a demo's cost), over a window of the same.

CPU is that of the cluster's own processes (found by parentage from the launch command);
the observers' and the scraper's own CPU is printed apart. Medians of ``--reps`` and the
ratios with features / bare are printed, the last line a JSON object
(``"figure": "feature_cost"``).

    python benchmarks/feature_cost.py --ranks 64 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import figures  # (a sibling script)

TOKEN = "feature-cost benchmark token"
VIEWS = ("log", "grid", "smi")  # three observers (the dashboard view prints nothing to a pipe)


@dataclass(frozen=True)
class Ports:
    """A run's control port (records on the next one) and its metrics port."""

    control: int
    metrics: int


@dataclass(frozen=True)
class Figures:
    """One run of one form."""

    step_s: float  # wall seconds per step at --speed 1e6
    cpu_cores: float  # the cluster's CPU-seconds per wall second at the default speed
    extras_cores: float  # the observers' and scraper's own, at the default speed
    scrapes: int  # metrics scrapes that succeeded


def _free_ports() -> Ports:
    """Three free ports: a control port whose next one is free too, and a metrics port."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base < 65000 and all(_free(base + i) for i in range(1, 3)):
            return Ports(base, base + 2)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _launch(ports: Ports, featured: bool, args: list[str], ranks: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "LLMCLUSTER_TOKEN"}
    extra = ["--metrics-port", str(ports.metrics)] if featured else []
    if featured:
        env["LLMCLUSTER_TOKEN"] = TOKEN
    command = [*figures.LLMC, "launch", "--nnodes", "1", "--nproc-per-node", str(ranks),
               "--master-addr", "127.0.0.1", "--master-port", str(ports.control),
               "--format", "jsonl", *extra, *args]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, text=True, env=env)  # fmt: skip


@contextmanager
def _features(ports: Ports, on: bool) -> Iterator[tuple[list[subprocess.Popen[str]], list[int]]]:
    """Three observers and a scraper (nothing when ``on`` is False); yields the observers
    (each has printed a line by then) and the scraper's count of successful scrapes."""
    if not on:
        yield [], [0]
        return
    attach = [*figures.LLMC, "attach", "--master-addr", "127.0.0.1", "--master-port",
              str(ports.control), "--token", TOKEN, "--no-color"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "120", "LINES": "40"}
    observers = [subprocess.Popen([*attach, "--view", view], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
                 for view in VIEWS]  # fmt: skip
    scrapes, stop = [0], threading.Event()

    def scrape() -> None:
        url = f"http://127.0.0.1:{ports.metrics}/metrics"
        while not stop.wait(1.0):
            with suppress(OSError), urllib.request.urlopen(url, timeout=5) as reply:
                reply.read()
                scrapes[0] += 1

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    drains = []
    try:
        for observer in observers:  # each has connected and shown something
            assert observer.stdout is not None
            if not observer.stdout.readline():
                raise RuntimeError("an observer ended before showing anything")
            drain = threading.Thread(target=observer.stdout.read, daemon=True)
            drain.start()
            drains.append(drain)
        yield observers, scrapes
    finally:
        stop.set()
        scraper.join(10)
        for observer in observers:
            with suppress(ProcessLookupError):
                observer.send_signal(signal.SIGINT)
        for observer in observers:
            try:
                observer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                observer.kill()
                observer.wait(timeout=30)
        for drain in drains:
            drain.join(10)


class StepClock:
    """Reads a run's records as they come (so its pipe never fills), stamping each step."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.stamps = proc, []
        self.first_step = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with suppress(ValueError, OSError):  # closed when the run is ended
            for line in self.proc.stdout:
                if line.startswith('{"type":"step"'):
                    self.stamps.append(time.monotonic())
                    self.first_step.set()

    def wait_first_step(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.first_step.wait(0.5):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the run exited {self.proc.returncode} before its first step")
            if time.monotonic() > deadline:
                raise RuntimeError("no step within the timeout")

    def seconds_per_step(self, steps: int, timeout_s: float = 600) -> float:
        """The wall time per step over the next ``steps`` steps."""
        start = len(self.stamps)
        deadline = time.monotonic() + timeout_s
        while len(self.stamps) < start + steps + 1:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the run ended or stalled before the steps were timed")
            time.sleep(0.05)  # polling a counter the reader thread moves
        return (self.stamps[start + steps] - self.stamps[start]) / steps


def _end(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    return {pid: figures.cpu_seconds([pid]) for pid in pids}


def _cores(before: dict[int, float], after: dict[int, float], wall: float) -> float:
    """CPU cores used over ``wall`` (a process gone by the second reading counts nothing)."""
    return sum(max(0.0, after[pid] - before[pid]) for pid in before) / wall


def step_seconds(ranks: int, featured: bool, steps: int) -> float:
    """Wall seconds per step at --speed 1e6 over ``steps`` steps after the observers are in."""
    ports = _free_ports()
    proc = _launch(ports, featured, ["--steps", "1000000", "--speed", "1e6", "--seed", "1"],
                   ranks)  # fmt: skip
    try:
        clock = StepClock(proc)
        clock.wait_first_step()
        with _features(ports, featured):
            return clock.seconds_per_step(steps)
    finally:
        _end(proc)


def cpu_share(ranks: int, featured: bool, window_s: float) -> tuple[float, float, int]:
    """The cluster's and the extras' CPU cores at the default speed over ``window_s``, and
    the scrapes that succeeded in it."""
    ports = _free_ports()
    proc = _launch(ports, featured, ["--seed", "1"], ranks)
    try:
        StepClock(proc).wait_first_step()
        with _features(ports, featured) as (observers, scrapes):
            pids = figures.run_pids(proc.pid)
            extras = [pid for observer in observers for pid in figures.run_pids(observer.pid)]
            before, extra_before = _cpu_by_pid(pids), _cpu_by_pid(extras)
            scraped, started = scrapes[0], time.monotonic()
            time.sleep(window_s)  # measuring a fixed window is the point here
            wall = time.monotonic() - started
            if proc.poll() is not None:
                raise RuntimeError("the run ended inside the measured window")
            cluster = _cores(before, _cpu_by_pid(pids), wall)
            extra = _cores(extra_before, _cpu_by_pid(extras), wall)
            return cluster, extra, scrapes[0] - scraped
    finally:
        _end(proc)


def measure(ranks: int, reps: int, steps: int, window_s: float) -> dict[str, float]:
    """Medians of both forms, alternating, and the ratios featured / bare."""
    runs: dict[bool, list[Figures]] = {False: [], True: []}
    for _ in range(reps):
        for featured in (False, True):
            step = step_seconds(ranks, featured, steps)
            cores, extras, scrapes = cpu_share(ranks, featured, window_s)
            runs[featured].append(Figures(step, cores, extras, scrapes))
    out: dict[str, float] = {}
    for featured, name in ((False, "bare"), (True, "featured")):
        for key in ("step_s", "cpu_cores", "extras_cores", "scrapes"):
            out[f"{name}_{key}"] = statistics.median(getattr(f, key) for f in runs[featured])
    out["step_ratio"] = out["featured_step_s"] / out["bare_step_s"]
    out["cpu_ratio"] = out["featured_cpu_cores"] / out["bare_cpu_cores"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="steps timed at --speed 1e6")
    parser.add_argument("--window", type=float, default=20.0, help="seconds of CPU measured")
    args = parser.parse_args()
    out = measure(args.ranks, args.reps, args.steps, args.window)
    print(f"{args.ranks} ranks, median of {args.reps}: step {out['bare_step_s'] * 1e3:.1f} ms "
          f"bare, {out['featured_step_s'] * 1e3:.1f} ms with 3 observers + scrape + CURVE "
          f"({out['step_ratio']:.2f}x); CPU {out['bare_cpu_cores']:.3f} vs "
          f"{out['featured_cpu_cores']:.3f} cores ({out['cpu_ratio']:.2f}x); the observers' "
          f"own {out['featured_extras_cores']:.3f} cores, {out['featured_scrapes']:.0f} "
          "scrapes")  # fmt: skip
    print(json.dumps({"figure": "feature_cost", "ranks": args.ranks, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
