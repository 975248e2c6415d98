"""Typed records for the renderer tests, built from a real plan (never hand-typed maps).

The run record comes from ``run_record`` over ``build_setup(RunConfig(...)).plan``, as the
coordinator builds it; the other records are the dataclasses with values chosen to pin
formats down, the figures the plan owns (batch, tokens per step, memory) read from it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from llmcluster.config import RunConfig
from llmcluster.setup import build_setup
from llmcluster.telemetry.describe import run_record
from llmcluster.wire.records import (
    CheckpointRecord,
    Collective,
    EvalRecord,
    ExportFile,
    ExportRecord,
    FailureRecord,
    LogRecord,
    PhaseName,
    PhaseRecord,
    RankSample,
    RanksRecord,
    Record,
    RestartRecord,
    RunRecord,
    StepRecord,
    SummaryRecord,
    record_from_wire,
)

T0 = 1_795_000_000.25  # a simulated launch time (unix seconds)
STEP_S = 4.8703
TOTAL = 300
INIT_END = T0 + 60.0  # when the first step starts


@functools.cache
def make_run(world: int = 64, nproc: int = 8, *, steps: int = TOTAL, dataset: str = "FineWeb-Edu",
             attempt: int = 0) -> RunRecord:  # fmt: skip
    """Llama-3-8B on H100 nodes (``world`` ranks), the run record of a real plan."""
    config = RunConfig(ranks=world, nproc_per_node=nproc, steps=steps, seed=7,
                       model="Llama-3-8B", gpu="H100-SXM", dataset=dataset,
                       algorithm="ring")  # fmt: skip
    plan = build_setup(config).plan
    hosts = [f"node-{n:03d}" for n in range(config.nnodes)]
    return run_record(
        config, plan, run_id="5f3a9c0e17b2", speed=100.0, start_time=T0, attempt=attempt,
        hosts=hosts, real_hosts=hosts, pids=[40000 + 3 * r for r in range(world)], env=[],
        agent_pid=39990,
    )  # fmt: skip


NAN_OK = ("loss", "ppl", "grad_norm", "local_loss", "final_loss", "final_ppl")


def _nan_for_null(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: math.nan if v is None and k in NAN_OK else _nan_for_null(v)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list):
        return [_nan_for_null(v) for v in value]
    return value


def typed(jsonl: list[dict[str, Any]]) -> list[Record]:
    """A real run's JSONL as records (JSONL writes NaN as null; the records hold NaN)."""
    return [record_from_wire(_nan_for_null(r)) for r in jsonl]


def step_time(n: int) -> float:
    """The end of step ``n`` when every step takes ``STEP_S``."""
    return INIT_END + STEP_S * n


def make_step(run: RunRecord, n: int = 120, **changes: Any) -> StepRecord:
    """A step record; ``changes`` override fields (e.g. ``loss=math.nan``)."""
    plan, gpu = run.plan, run.gpu
    step_s = changes.pop("step_time_s", STEP_S)
    loss = changes.pop("loss", 3.41213)
    mfu = 0.4311
    step = StepRecord(
        step=n, total_steps=plan.total_steps, time=changes.pop("time", step_time(n)),
        loss=loss, ppl=math.exp(loss) if math.isfinite(loss) else math.nan, lr=2.85e-4,
        grad_norm=0.84217, loss_scale=1.0, skipped=False, tokens=plan.tokens_per_step,
        tokens_total=plan.tokens_per_step * n, step_time_s=step_s,
        tokens_per_s=plan.tokens_per_step / step_s, samples_per_s=plan.global_batch / step_s,
        tflops_per_gpu=mfu * gpu.bf16_tflops, mfu=mfu,
        collective=Collective(op="allreduce", algorithm="ring", bytes=2 * run.model.params,
                              model_ms=212.4, exposed_ms=21.24, busbw_gbs=371.9, wall_ms=3.21),
    )  # fmt: skip
    return dataclasses.replace(step, **changes)


def make_ranks(run: RunRecord, n: int = 120, *, slow: int = 5, throttled: int = -1,
               hot: int = -1) -> RanksRecord:  # fmt: skip
    """A ranks record: every GPU healthy except the ones named."""
    hot_c = run.gpu.slowdown_c + 1
    samples = []
    for r in range(run.world_size):
        node, local = divmod(r, run.nproc_per_node)
        samples.append(RankSample(
            rank=r, local_rank=local, node=node, host=run.hosts[node], loss=3.41213,
            local_loss=3.4 + r / 1000, util=97.0 + r % 3,
            temp_c=hot_c if r == hot else 61.0 + r % 7, mem_used_gb=61.5, mem_total_gb=80.0,
            power_w=640.0 + r % 50, sm_clock_mhz=1980, throttled=r == throttled,
            arrive_ms=1.0, wait_ms=2.0, compute_ms=5000.0 if r == slow else 4800.0 + r % 11,
        ))  # fmt: skip
    return RanksRecord(step=n, ranks=tuple(samples), time=step_time(n))


def make_summary(**changes: Any) -> SummaryRecord:
    summary = SummaryRecord(
        time=T0 + 1600, steps=TOTAL, final_loss=2.71828, final_ppl=15.1543,
        tokens_total=1_258_291_200, sim_seconds=4000.5, wall_seconds=151.25, checkpoints=3,
        restarts=1, lost_s=312.0, mfu=0.4277, dropped_messages=0, dropped_by_coordinator=0,
        dropped_by_ranks=0, exit="completed",
    )  # fmt: skip
    return dataclasses.replace(summary, **changes)


def make_failure(run: RunRecord, rank: int = 11) -> FailureRecord:
    node, local = divmod(rank, run.nproc_per_node)
    return FailureRecord(
        time=T0 + 700.5, rank=rank, local_rank=local, node=node, host=run.hosts[node],
        pid=run.pids[rank], exitcode=-9, signal="SIGKILL", reason=f"rank {rank} exited",
        seq=812, op="ALLREDUCE", numel=5, timeout_ms=600000, step=130, attempt=0,
        max_restarts=3,
    )  # fmt: skip


def make_restart(**changes: Any) -> RestartRecord:
    restart = RestartRecord(time=T0 + 790, attempt=1, max_restarts=3, restarts_left=2,
                            resume_step=101, replayed_steps=29, lost_s=180.0,
                            reason="rank 11 exited")  # fmt: skip
    return dataclasses.replace(restart, **changes)


def make_eval(run: RunRecord, n: int, t: float, eval_s: float = 30.0) -> EvalRecord:
    return EvalRecord(step=n, time=t, val_loss=3.5012, val_ppl=33.15,
                      eval_iters=run.plan.eval_iters, eval_s=eval_s)  # fmt: skip


def make_checkpoint(run: RunRecord, n: int, t: float, save_s: float = 12.0) -> CheckpointRecord:
    return CheckpointRecord(
        step=n, time=t, path=f"{run.plan.checkpoint_dir}/iter_{n:07d}",
        shards=run.world_size, bytes_total=96_000_000_000,
        bytes_per_rank=96_000_000_000 // run.world_size, save_s=save_s, bandwidth_gbs=8.0,
    )  # fmt: skip


def make_export(run: RunRecord, t: float) -> ExportRecord:
    files = (
        ExportFile(name="model-00001-of-00002.safetensors", bytes=9_950_000_000),
        ExportFile(name="model-00002-of-00002.safetensors", bytes=6_110_000_000),
    )
    return ExportRecord(time=t, path=run.plan.export_dir, files=files,
                        bytes_total=16_060_000_000, export_s=20.0)  # fmt: skip


def make_records(world: int = 64) -> list[Record]:
    """One record of every kind, in the order a run with an eval, a checkpoint, a failure and
    a restart (a new run record for attempt 1, then the restore) emits them."""
    run = make_run(world)
    eval_start = step_time(100)
    return [
        run,
        PhaseRecord(name=PhaseName.INIT, step=0, time=T0 + 10, expected_s=50.0),
        make_step(run, 1, loss=11.76, lr=1e-5),
        make_ranks(run, 1),
        make_step(run, 10, skipped=True, grad_norm=math.nan),
        make_step(run, 11, loss=math.nan),
        make_step(run, 100),
        PhaseRecord(name=PhaseName.EVAL, step=100, time=eval_start, expected_s=30.0),
        make_eval(run, 100, eval_start + 30.0),
        PhaseRecord(name=PhaseName.CHECKPOINT, step=100, time=eval_start + 30, expected_s=12.0),
        make_checkpoint(run, 100, eval_start + 42.0),
        make_failure(run, min(11, world - 1)),
        make_restart(),
        make_run(world, attempt=1),
        PhaseRecord(name=PhaseName.RESTORE, step=100, time=T0 + 792, expected_s=6.0),
        LogRecord(level="WARNING", time=T0 + 800, text="slow rank 5"),
        make_step(run, 300, time=T0 + 1570),
        make_export(run, T0 + 1590),
        make_summary(),
    ]
