"""The output records: what a run tells its display, its observers and ``--format jsonl``.

One frozen dataclass per record type; each JSONL line is ``{"type": <TYPE>, **fields}``.
The coordinator builds them, the telemetry plane carries them, renderers read them and
``llmcluster schema`` prints their JSON Schema (derived from these declarations by
``wire.schema``). Times are unix seconds on the simulated clock; durations are seconds
unless a name ends in ``_ms``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from llmcluster.wire.infos import DatasetInfo, GpuInfo, ModelInfo, PlanInfo
from llmcluster.wire.schema import DecodeError, from_wire, json_schema, num, rank_field, to_wire

SIGNED = 2**63


class PhaseName(str, enum.Enum):
    """The phases around the training steps that a run reports."""

    INIT = "init"
    RESTORE = "restore"
    EVAL = "eval"
    CHECKPOINT = "checkpoint"
    EXPORT = "export"


@dataclass(frozen=True, kw_only=True)
class Record:
    """Base of every output record; ``TYPE`` is the JSONL ``type`` field."""

    TYPE: ClassVar[str] = ""


@dataclass(frozen=True, kw_only=True)
class RunRecord(Record):
    """Once per attempt, after rendezvous: who is where and the whole plan."""

    TYPE: ClassVar[str] = "run"
    run_id: str
    version: str
    world_size: int = num(1)
    nnodes: int = num(1)
    nproc_per_node: int = num(1)
    seed: int = num(0, SIGNED)
    algorithm: str = "hierarchical"
    speed: float = num(0)
    master_addr: str = ""
    master_port: int = num(1, 65535)
    hosts: tuple[str, ...] = ()
    real_hosts: tuple[str, ...] = ()
    pids: tuple[int, ...] = ()
    env: tuple[dict[str, str], ...] = ()
    agent_pid: int = num(0)
    start_time: float = num(0)
    attempt: int = num(0)
    max_restarts: int = num(0)
    rdzv_backend: str = "c10d"
    monitor_interval_s: float = num(0, 3600, default=0.1)
    model: ModelInfo
    gpu: GpuInfo
    dataset: DatasetInfo
    plan: PlanInfo


@dataclass(frozen=True, kw_only=True)
class ReadyRecord(Record):
    """Every rank has passed the first barrier."""

    TYPE: ClassVar[str] = "ready"
    time: float = num(0)
    ready_s: float = num(0)
    world_size: int = num(1)
    attempt: int = num(0)


@dataclass(frozen=True, kw_only=True)
class Collective:
    """The step's gradient allreduce: modelled on the simulated fabric and measured for real."""

    op: str
    algorithm: str
    bytes: int = num(0)
    model_ms: float = num(0)
    exposed_ms: float = num(0)
    busbw_gbs: float = num(0)
    wall_ms: float = num(0)


@dataclass(frozen=True, kw_only=True)
class StepEvent:
    """Something that began at this step (spike, skipped step, straggler, ...)."""

    kind: str
    rank: int = num(-1)
    text: str = ""


@dataclass(frozen=True, kw_only=True)
class StepRecord(Record):
    """One training step, as every rank agreed on it."""

    TYPE: ClassVar[str] = "step"
    step: int = num(1)
    total_steps: int = num(1)
    time: float = num(0)
    loss: float = num(0, nan_ok=True)
    ppl: float = num(0, nan_ok=True)
    lr: float = num(0)
    grad_norm: float = num(0, nan_ok=True)
    loss_scale: float = num(0)
    skipped: bool = False
    tokens: int = num(0)
    tokens_total: int = num(0)
    step_time_s: float = num(0)
    tokens_per_s: float = num(0)
    samples_per_s: float = num(0)
    tflops_per_gpu: float = num(0)
    mfu: float = num(0)
    events: tuple[StepEvent, ...] = ()
    collective: Collective


@dataclass(frozen=True, kw_only=True)
class RankSample:
    """One GPU's telemetry and timing at a step (or during a phase)."""

    rank: int = rank_field()
    local_rank: int = num(0)
    node: int = num(0)
    host: str = ""
    loss: float = num(0, nan_ok=True)
    local_loss: float = num(0, nan_ok=True)
    util: float = num(0, 100)
    temp_c: float = num(-50, 200)
    mem_used_gb: float = num(0)
    mem_total_gb: float = num(0)
    power_w: float = num(0, 10_000)
    sm_clock_mhz: int = num(0, 100_000)
    throttled: bool = False
    arrive_ms: float = num(0)
    wait_ms: float = num(0)
    compute_ms: float = num(0)


@dataclass(frozen=True, kw_only=True)
class RanksRecord(Record):
    """Every rank's sample for one step, in rank order (``phase`` set between steps)."""

    TYPE: ClassVar[str] = "ranks"
    step: int = num(0)
    ranks: tuple[RankSample, ...] = ()
    phase: PhaseName | None = None
    time: float = num(0, default=0.0)


@dataclass(frozen=True, kw_only=True)
class PhaseRecord(Record):
    """A phase begins (init, restore, eval, checkpoint, export)."""

    TYPE: ClassVar[str] = "phase"
    name: PhaseName
    step: int = num(0)
    time: float = num(0)
    expected_s: float = num(0)


@dataclass(frozen=True, kw_only=True)
class EvalRecord(Record):
    """Validation results."""

    TYPE: ClassVar[str] = "eval"
    step: int = num(0)
    time: float = num(0)
    val_loss: float = num(0, 1000)
    val_ppl: float = num(0)
    eval_iters: int = num(1)
    eval_s: float = num(0)
    accuracy: float | None = None


@dataclass(frozen=True, kw_only=True)
class CheckpointRecord(Record):
    """A saved checkpoint."""

    TYPE: ClassVar[str] = "checkpoint"
    step: int = num(0)
    time: float = num(0)
    path: str = ""
    shards: int = num(1)
    bytes_total: int = num(0)
    bytes_per_rank: int = num(0)
    save_s: float = num(0)
    bandwidth_gbs: float = num(0)


@dataclass(frozen=True, kw_only=True)
class ExportFile:
    """One file of the final export."""

    name: str
    bytes: int = num(0)


@dataclass(frozen=True, kw_only=True)
class ExportRecord(Record):
    """The final SafeTensors export."""

    TYPE: ClassVar[str] = "export"
    time: float = num(0)
    path: str = ""
    format: str = "safetensors"
    files: tuple[ExportFile, ...] = ()
    bytes_total: int = num(0)
    export_s: float = num(0)


@dataclass(frozen=True, kw_only=True)
class FailureRecord(Record):
    """A rank or node died: the root cause, as torchrun's ChildFailedError names it."""

    TYPE: ClassVar[str] = "failure"
    time: float = num(0)
    rank: int = rank_field()
    local_rank: int = num(0)
    node: int = num(0)
    host: str = ""
    pid: int = num(0)
    exitcode: int = num(-128, 255)
    signal: str | None = None
    reason: str = ""
    seq: int = num(0)
    op: str = "ALLREDUCE"
    numel: int = num(0)
    timeout_ms: int = num(0)
    step: int = num(0)
    attempt: int = num(0)
    max_restarts: int = num(0)
    error_file: str = ""  # the failed rank's error.json, "" when none was written (<N/A>)


@dataclass(frozen=True, kw_only=True)
class RestartRecord(Record):
    """The worker group restarts from the last checkpoint."""

    TYPE: ClassVar[str] = "restart"
    time: float = num(0)
    attempt: int = num(1)
    max_restarts: int = num(0)
    restarts_left: int = num(0)
    resume_step: int = num(1)
    replayed_steps: int = num(0)
    lost_s: float = num(0)
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class LogRecord(Record):
    """A warning or error."""

    TYPE: ClassVar[str] = "log"
    level: str
    text: str
    time: float = num(0)


@dataclass(frozen=True, kw_only=True)
class SummaryRecord(Record):
    """Once, at the end."""

    TYPE: ClassVar[str] = "summary"
    time: float = num(0)
    steps: int = num(0)
    final_loss: float = num(0, nan_ok=True)
    final_ppl: float = num(0, nan_ok=True)
    tokens_total: int = num(0)
    sim_seconds: float = num(0)
    wall_seconds: float = num(0)
    checkpoints: int = num(0)
    restarts: int = num(0)
    lost_s: float = num(0)
    mfu: float = num(0)
    dropped_messages: int = num(0)
    dropped_by_coordinator: int = num(0)
    dropped_by_ranks: int = num(0)
    exit: str = "completed"


RECORD_TYPES: dict[str, type[Record]] = {
    cls.TYPE: cls
    for cls in (
        RunRecord,
        ReadyRecord,
        StepRecord,
        RanksRecord,
        PhaseRecord,
        EvalRecord,
        CheckpointRecord,
        ExportRecord,
        FailureRecord,
        RestartRecord,
        LogRecord,
        SummaryRecord,
    )
}


def record_to_wire(record: Record) -> dict[str, Any]:
    """The JSONL/msgpack map of a record (``type`` first)."""
    return {"type": record.TYPE, **to_wire(record)}


def record_from_wire(data: Any, *, world_size: int | None = None) -> Record:
    """Decode and validate a record map; raises DecodeError."""
    if not isinstance(data, dict):
        raise DecodeError("record: expected a map")
    cls = RECORD_TYPES.get(data.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise DecodeError(f"record: unknown type {data.get('type')!r}")
    return from_wire(cls, data, world_size=world_size)


def records_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of one JSONL line: any of the record types."""
    defs: dict[str, Any] = {}
    variants = []
    for name, cls in RECORD_TYPES.items():
        schema = json_schema(cls, defs)
        schema["properties"] = {"type": {"const": name}, **schema["properties"]}
        schema["required"] = ["type", *schema["required"]]
        defs[cls.__name__] = schema
        variants.append({"$ref": f"#/$defs/{cls.__name__}"})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://llmcluster.invalid/schema/records.json",
        "title": "llmcluster JSONL record",
        "description": "One line of `llmcluster --format jsonl`; `type` says which record.",
        "oneOf": variants,
        "$defs": defs,
    }
