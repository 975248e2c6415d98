"""What every launch mode shares: signal handling, the demo speed, stale-directory sweeping."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

from llmcluster import sim
from llmcluster.config import TARGET_WALL_STEP_S, RunConfig
from llmcluster.render.sinks import stdout_closed

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STDOUT_CHECK_S = 0.2


def process_start_wall() -> float:
    """Unix time at which this process started (from /proc), or now if unknown."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


def choose_speed(config: RunConfig, plan: sim.RunPlan) -> float:
    """--speed, or auto: simulated seconds per wall second so a step takes ~0.5 s of wall time."""
    if config.speed is not None:
        return config.speed
    return max(1.0, sim.step_time_model_s(plan) / TARGET_WALL_STEP_S)


def timeline_start(config: RunConfig, plan: sim.RunPlan, launch_wall: float) -> float:
    """Where the simulated clock starts: ``--start-time``, the launch itself with
    ``--start-at-launch``, or by default far enough in the past that no record of the run,
    restarts and lost work included, is ever stamped later than the wall clock."""
    if config.start_time is not None:
        return config.start_time
    if config.start_at_launch:
        return launch_wall
    return launch_wall - sim.run_span_s(plan, max_restarts=config.max_restarts)


def _watch_stdout(received: list[int], done: threading.Event) -> None:
    """Append SIGPIPE to ``received`` once stdout is closed (the reader of a pipe gone, a
    hung-up terminal), so the run ends promptly, as a Unix tool does."""
    while not done.wait(STDOUT_CHECK_S):
        if stdout_closed():
            received.append(signal.SIGPIPE)
            return


@contextlib.contextmanager
def stop_signals_to(received: list[int]) -> Iterator[None]:
    """While inside, SIGINT, SIGTERM and SIGHUP only append to ``received``, and so does a
    closed stdout (SIGPIPE): the coordinator decides what they mean (stop at the next step
    boundary, with exit code 128 + signal)."""
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
        for sig in STOP_SIGNALS
    }
    done = threading.Event()
    threading.Thread(target=_watch_stdout, args=(received, done), name="stdout-watch",
                     daemon=True).start()  # fmt: skip
    try:
        yield
    finally:
        done.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
