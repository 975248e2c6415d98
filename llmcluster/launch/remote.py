"""``llmcluster coordinator``, ``node`` and ``launch``: the cluster across hosts over TCP.

The coordinator serves remote node agents (control on ``--port``, records on the next
port); a node runs one agent that joins it; ``launch`` on the node hosting the rendezvous
forks that node's agent and serves the coordinator in the same process (the agent dies
with it, and is reaped on every way out). All go through the same coordinator and agent
code as a local run; only node supervision differs (remote nodes are watched by their
heartbeats alone, a hosted agent is also reaped). With a token every TCP socket of the run
(control, records, the peer mesh between hosts) is CurveZMQ with keys derived from it
(``control.security``). In a Slurm step of one task per rank the node's other tasks are
slots (``run_slot``) that start their ranks for its agent.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time

from llmcluster import sim
from llmcluster.config import RunConfig
from llmcluster.control.net import local_host_name, outgoing_address
from llmcluster.control.procs import fork_child
from llmcluster.control.rundir import sweep_stale_dirs
from llmcluster.control.security import CurveKeys
from llmcluster.coordinator.machine import Coordinator
from llmcluster.coordinator.server import CoordinatorServer, NodeSupervisor, RemoteNodes
from llmcluster.coordinator.state import Settings
from llmcluster.exporters.settings import MetricsSettings
from llmcluster.launch.common import (
    choose_speed,
    stop_signals_to,
    timeline_start,
)
from llmcluster.launch.nodes import HostedNode
from llmcluster.render.sinks import show_records
from llmcluster.worker.agent import NodeAgent
from llmcluster.worker.agentspec import AgentSpec
from llmcluster.worker.logspec import NodeLogOptions
from llmcluster.worker.slot import Slot


def run_coordinator(
    config: RunConfig,
    plan: sim.RunPlan,
    *,
    bind: str,
    port: int,
    token: str,
    join_timeout_s: float,
    supervisor: NodeSupervisor | None = None,
) -> int:
    """Serve remote node agents over TCP until the run ends (``supervisor``: also agents
    this process forked)."""
    received: list[int] = []
    publish = f"tcp://{bind}:{port + 1}"
    launch_wall = time.time()
    settings = Settings(
        run_id=secrets.token_hex(6),
        speed=choose_speed(config, plan),
        launch_wall=launch_wall,
        start_time=timeline_start(config, plan, launch_wall),
        secret=secrets.token_hex(16),
        join_timeout_s=join_timeout_s,
        publish_endpoint=publish,
        standalone=True,
        agent_pid=os.getpid(),
    )
    with stop_signals_to(received):
        machine = Coordinator(config, plan, settings, time.monotonic())
        server = CoordinatorServer(
            machine,
            control=f"tcp://{bind}:{port}",
            publish=publish,
            supervisor=supervisor or RemoteNodes(),
            show_locally=lambda recs: show_records(config, recs),
            curve=CurveKeys.from_token(token),
        )
        print(
            f"llmcluster coordinator: listening on {bind}:{port} (records on {port + 1}), "
            f"waiting for {config.nnodes} node(s) of {config.nproc_per_node} rank(s)",
            file=sys.stderr,
            flush=True,
        )
        server.signals = received
        return server.run()


def node_spec(
    *,
    master_addr: str,
    master_port: int,
    node_rank: int,
    token: str,
    join_timeout_s: float,
    heartbeat_timeout_s: float,
    nnodes: int = 0,
    nproc_per_node: int = 0,
    metrics: MetricsSettings | None = None,
    logs: NodeLogOptions | None = None,
    slots: str = "",
    monitor_interval_s: float = 0.1,
) -> AgentSpec:
    """The agent of a node joining a coordinator over TCP (of ``nnodes`` x ``nproc_per_node``,
    0: any), serving its GPUs' metrics if asked, its ranks' logs as its own ``logs`` say."""
    return AgentSpec(
        node=node_rank,
        control=f"tcp://{master_addr}:{master_port}",
        host=local_host_name(),
        heartbeat_timeout_s=heartbeat_timeout_s,
        tcp_host=outgoing_address(master_addr, master_port),
        token=token,
        join_timeout_s=join_timeout_s,
        announce=True,
        nnodes=nnodes,
        nproc_per_node=nproc_per_node,
        metrics=metrics,
        logs=logs,
        slots=slots,
        monitor_interval_s=monitor_interval_s,
    )


def run_slot(path: str, local_rank: int, timeout_s: float) -> int:
    """A task holding one local rank for its node's agent (a Slurm step of one task per
    rank); stop signals (scancel's SIGTERM) make it kill its rank and leave."""
    received: list[int] = []
    with stop_signals_to(received):
        return Slot(path, local_rank, received).run(timeout_s)


def run_node(spec: AgentSpec) -> int:
    """One node agent joining a remote coordinator; signals stop it (and its ranks)."""
    sweep_stale_dirs()
    received: list[int] = []
    with stop_signals_to(received):
        return NodeAgent(spec, received).run()


def _hosted_agent(spec: AgentSpec) -> int:
    """The forked agent of the hosting node: SIGTERM (also sent when the launcher dies) stops
    it; terminal signals are the coordinator's to judge, as in a local run."""
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
    return NodeAgent(spec, stop).run()


def run_launch(
    config: RunConfig,
    plan: sim.RunPlan,
    *,
    bind: str,
    port: int,
    token: str,
    join_timeout_s: float,
    node: AgentSpec,
) -> int:
    """``llmcluster launch`` on the node hosting the rendezvous: fork this node's agent (before
    any ZeroMQ context exists), serve the coordinator here, reap the agent on the way out."""
    sweep_stale_dirs()
    start = lambda: fork_child(lambda: _hosted_agent(node), name="llmc-agent",  # noqa: E731
                               death_signal=signal.SIGTERM)  # fmt: skip
    hosted = HostedNode(start, node.node)
    try:
        return run_coordinator(config, plan, bind=bind, port=port, token=token,
                               join_timeout_s=join_timeout_s, supervisor=hosted)  # fmt: skip
    finally:
        hosted.close()
