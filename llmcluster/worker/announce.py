"""What a standalone node's agent prints of its own (node 0's lines are rank 0's to print):
torchrun's launch and rendezvous lines, its restarts, and the end of its worker group."""

from __future__ import annotations

import os

from llmcluster.config import RunConfig
from llmcluster.render.launch import AgentLaunch, finish_lines, launcher_lines
from llmcluster.render.report import agent_restart_lines


def agent_launch(config: RunConfig, *, run_id: str, attempt: int, sim_time: float,
                 agent_pid: int) -> AgentLaunch:  # fmt: skip
    """What torchrun's agent lines say of the run, as a node agent knows it."""
    return AgentLaunch(
        start_time=sim_time,
        agent_pid=agent_pid,
        nnodes=config.nnodes,
        nproc_per_node=config.nproc_per_node,
        world_size=config.ranks,
        master_addr=config.master_addr,
        master_port=config.master_port,
        run_id=run_id,
        max_restarts=config.max_restarts,
        attempt=attempt,
        rdzv_backend=config.rdzv_backend,
        monitor_interval_s=config.monitor_interval_s,
    )


def group_lines(launch: AgentLaunch, *, node: int, max_restarts: int) -> list[str]:
    """The worker group of ``node`` starting (attempt 0) or restarting."""
    if launch.attempt == 0:
        return launcher_lines(launch, group_rank=node)
    return agent_restart_lines(launch, launch.start_time, attempt=launch.attempt,
                               restarts_left=max_restarts - launch.attempt,
                               max_restarts=max_restarts)  # fmt: skip


def end_lines(launch: AgentLaunch, *, node: int, code: int, waited_s: float) -> list[str]:
    """The run is over for this node: torchrun's finish lines, or the failure."""
    if code != 0:
        return [f"llmcluster node {node}: the run failed (exit code {code}); "
                "local worker group stopped"]  # fmt: skip
    return finish_lines(launch, launch.start_time, round(waited_s, 6))


def group_text(config: RunConfig, *, node: int, run_id: str, attempt: int,
               sim_time: float) -> str:  # fmt: skip
    """A node agent's lines as its worker group starts (attempt 0) or restarts."""
    launch = agent_launch(config, run_id=run_id, attempt=attempt, sim_time=sim_time,
                          agent_pid=os.getpid())  # fmt: skip
    return "\n".join(group_lines(launch, node=node, max_restarts=config.max_restarts))


def end_text(config: RunConfig, *, node: int, run_id: str, code: int, waited_s: float,
             sim_time: float) -> str:  # fmt: skip
    """A node agent's lines as the run ends for its node."""
    launch = agent_launch(config, run_id=run_id, attempt=0, sim_time=sim_time,
                          agent_pid=os.getpid())  # fmt: skip
    return "\n".join(end_lines(launch, node=node, code=code, waited_s=waited_s))
