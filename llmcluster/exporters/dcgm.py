"""The simulated GPUs as NVIDIA's dcgm-exporter exposes real ones.

Names, types and HELP texts are dcgm-exporter's (``etc/default-counters.csv`` and
``etc/dcp-metrics-included.csv``, tag 4.5.3-4.8.2); the two fields those files leave out,
``DCGM_FI_PROF_NVLINK_TX_BYTES``/``RX_BYTES`` and ``DCGM_FI_DEV_CLOCK_THROTTLE_REASONS``,
carry DCGM's own field descriptions as deployments list them in their counters CSV.
Values print as the exporter prints them (``%d`` for DCGM's int64 fields, ``%f`` for
doubles) and labels in its template's order: ``gpu``, ``UUID``, ``pci_bus_id``,
``device``, ``modelName``, ``Hostname``, then the label field ``DCGM_FI_DRIVER_VERSION``,
then the ``err_code``/``err_msg`` attributes of the XID metric. prometheus-client's own
text encoder sorts labels and appends ``_total`` to counters, so the families built here
are written by ``render`` instead, following the exporter's Go template.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client.core import Metric

from llmcluster.exporters.state import GpuReading, MetricsState
from llmcluster.sim.devices import gpu_uuid, mem_clock_mhz, pci_bus_id
from llmcluster.wire.records import RunRecord

# DCGM_CLOCKS_THROTTLE_REASON_* bits (dcgm_fields.h, the same as NVML's)
GPU_IDLE, SW_POWER_CAP, HW_SLOWDOWN, SW_THERMAL, HW_THERMAL = 0x1, 0x4, 0x8, 0x20, 0x40
POWER_CAP_FRACTION = 0.99
XID_TEXT = {  # dcgm-exporter's internal/pkg/collector/xid_errors.go
    0: "No Error",
    13: "Graphics Engine Exception",
    43: "GPU stopped processing",
    79: "GPU has fallen off the bus",
}


@dataclass(frozen=True)
class GpuView:
    """A reading with what the exporter knows about the board beyond its sample."""

    gpu: GpuReading
    energy_mj: float
    xid: int
    mem_clock_mhz: int
    tdp_w: float


@dataclass(frozen=True)
class Field:
    """One DCGM field as a Prometheus metric."""

    name: str
    kind: str  # gauge | counter
    help: str
    integer: bool  # DCGM_FT_INT64 (else DCGM_FT_DOUBLE)
    value: Callable[[GpuView], float]


def throttle_reasons(view: GpuView) -> int:
    """The clock-throttle bitmask: idle, power cap, thermal slowdown."""
    gpu, mask = view.gpu, 0
    if gpu.util <= 0.0:
        mask |= GPU_IDLE
    if gpu.power_w >= POWER_CAP_FRACTION * view.tdp_w:
        mask |= SW_POWER_CAP
    if gpu.throttled:
        mask |= SW_THERMAL | HW_THERMAL | HW_SLOWDOWN
    return mask


FIELDS = (
    Field("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", True,
          lambda v: v.gpu.sm_clock_mhz),
    Field("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", True,
          lambda v: v.mem_clock_mhz),
    Field("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (in C).", True,
          lambda v: v.gpu.memory_temp_c),
    Field("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", True,
          lambda v: v.gpu.temp_c),
    Field("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", False,
          lambda v: v.gpu.power_w),
    Field("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
          "Total energy consumption since boot (in mJ).", True, lambda v: v.energy_mj),
    Field("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", True,
          lambda v: v.gpu.util),
    Field("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.", True,
          lambda v: v.xid),
    Field("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).", True,
          lambda v: v.gpu.fb_free_mib),
    Field("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).", True,
          lambda v: v.gpu.fb_used_mib),
    Field("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "gauge",
          "Current clock throttle reasons (bitmask of DCGM_CLOCKS_THROTTLE_REASON_*)", True,
          throttle_reasons),
    Field("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Ratio of time the graphics engine is active.",
          False, lambda v: v.gpu.gr_active),
    Field("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge",
          "Ratio of cycles the tensor (HMMA) pipe is active.", False,
          lambda v: v.gpu.tensor_active),
    Field("DCGM_FI_PROF_NVLINK_TX_BYTES", "gauge",
          "The rate of data transmitted over NVLink not including protocol headers in bytes "
          "per second", True, lambda v: v.gpu.nvlink_bps),
    Field("DCGM_FI_PROF_NVLINK_RX_BYTES", "gauge",
          "The rate of data received over NVLink not including protocol headers in bytes "
          "per second", True, lambda v: v.gpu.nvlink_bps),
)  # fmt: skip
INTEGER_FIELDS = frozenset(f.name for f in FIELDS if f.integer)


def gpu_labels(run: RunRecord, gpu: GpuReading) -> dict[str, str]:
    """dcgm-exporter's labels of one GPU, in its order."""
    return {
        "gpu": str(gpu.local),
        "UUID": gpu_uuid(run.seed, gpu.node, gpu.local),
        "pci_bus_id": pci_bus_id(gpu.local),
        "device": f"nvidia{gpu.local}",
        "modelName": run.gpu.smi_name,
        "Hostname": gpu.host,
        "DCGM_FI_DRIVER_VERSION": run.plan.versions.get("driver", ""),
    }


def views(state: MetricsState, node: int | None) -> list[GpuView]:
    """The GPUs of ``node`` (every node when None), in rank order."""
    run = state.run
    if run is None:
        return []
    clock = mem_clock_mhz(run.gpu.name, run.gpu.mem_bw_gbs)
    return [
        GpuView(gpu, state.energy_mj.get(rank, 0.0), state.xid.get(rank, 0), clock, run.gpu.tdp_w)
        for rank, gpu in sorted(state.gpus.items())
        if node is None or gpu.node == node
    ]


def families(state: MetricsState, node: int | None) -> list[Metric]:
    """One metric family per DCGM field, one sample per GPU of ``node``."""
    run, gpus = state.run, views(state, node)
    out = []
    for field in FIELDS:
        family = Metric(field.name, field.help, field.kind)
        for view in gpus:
            assert run is not None
            labels = gpu_labels(run, view.gpu)
            if field.name == "DCGM_FI_DEV_XID_ERRORS":
                labels["err_code"] = str(view.xid)
                labels["err_msg"] = XID_TEXT.get(view.xid, "Unknown Error")
            family.add_sample(field.name, labels, float(field.value(view)))
        out.append(family)
    return out


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _value(name: str, value: float) -> str:
    return f"{round(value):d}" if name in INTEGER_FIELDS else f"{value:f}"


def render(metric_families: Iterable[Metric]) -> str:
    """The families in dcgm-exporter's text format (labels in insertion order)."""
    lines = []
    for family in metric_families:
        if not family.samples:
            continue
        lines += [
            f"# HELP {family.name} {family.documentation}",
            f"# TYPE {family.name} {family.type}",
        ]
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            lines.append(f"{sample.name}{{{labels}}} {_value(sample.name, sample.value)}")
    return "\n".join(lines) + "\n" if lines else ""
