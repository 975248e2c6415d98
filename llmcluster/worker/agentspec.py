"""What a node agent is told at its start: where the coordinator is, which node it plays,
and what of the run is its own to say (torchrun's per-node options)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llmcluster.config import RunConfig
from llmcluster.exporters.settings import MetricsSettings
from llmcluster.worker import logspec


@dataclass(frozen=True)
class AgentSpec:
    """How to reach the coordinator and which node this agent plays."""

    node: int  # -1: ask the coordinator to assign one
    control: str
    host: str
    heartbeat_timeout_s: float = 3.0
    tcp_host: str | None = None  # bind rank inboxes on this address too (multi-host)
    token: str = ""  # shared secret of a run across hosts: its CurveZMQ keys derive from it
    nnodes: int = 0  # the cluster shape this node expects (0: whatever the coordinator runs)
    nproc_per_node: int = 0
    join_timeout_s: float = 60.0  # give up if no coordinator answers for this long
    announce: bool = False  # a standalone node prints its own agent lines (rank 0 prints node 0's)
    parent_dir: str = ""  # the coordinator's socket directory (local runs): removed if it died
    metrics: MetricsSettings | None = None  # serve this node's GPUs (``llmcluster node``)
    logs: logspec.NodeLogOptions | None = None  # its own log flags (``llmcluster node``)
    slots: str = ""  # a Slurm step of one task per rank: the step's directory its slots join
    monitor_interval_s: float = 0.1  # torchrun's: its ranks' exits are checked this often

    def over(self, config: RunConfig) -> RunConfig:
        """The run's config as this node's agent sees it: its own monitor interval, and its
        own log options where given."""
        config = dataclasses.replace(config, monitor_interval_s=self.monitor_interval_s)
        return self.logs.over(config) if self.logs else config
