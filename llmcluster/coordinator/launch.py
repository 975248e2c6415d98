"""Local launch: ``llmcluster --ranks N`` on one machine.

Creates the run's private socket directory (0700, removed at exit), forks one
node agent per node before any ZeroMQ context exists, then runs the coordinator
loop in this process. Signals (SIGINT, SIGTERM, SIGHUP) only set a flag, and so
does a closed stdout (SIGPIPE); the loop decides what they mean.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time

from llmcluster import sim
from llmcluster.config import TARGET_WALL_STEP_S, RunConfig
from llmcluster.coordinator.server import Coordinator
from llmcluster.worker.agent import AgentSpec, NodeAgent, local_host_name, outgoing_address
from llmcluster.worker.procs import fork_child

LOCAL_RENDEZVOUS_TIMEOUT_S = 60.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def catch_stop_signals(received: list[int]) -> dict[int, object]:
    """Stop signals append to ``received``; returns the previous handlers."""
    return {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
            for sig in STOP_SIGNALS}  # fmt: skip


def watch_stdout(received: list[int], done: threading.Event) -> None:
    """Append SIGPIPE to ``received`` once stdout is closed (the reader of a pipe gone, a
    hung-up terminal), so the run ends promptly, as a Unix tool does; a daemon thread."""
    from llmcluster.render.sinks import stdout_closed

    def watch() -> None:
        while not done.wait(0.2):
            if stdout_closed():
                received.append(signal.SIGPIPE)
                return

    threading.Thread(target=watch, name="stdout-watch", daemon=True).start()


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


def sweep_stale_dirs() -> None:
    """Remove socket directories of earlier runs whose coordinator is gone (e.g. kill -9)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "llmcluster-*-*")):
        match = re.match(r"llmcluster-(\d+)-", os.path.basename(path))
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue


def run_local(config: RunConfig, plan: sim.RunPlan) -> int:
    """Run the whole cluster on this machine; returns the exit code."""
    from llmcluster.render.sinks import show_records  # preload rich before forking ranks

    launch_wall = process_start_wall()
    speed = choose_speed(config, plan)
    run_id = secrets.token_hex(6)
    received: list[int] = []
    previous = catch_stop_signals(received)
    watching = threading.Event()
    sweep_stale_dirs()
    work_dir = tempfile.mkdtemp(prefix=f"llmcluster-{os.getpid()}-")
    os.chmod(work_dir, 0o700)
    control, publish = f"ipc://{work_dir}/control", f"ipc://{work_dir}/records"
    host = local_host_name()
    try:

        def start_agent(node: int) -> int:
            spec = AgentSpec(
                node=node, control=control, host=host,
                heartbeat_timeout_s=config.heartbeat_timeout_s,
            )  # fmt: skip
            return fork_child(lambda: NodeAgent(spec).run(), name=f"llmc-agent{node}")

        agent_pids = [start_agent(node) for node in range(config.nnodes)]
        coordinator = Coordinator(
            config,
            plan,
            run_id=run_id,
            control=control,
            publish=publish,
            speed=speed,
            launch_wall=launch_wall,
            local_agent_pids=agent_pids,
            show_locally=lambda records: show_records(config, records),
            start_agent=start_agent,
            join_timeout_s=LOCAL_RENDEZVOUS_TIMEOUT_S,  # a rendezvous that never completes ends
        )
        coordinator.signals = received
        watch_stdout(received, watching)
        return coordinator.run()
    finally:
        watching.set()
        shutil.rmtree(work_dir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_coordinator(
    config: RunConfig, plan: sim.RunPlan, *, bind: str, port: int, token: str, join_timeout_s: float
) -> int:
    """``llmcluster coordinator``: serve remote node agents over TCP until the run ends."""
    from llmcluster.render.sinks import show_records

    speed = choose_speed(config, plan)
    received: list[int] = []
    previous = catch_stop_signals(received)
    watching = threading.Event()
    try:
        coordinator = Coordinator(
            config,
            plan,
            run_id=secrets.token_hex(6),
            control=f"tcp://{bind}:{port}",
            publish=f"tcp://{bind}:{port + 1}",
            speed=speed,
            launch_wall=time.time(),
            local_agent_pids=[],
            show_locally=lambda records: show_records(config, records),
            token=token,
            join_timeout_s=join_timeout_s,
            announce=True,
        )
        print(f"llmcluster coordinator: listening on {bind}:{port} (records on {port + 1}), "
              f"waiting for {config.nnodes} node(s) of {config.nproc_per_node} rank(s)",
              file=sys.stderr, flush=True)  # fmt: skip
        coordinator.signals = received
        watch_stdout(received, watching)
        return coordinator.run()
    finally:
        watching.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_node(
    *, master_addr: str, master_port: int, node_rank: int, token: str, join_timeout_s: float,
    heartbeat_timeout_s: float,
) -> int:  # fmt: skip
    """``llmcluster node``: one node agent joining a remote coordinator."""
    host = local_host_name()
    spec = AgentSpec(
        node=node_rank,
        control=f"tcp://{master_addr}:{master_port}",
        host=host,
        heartbeat_timeout_s=heartbeat_timeout_s,
        tcp_host=outgoing_address(master_addr, master_port),
        token=token,
        join_timeout_s=join_timeout_s,
        announce=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    try:
        return NodeAgent(spec).run()
    except KeyboardInterrupt:
        return 130
