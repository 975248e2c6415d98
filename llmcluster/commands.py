"""What the command line asks for, as frozen commands, and how each one is carried out.

``cli.parse`` builds a command once everything is checked; ``execute`` starts it.
"""

from __future__ import annotations

import dataclasses
import sys

from llmcluster import sim
from llmcluster.config import RunConfig
from llmcluster.exporters.settings import MetricsError, MetricsSettings
from llmcluster.launch.environment import LaunchEnv
from llmcluster.worker.logspec import NodeLogOptions


@dataclasses.dataclass(frozen=True)
class Printed:
    """``--help`` or ``--version`` already printed its text."""


@dataclasses.dataclass(frozen=True)
class ShowList:
    """``--list``: the catalog."""


@dataclasses.dataclass(frozen=True)
class LocalRun:
    """A whole run on this machine."""

    config: RunConfig
    plan: sim.RunPlan
    metrics: MetricsSettings | None = None  # one endpoint per node from its port


@dataclasses.dataclass(frozen=True)
class CoordinatorRun:
    """``llmcluster coordinator``: serve remote node agents over TCP."""

    config: RunConfig
    plan: sim.RunPlan
    bind: str
    port: int
    token: str
    join_timeout_s: float


@dataclasses.dataclass(frozen=True)
class NodeRun:
    """``llmcluster node``: one node agent joining a coordinator."""

    master_addr: str
    master_port: int
    node_rank: int  # -1: assigned on join
    token: str
    join_timeout_s: float
    heartbeat_timeout_s: float
    nnodes: int  # expected by this node (0: any), checked at the join
    nproc_per_node: int
    metrics: MetricsSettings | None = None  # this node's GPUs
    logs: NodeLogOptions | None = None  # its ranks' torchrun log options (None: the run's)
    slots: str = ""  # a Slurm step of one task per rank: the directory the node's slots join
    monitor_interval_s: float = 0.1  # how often its agent checks its ranks (torchrun's)


@dataclasses.dataclass(frozen=True)
class LaunchRun:
    """``llmcluster launch``: this node's agent, and the coordinator if it hosts it."""

    env: LaunchEnv  # where the node stands in the job, and what said so
    node: NodeRun  # its agent
    coordinator: CoordinatorRun | None  # the rendezvous, when this node hosts it
    banner: str  # the launcher's line naming the job, its nodes and this node's place


@dataclasses.dataclass(frozen=True)
class SlotRun:
    """``llmcluster launch`` as a task of local id 1.. in a Slurm step of one task per rank:
    it holds one local rank for its node's agent (``worker.slot``)."""

    path: str  # the step's directory on this node, where the agent listens
    local_rank: int
    join_timeout_s: float


@dataclasses.dataclass(frozen=True)
class BenchRun:
    """``llmcluster bench``: allreduce over the fabric, nccl-tests style."""

    config: RunConfig  # with the bench workload


@dataclasses.dataclass(frozen=True)
class ShowSchema:
    """``llmcluster schema``: the JSON Schema of the JSONL records."""


Command = (
    Printed
    | ShowList
    | ShowSchema
    | LocalRun
    | CoordinatorRun
    | NodeRun
    | LaunchRun
    | SlotRun
    | BenchRun
)


def _resolved(config: RunConfig, plan: sim.RunPlan) -> RunConfig:
    """Ranks rebuild the identical plan from the resolved names without re-running the picks."""
    return dataclasses.replace(
        config, model=plan.model.name, gpu=plan.gpu.name, dataset=plan.dataset.name
    )


def execute(command: Command) -> int:
    """Run a validated command; returns the exit code."""
    if isinstance(command, Printed):
        return 0
    if isinstance(command, ShowList):
        from llmcluster.listing import print_listing

        print_listing()
        return 0
    if isinstance(command, ShowSchema):
        import json

        from llmcluster.wire.records import records_json_schema

        print(json.dumps(records_json_schema(), indent=2))
        return 0
    if isinstance(command, BenchRun):
        from llmcluster.launch.bench import run_bench

        return run_bench(command.config)
    if isinstance(command, SlotRun):
        from llmcluster.launch.remote import run_slot

        return run_slot(command.path, command.local_rank, command.join_timeout_s)
    if isinstance(command, LaunchRun):
        print(command.banner, file=sys.stderr, flush=True)
    node = command.node if isinstance(command, LaunchRun) else command
    if isinstance(node, NodeRun):
        from llmcluster.launch.remote import node_spec, run_launch, run_node

        spec = node_spec(**{f.name: getattr(node, f.name) for f in dataclasses.fields(node)})
        hosted = command.coordinator if isinstance(command, LaunchRun) else None
        try:
            if hosted is None:
                return run_node(spec)
            return run_launch(
                _resolved(hosted.config, hosted.plan), hosted.plan, bind=hosted.bind,
                port=hosted.port, token=hosted.token, join_timeout_s=hosted.join_timeout_s,
                node=spec,
            )  # fmt: skip
        except MetricsError as exc:
            return _error_exit(str(exc))
    if isinstance(command, CoordinatorRun):
        from llmcluster.launch.remote import run_coordinator

        return run_coordinator(
            _resolved(command.config, command.plan), command.plan, bind=command.bind,
            port=command.port, token=command.token, join_timeout_s=command.join_timeout_s,
        )  # fmt: skip
    from llmcluster.launch.local import run_local

    try:
        return run_local(_resolved(command.config, command.plan), command.plan, command.metrics)
    except MetricsError as exc:
        return _error_exit(str(exc))


def _error_exit(message: str) -> int:
    """A problem found only when starting (a metrics port taken): one line, exit 2."""
    print(f"llmcluster: error: {one_line(message)}", file=sys.stderr)
    return 2


def one_line(message: str) -> str:
    """The message with control characters escaped, so it stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
