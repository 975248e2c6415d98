"""The record stream folded into what a GPU exporter reports (pure, no I/O).

Every ``ranks`` record (after a step, or sampled during a phase) updates each GPU's
reading; the matching ``step`` record says how busy its tensor cores and NVLinks were.
Energy is power integrated over the simulated clock, so it only grows, restarts
included. A failure leaves every GPU of the stopped group idle until the next sample,
and gives the failed rank's GPU an XID that stays, as DCGM's last-XID field does, until
the exporter restarts (NVIDIA/DCGM#277, NVIDIA/dcgm-exporter#500).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

from llmcluster.sim.devices import memory_temp_c
from llmcluster.wire.records import (
    FailureRecord,
    PhaseName,
    PhaseRecord,
    RankSample,
    RanksRecord,
    Record,
    RestartRecord,
    RunRecord,
    StepRecord,
    SummaryRecord,
)

XID_FALLEN_OFF_BUS = 79  # a GPU whose process vanished (killed)
XID_STOPPED_PROCESSING = 43  # a GPU that stopped making progress (hung, timed out, crashed)
PHASES = ("starting", "init", "restore", "training", "eval", "checkpoint", "export",
          "failed", "restarting", "done")  # fmt: skip
STEP_TIME_BUCKETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
EVAL_TENSOR_SHARE = 0.6  # forward passes only: the tensor pipes idle more than in training


@dataclass(frozen=True)
class GpuReading:
    """One GPU as its exporter sees it now."""

    rank: int
    node: int
    local: int
    host: str
    util: float  # %
    temp_c: float
    memory_temp_c: float
    fb_used_mib: int
    fb_free_mib: int
    power_w: float
    sm_clock_mhz: int
    throttled: bool
    gr_active: float  # ratio
    tensor_active: float  # ratio
    nvlink_bps: float  # each way (a ring sends what it receives)
    wait_s: float
    compute_s: float


@dataclass
class Histogram:
    """Cumulative-bucket histogram of observed values."""

    bounds: tuple[float, ...] = STEP_TIME_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(STEP_TIME_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in its bucket."""
        index = next((i for i, bound in enumerate(self.bounds) if value <= bound), -1)
        self.counts[index] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count of values <= le) pairs, ending with +Inf."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else f"{bound:g}", running))
        return out


@dataclass
class MetricsState:
    """Folds records in; readers take ``gpus`` and the job figures under their own lock."""

    run: RunRecord | None = None
    gpus: dict[int, GpuReading] = field(default_factory=dict)
    energy_mj: dict[int, float] = field(default_factory=dict)
    xid: dict[int, int] = field(default_factory=dict)
    step: StepRecord | None = None
    steps: int = 0  # step records seen (replayed steps count again)
    tokens: int = 0  # tokens processed, replays included: a counter
    step_times: Histogram = field(default_factory=Histogram)
    restarts: int = 0
    phase: str = "starting"
    _last_time: dict[int, float] = field(default_factory=dict)

    def update(self, record: Record) -> None:
        """Take one record into account."""
        if isinstance(record, RunRecord):
            self.run, self.phase = record, "init"
        elif isinstance(record, StepRecord):
            self.steps += 1
            self.tokens += record.tokens
            self.step_times.observe(record.step_time_s)
            self.step, self.phase = record, "training"
        elif isinstance(record, RanksRecord):
            self._sample(record)
        elif isinstance(record, PhaseRecord):
            self.phase = record.name.value
        elif isinstance(record, FailureRecord):
            self._failure(record)
        elif isinstance(record, RestartRecord):
            self.restarts, self.phase = max(self.restarts, record.attempt), "restarting"
        elif isinstance(record, SummaryRecord):
            self.phase = "done"

    def _sample(self, record: RanksRecord) -> None:
        run = self.run
        if run is None:
            return
        step = self.step if record.phase is None else None
        if step is not None and step.step != record.step:
            step = None
        mean_compute = statistics.fmean(s.compute_ms for s in record.ranks) or 1.0
        for sample in record.ranks:
            self._integrate(sample.rank, sample.power_w, record.time)
            self.gpus[sample.rank] = reading(run, sample, step, record.phase, mean_compute)

    def _integrate(self, rank: int, power_w: float, time: float) -> None:
        last = self._last_time.get(rank)
        if last is not None and time > last:
            previous = self.gpus.get(rank)
            mean_w = (power_w + previous.power_w) / 2 if previous else power_w
            self.energy_mj[rank] = self.energy_mj.get(rank, 0.0) + mean_w * (time - last) * 1e3
        if last is None or time > last:
            self._last_time[rank] = time
        self.energy_mj.setdefault(rank, 0.0)

    def _failure(self, record: FailureRecord) -> None:
        self.phase = "failed"
        self.xid[record.rank] = XID_FALLEN_OFF_BUS if record.signal else XID_STOPPED_PROCESSING
        idle_w = self.run.gpu.idle_w if self.run else 0.0
        for rank, gpu in self.gpus.items():
            self._integrate(rank, gpu.power_w, record.time)
            self.gpus[rank] = replace(gpu, util=0.0, power_w=idle_w, gr_active=0.0,
                                      tensor_active=0.0, nvlink_bps=0.0)  # fmt: skip


def nvlink_bytes_per_step(run: RunRecord, node_gpus: int, grad_bytes: int) -> float:
    """What each GPU sends (and receives) over NVLink in a step: the ring reduce-scatter
    and all-gather inside its node move 2 (n - 1) / n of the gradient bytes."""
    if node_gpus < 2 or not run.gpu.intra_node_link.startswith("NVLink"):
        return 0.0
    return 2.0 * (node_gpus - 1) / node_gpus * grad_bytes


def reading(
    run: RunRecord,
    sample: RankSample,
    step: StepRecord | None,
    phase: PhaseName | None,
    mean_compute_ms: float,
) -> GpuReading:
    """One GPU's reading from its sample (and the step it belongs to, if any)."""
    used = round(sample.mem_used_gb * 1024)
    node_gpus = min(run.nproc_per_node, run.world_size - sample.node * run.nproc_per_node)
    if step is not None:
        tensor = step.mfu * sample.compute_ms / mean_compute_ms
        moved = nvlink_bytes_per_step(run, node_gpus, step.collective.bytes)
        nvlink = moved / step.step_time_s if step.step_time_s > 0 else 0.0
    else:
        share = EVAL_TENSOR_SHARE if phase is PhaseName.EVAL else 0.0
        tensor, nvlink = share * (run.plan.mfu_target * sample.util / 100.0), 0.0
    return GpuReading(
        rank=sample.rank,
        node=sample.node,
        local=sample.local_rank,
        host=sample.host or _host(run, sample.node),
        util=sample.util,
        temp_c=sample.temp_c,
        memory_temp_c=memory_temp_c(sample.temp_c, sample.util),
        fb_used_mib=used,
        fb_free_mib=max(0, run.gpu.memory_mib - used),
        power_w=sample.power_w,
        sm_clock_mhz=sample.sm_clock_mhz,
        throttled=sample.throttled,
        gr_active=min(1.0, 0.98 * sample.util / 100.0),
        tensor_active=min(1.0, max(0.0, tensor)),
        nvlink_bps=nvlink,
        wait_s=sample.wait_ms / 1000.0,
        compute_s=sample.compute_ms / 1000.0,
    )


def _host(run: RunRecord, node: int) -> str:
    return run.hosts[node] if node < len(run.hosts) else f"node{node}"
