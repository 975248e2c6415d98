"""``llmcluster --ranks N``: the whole cluster on this machine.

Creates the run's private socket directory (0700, removed at exit), forks one node agent
per node before any ZeroMQ context exists, then serves the coordinator in this process.
Signals only set a flag; the coordinator decides what they mean.
"""

from __future__ import annotations

import os
import secrets
import signal
import time

from llmcluster import sim
from llmcluster.config import RunConfig
from llmcluster.control.net import local_host_name
from llmcluster.control.procs import fork_child
from llmcluster.control.rundir import RunDir, sweep_stale_dirs
from llmcluster.coordinator.machine import Coordinator
from llmcluster.coordinator.server import CoordinatorServer
from llmcluster.coordinator.state import Settings
from llmcluster.exporters.settings import MetricsSettings
from llmcluster.launch import runfile
from llmcluster.launch.common import (
    choose_speed,
    process_start_wall,
    stop_signals_to,
    timeline_start,
)
from llmcluster.launch.nodes import LocalNodes
from llmcluster.launch.runfile import RunFile
from llmcluster.render.sinks import show_records
from llmcluster.worker.agent import NodeAgent
from llmcluster.worker.agentspec import AgentSpec
from llmcluster.worker.starter import prepare_forks

LOCAL_RENDEZVOUS_TIMEOUT_S = 60.0


def run_local(config: RunConfig, plan: sim.RunPlan, metrics: MetricsSettings | None = None) -> int:
    """Run the whole cluster on this machine; returns the exit code. With ``metrics``, node
    ``n``'s GPUs are served on ``metrics.port + n`` (raises MetricsError before anything
    starts when a port is taken)."""
    launch_wall = process_start_wall()
    exporter = None
    if metrics:  # imported only to serve: prometheus-client and the HTTP server would
        # otherwise be in every agent and rank forked below (agents close the listening
        # sockets they inherit)
        from llmcluster.exporters.prometheus_server import MetricsExporter

        exporter = MetricsExporter(metrics, config.nnodes)
    run_id = secrets.token_hex(6)
    received: list[int] = []
    sweep_stale_dirs()
    run_dir = RunDir("run-")
    control, publish = f"ipc://{run_dir.path}/control", f"ipc://{run_dir.path}/records"
    host = local_host_name()

    def agent_main(spec: AgentSpec) -> int:
        stop: list[int] = []  # SIGTERM, also sent if this process dies: stop ranks, clean up
        signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
        return NodeAgent(spec, stop).run()

    def start_agent(node: int) -> int:
        spec = AgentSpec(
            node=node,
            control=control,
            host=host,
            heartbeat_timeout_s=config.heartbeat_timeout_s,
            parent_dir=run_dir.path,
            monitor_interval_s=config.monitor_interval_s,
        )
        return fork_child(
            lambda: agent_main(spec), name=f"llmc-agent{node}", death_signal=signal.SIGTERM
        )

    try:
        # the setup, message checkers and topology, built once here and inherited by every
        # agent forked below (each would build them: ~45 ms of CPU apiece, 10 s at 2048)
        prepare_forks(config, ())
        with stop_signals_to(received):
            nodes = LocalNodes(start_agent, config.nnodes)
            settings = Settings(
                run_id=run_id,
                speed=choose_speed(config, plan),
                launch_wall=launch_wall,
                start_time=timeline_start(config, plan, launch_wall),
                secret=secrets.token_hex(16),
                # a rendezvous that never completes
                join_timeout_s=LOCAL_RENDEZVOUS_TIMEOUT_S * config.start_scale,
                simulated_hosts=True,  # logs show the plan's cluster, never this machine
                publish_endpoint=publish,
                agent_pid=os.getpid(),
            )
            machine = Coordinator(config, plan, settings, time.monotonic())
            server = CoordinatorServer(
                machine,
                control=control,
                publish=publish,
                supervisor=nodes,
                show_locally=lambda recs: show_records(config, recs),
            )
            server.signals = received
            run = RunFile(
                run_id=run_id,
                pid=os.getpid(),
                records=publish,
                control=control,
                world_size=config.ranks,
                started=launch_wall,
            )
            if exporter:
                exporter.start(publish, range(config.nnodes))
            with runfile.published(run):
                return server.run()
    finally:
        if exporter:
            exporter.close()
        run_dir.remove()
        sweep_stale_dirs()  # an agent killed mid-run (and replaced) left its directory
