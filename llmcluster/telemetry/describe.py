"""The ``run`` record: the plan and the world after rendezvous, as the coordinator publishes it."""

from __future__ import annotations

from collections.abc import Sequence

from llmcluster import __version__, sim
from llmcluster.config import RunConfig
from llmcluster.wire.records import RunRecord
from llmcluster.wire.schema import from_wire


def run_record(
    config: RunConfig,
    plan: sim.RunPlan,
    *,
    run_id: str,
    speed: float,
    start_time: float,
    attempt: int,
    hosts: Sequence[str],
    real_hosts: Sequence[str],
    pids: Sequence[int],
    env: Sequence[dict[str, str]],
    agent_pid: int,
) -> RunRecord:
    """The run record of one attempt (validated like any record that crosses the wire)."""
    return from_wire(
        RunRecord,
        {
            "run_id": run_id,
            "version": __version__,
            "world_size": config.ranks,
            "nnodes": config.nnodes,
            "nproc_per_node": config.nproc_per_node,
            "seed": config.seed,
            "algorithm": config.algorithm,
            "speed": speed,
            "master_addr": config.master_addr,
            "master_port": config.master_port,
            "hosts": list(hosts),
            "real_hosts": list(real_hosts),
            "pids": list(pids),
            "env": list(env),
            "agent_pid": agent_pid,
            "start_time": start_time,
            "attempt": attempt,
            "max_restarts": config.max_restarts,
            "rdzv_backend": config.rdzv_backend,
            "monitor_interval_s": config.monitor_interval_s,
            **sim.describe_plan(plan),
        },
        world_size=config.ranks,
    )
