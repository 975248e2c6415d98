"""The training job's own series, ``llmcluster_*``, as a training job's exporter shows them.

A prometheus-client collector over the folded state: step, loss, throughput, tokens, a
step-time histogram, restarts and the phase (one series per phase, 1 for the current
one) on the endpoint of node 0 (where rank 0 lives), and each rank's collective wait and
compute time on its own node's endpoint. Times are simulated seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from llmcluster.exporters.state import PHASES, MetricsState


class JobCollector(Collector):
    """The ``llmcluster_*`` families of one node's endpoint."""

    def __init__(
        self,
        state: MetricsState,
        lock: AbstractContextManager[Any],
        node: int,
        *,
        job: bool,
    ) -> None:
        self.state, self.lock, self.node, self.job = state, lock, node, job

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            yield from self._rank_families()
            if self.job:
                yield from self._job_families()

    def _rank_families(self) -> Iterator[Metric]:
        wait = GaugeMetricFamily(
            "llmcluster_collective_wait_seconds",
            "Time the rank waited in the last step's allreduce.",
            labels=["rank", "node", "hostname"],
        )
        compute = GaugeMetricFamily(
            "llmcluster_rank_compute_seconds",
            "The rank's compute time in the last step (the straggler has the longest).",
            labels=["rank", "node", "hostname"],
        )
        for rank, gpu in sorted(self.state.gpus.items()):
            if gpu.node == self.node:
                labels = [str(rank), str(gpu.node), gpu.host]
                wait.add_metric(labels, gpu.wait_s)
                compute.add_metric(labels, gpu.compute_s)
        yield wait
        yield compute

    def _job_families(self) -> Iterator[Metric]:
        state, step = self.state, self.state.step
        if state.run is not None:
            info = GaugeMetricFamily(
                "llmcluster_run_info",
                "The run: model, GPU, world size.",
                labels=["run_id", "model", "gpu", "world_size", "seed"],
            )
            run = state.run
            info.add_metric(
                [run.run_id, run.model.name, run.gpu.name, str(run.world_size), str(run.seed)], 1.0
            )
            yield info
        figures = {
            "llmcluster_step": (
                "The last training step the ranks agreed on.",
                step.step if step else 0,
            ),
            "llmcluster_total_steps": (
                "Steps the run will train.",
                step.total_steps if step else 0,
            ),
            "llmcluster_loss": (
                "Training loss of the last step (the global, allreduced one).",
                step.loss if step else math.nan,
            ),
            "llmcluster_learning_rate": (
                "Learning rate of the last step.",
                step.lr if step else 0.0,
            ),
            "llmcluster_tokens_per_second": (
                "Training throughput of the last step (simulated seconds).",
                step.tokens_per_s if step else 0.0,
            ),
            "llmcluster_mfu_ratio": (
                "Model FLOPs utilisation of the last step.",
                step.mfu if step else 0.0,
            ),
        }
        for name, (text, value) in figures.items():
            yield GaugeMetricFamily(name, text, value=float(value))
        yield CounterMetricFamily(
            "llmcluster_tokens", "Tokens processed (replayed steps too).", value=state.tokens
        )
        yield CounterMetricFamily(
            "llmcluster_steps", "Step records (replayed steps too).", value=state.steps
        )
        yield CounterMetricFamily(
            "llmcluster_restarts", "Worker group restarts.", value=state.restarts
        )
        yield HistogramMetricFamily(
            "llmcluster_step_time_seconds",
            "Step time on the simulated clock.",
            buckets=state.step_times.cumulative(),
            sum_value=state.step_times.total,
        )
        phase = GaugeMetricFamily(
            "llmcluster_phase", "What the job is doing (1 for the current phase).", labels=["phase"]
        )
        for name in PHASES:
            phase.add_metric([name], 1.0 if name == state.phase else 0.0)
        yield phase
