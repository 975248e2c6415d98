"""The framework styles print only what the real tools print, with the real tools' state.

Every regex here is written from real lines quoted in ``shared/reference/real-logs.md``
(2a torchrun, 2b NCCL, 2c failures and signals, 2d Megatron-LM, 2e DeepSpeed and the HF
Trainer, 2f nccl-tests) or DeepSpeed 0.16's configuration dump and checkpoint engine.
The records come from a real plan (``render_fixtures``) or from a real run's JSONL.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import re
from datetime import datetime

import pytest
from conftest import records, run_cli
from render_fixtures import (
    INIT_END,
    STEP_S,
    T0,
    make_checkpoint,
    make_eval,
    make_records,
    make_run,
    make_step,
    make_summary,
    typed,
)

from llmcluster import render
from llmcluster.config import BenchSettings, RunConfig
from llmcluster.render.dashboard import DashboardState
from llmcluster.render.fmt import deepspeed_ts, duration
from llmcluster.render.sinks import JsonlDisplay, show_records
from llmcluster.wire.records import (
    CheckpointRecord,
    FailureRecord,
    PhaseName,
    PhaseRecord,
    ReadyRecord,
    Record,
    RunRecord,
    StepRecord,
    record_to_wire,
)

TORCHRUN = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ torch/distributed/[\w/]+\.py:\d+\]")
NCCL_LINE = re.compile(r"^node-\d{3}:\d+:\d+ \[\d+\] NCCL INFO \S.*$|^NCCL version [\d.]+\+cuda")
SMI_L = re.compile(r"^GPU \d+: .+ \(UUID: GPU-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\)$")
WATCHDOG = re.compile(r"^\[rank\d+\]:\[E\d{3,4} \d\d:\d\d:\d\d\.\d{9} ProcessGroupNCCL\.cpp:\d+\] ")
CHILD_FAILED = re.compile(
    r"^(torch\.distributed\.elastic\.multiprocessing\.errors\.ChildFailedError: |=+|-+|"
    r"\S+ FAILED|Failures:|  <NO_OTHER_FAILURES>|Root Cause \(first observed failure\):|\[0\]:|"
    r"  (time|host|rank|exitcode|error_file|traceback) *: .+)$"
)
TEE = re.compile(r"^\[default(\d+)\]:")
DEEPSPEED = re.compile(
    r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[(INFO|WARNING)\] "
    r"\[(?P<where>[\w.]+:\d+:\w+)\] (?P<msg>.+)$"
)
DS_CONTINUATION = re.compile(r'^ *("\w+": .+|[{}],?|\},?)$')  # a multi-line dump value
DS_CONFIG = re.compile(r"^\[config\.py:\d+:print\]$")
TQDM = re.compile(
    r"^ *(?P<pct>\d{1,3})%\|[█ ]+\| (?P<n>\d+)/(?P<total>\d+) \[(?P<elapsed>[\d:]+)<"
    r"(?P<left>[\d:]+|\?), +(?P<rate>[\d.]+)(s/it|it/s)\]$"
)
HF_LINE = re.compile(
    r"^(\{'.+\}|\*{5} Running (training|Evaluation) \*{5}|  [A-Z][\w ().,&-]+ = [\d,]+|"
    r"Saving model checkpoint to \S+|Configuration saved in \S+|Model weights saved in \S+|"
    r"The model is bigger than the maximum size per checkpoint \(5GB\) .+|"
    r"  Continuing training from .+)$"
)
SIGINT_LINE = re.compile(  # real-logs.md 2c, torchrun's agent on Ctrl+C
    r"^W\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ torch/distributed/elastic/agent/server/api\.py:\d+\] "
    r"Received Signals\.SIGINT death signal, shutting down workers$"
)
NOT_A_FRAMEWORK_LINE = re.compile(r"llmcluster|GPUs @ step|Training summary|[│╭╰]|^\d{4}-\d\d-\d\d")


def lines_of(style: str, recs: list[Record], *, width: int = 120, bench: bool = False) -> list[str]:
    renderer = render.make_style(style, width=width, bench=bench)
    return [line for record in recs for line in renderer.lines(record)]


def interrupted_records() -> list[Record]:
    recs = [r for r in make_records() if not isinstance(r, FailureRecord)]
    return [*recs[:-1], make_summary(exit="interrupted (SIGINT)")]


# ---------------------------------------------------------------- only real lines


def _deepspeed_line(body: str) -> bool:
    """DeepSpeed's logger, a dump's continuation, NCCL, the watchdog, or the script's own."""
    return bool(
        DEEPSPEED.match(body) or DS_CONTINUATION.match(body) or NCCL_LINE.match(body)
        or WATCHDOG.match(body) or HF_LINE.match(body) or body.startswith(("epoch ", "WARNING: "))
    )  # fmt: skip


def _unexplained(style: str, lines: list[str]) -> list[str]:
    """Lines of a framework log that no framework, torchrun, NCCL or nvidia-smi prints."""
    bad = []
    for line in lines:
        if TORCHRUN.match(line) or SMI_L.match(line) or CHILD_FAILED.match(line):
            continue
        tee = TEE.match(line)
        body = line[tee.end() :] if tee else line
        if NOT_A_FRAMEWORK_LINE.search(body):
            bad.append(line)
        elif style == "hf":
            if tee or not (HF_LINE.match(body) or TQDM.match(body) or NCCL_LINE.match(body)
                           or WATCHDOG.match(body) or body.startswith("WARNING: ")):  # fmt: skip
                bad.append(line)
        elif not tee or (
            style == "deepspeed"
            and not (
                DEEPSPEED.match(body)
                or DS_CONTINUATION.match(body)
                or NCCL_LINE.match(body)
                or WATCHDOG.match(body)
                or HF_LINE.match(body)
                or body.startswith(("epoch ", "WARNING: "))
            )
        ):  # megatron and deepspeed run under torchrun --tee 3
            bad.append(line)
    return bad


@pytest.mark.parametrize("style", ["megatron", "deepspeed", "hf"])
def test_framework_styles_print_only_real_lines(style: str) -> None:
    for recs in (make_records(), interrupted_records()):
        lines = lines_of(style, recs)
        assert _unexplained(style, lines) == []
        assert not any(line.endswith("exiting program at iteration 300") for line in lines)


def test_the_default_style_alone_adds_the_grid_the_box_and_explanations() -> None:
    lines = lines_of("default", make_records())
    text = "\n".join(lines)
    assert "GPUs @ step 1 " in text and "Training summary" in text
    assert "llmcluster: resuming from the checkpoint at step 100" in text


def test_interrupt_prints_torchruns_death_signal_lines() -> None:
    run = make_run()
    for style in render.STYLES:
        lines = lines_of(style, interrupted_records())
        at = [i for i, line in enumerate(lines) if SIGINT_LINE.match(line)]
        assert len(at) == 1, style
        closing = lines[at[0] + 1 : at[0] + 1 + run.nproc_per_node]
        assert [x.split("Sending process ")[1] for x in closing] == [
            f"{pid} closing signal SIGINT" for pid in run.pids[: run.nproc_per_node]
        ]
        completed = lines_of(style, make_records())
        assert not any("death signal" in line for line in completed)
        if style == "hf":  # an interrupted Trainer never returns from train()
            assert not any("'train_runtime'" in x for x in lines)
            assert any("'train_runtime'" in x for x in completed)


# ---------------------------------------------------------------- DeepSpeed


@pytest.fixture(scope="module")
def run16() -> list[Record]:
    done = run_cli("--ranks", "16", "--steps", "22", "--seed", "5", "--format", "jsonl",
                   "--speed", "1000000", timeout=100)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return typed(records(done.stdout))


def _stamps(lines: list[str]) -> list[datetime]:
    out = []
    for line in lines:
        match = DEEPSPEED.match(TEE.sub("", line))
        if match:
            out.append(datetime.strptime(match["ts"], "%Y-%m-%d %H:%M:%S,%f"))
    return out


def test_deepspeed_timestamps_never_go_backwards(run16: list[Record]) -> None:
    for recs in (run16, make_records(), interrupted_records()):
        stamps = _stamps(lines_of("deepspeed", recs))
        assert len(stamps) > 20 and stamps == sorted(stamps)


def test_deepspeed_running_average_is_the_throughput_timers(run16: list[Record]) -> None:
    run = run16[0]
    assert isinstance(run, RunRecord)
    steps = [r for r in run16 if isinstance(r, StepRecord)]
    lines = [x for x in lines_of("deepspeed", run16) if "RunningAvgSamplesPerSec=" in x]
    timer = re.compile(r"RunningAvgSamplesPerSec=([\d.e+-]+), CurrSamplesPerSec=([\d.e+-]+),")
    parsed = [tuple(map(float, timer.search(x).groups())) for x in lines]  # type: ignore[union-attr]
    assert len(parsed) == len(steps)
    for k, ((running, current), step) in enumerate(zip(parsed, steps, strict=True)):
        timed = steps[1 : k + 1] or steps[:1]  # DeepSpeed's ThroughputTimer skips step 1
        expected = (
            len(timed) * run.plan.global_batch / sum(s.step_time_s for s in timed)
            if k
            else step.samples_per_s
        )
        assert running == pytest.approx(expected, rel=1e-12) and current == step.samples_per_s
    assert sum(r != c for r, c in parsed) >= len(parsed) - 2
    allreduce = {re.search(r"bwd_allreduce: ([\d.]+)", x)[1]  # type: ignore[index]
                 for x in lines_of("deepspeed", run16) if "bwd_allreduce" in x}  # fmt: skip
    assert len(allreduce) > 1  # rank 0's exposed allreduce varies with each step


def test_deepspeed_prints_its_engine_configuration() -> None:
    run = make_run()
    lines = [TEE.sub("", x) for x in lines_of("deepspeed", make_records())]
    start = next(i for i, x in enumerate(lines) if x.endswith("DeepSpeedEngine configuration:"))
    end = next(
        i for i, x in enumerate(lines) if "] [config.py:989:print_user_config]   json = {" in x
    )
    entries = {}
    for line in lines[start + 1 : end]:
        match = DEEPSPEED.match(line)
        if match is None:
            assert DS_CONTINUATION.match(line), line  # a JSON value's continuation
            continue
        assert re.fullmatch(r"config\.py:\d+:print", match["where"])
        entry = re.fullmatch(r"  (\w+) (\.*) ?(.+)", match["msg"])
        assert entry, match["msg"]
        name, dots, value = entry.groups()
        assert len(dots) == max(0, 29 - len(name)), name  # "  {name} {'.' * (29 - len)} {v}"
        entries[name] = value
    assert len(entries) >= 20 and list(entries) == sorted(entries)
    plan = run.plan
    assert entries["train_batch_size"] == str(plan.global_batch)
    assert entries["train_micro_batch_size_per_gpu"] == str(plan.micro_batch)
    assert entries["gradient_accumulation_steps"] == str(plan.grad_accum)
    assert entries["zero_optimization_stage"] == str(plan.zero_stage)
    assert entries["bfloat16_enabled"] == str(plan.precision == "bf16")
    assert entries["activation_checkpointing_config"] == "{"
    user = "\n".join(["{", *lines[end + 1 : end + 40]])
    assert json.loads(user[: user.index("\n}") + 2])["train_batch_size"] == plan.global_batch


def test_deepspeed_checkpoint_lines_in_the_engines_order() -> None:
    recs = make_records()
    phase = next(r for r in recs if isinstance(r, PhaseRecord) and r.name is PhaseName.CHECKPOINT)
    saved = next(r for r in recs if isinstance(r, CheckpointRecord))
    renderer = render.make_style("deepspeed")
    out: list[str] = []
    for record in recs:
        lines = renderer.lines(record)
        if record in (phase, saved):
            out += [TEE.sub("", x) for x in lines]
    messages = [m["msg"] for m in map(DEEPSPEED.match, out) if m]
    tag = f"global_step{saved.step}"
    order = [
        f"[Rank 0] [Torch] Checkpoint {tag} is about to be saved!",
        "[Rank 0] Saving model checkpoint: ",
        "[Torch] Saving ",
        "[Torch] Saved ",
        "[Torch] Saving ",
        "[Torch] Saved ",
        "zero checkpoint saved ",
        f"[Torch] Checkpoint {tag} is ready now!",
    ]
    assert len(messages) == len(order)
    assert all(m.startswith(o) for m, o in zip(messages, order, strict=True)), messages
    first, last = DEEPSPEED.match(out[0]), DEEPSPEED.match(out[-1])
    assert first and first["ts"] == deepspeed_ts(phase.time)  # stamped when the save begins
    assert last and last["ts"] == deepspeed_ts(saved.time)  # ... and when it is committed


# ---------------------------------------------------------------- HF Trainer


def _bars(lines: list[str]) -> list[re.Match[str]]:
    return [m for m in map(TQDM.match, lines) if m]


def test_hf_epoch_counts_samples_not_tokens() -> None:
    for dataset in ("TinyStories", "Conference-Wifi-Passwords"):
        run = make_run(dataset=dataset)
        plan = run.plan
        assert plan.samples_per_epoch > 0  # packed sequences, as len(train_dataset) counts them
        per_epoch = max(1, plan.samples_per_epoch // plan.global_batch)
        lines = lines_of("hf", [run, make_step(run, 120)])
        epoch = float(re.search(r"'epoch': ([\d.]+)\}", lines[-1])[1])  # type: ignore[index]
        assert epoch == round(120 / per_epoch, 2)
        examples = next(x for x in lines if x.startswith("  Num examples = "))
        assert examples == f"  Num examples = {plan.samples_per_epoch:,}"
        epochs = next(x for x in lines if x.startswith("  Num Epochs = "))
        assert epochs == f"  Num Epochs = {math.ceil(plan.total_steps / per_epoch):,}"


def test_hf_tqdm_elapsed_includes_eval_and_save_and_matches_train_runtime() -> None:
    run = make_run(steps=6)
    eval_s, save_s = 30.0, 12.0
    t5 = INIT_END + 5 * STEP_S
    recs: list[Record] = [run, *(make_step(run, n) for n in range(1, 6))]
    recs += [
        PhaseRecord(name=PhaseName.EVAL, step=5, time=t5, expected_s=eval_s),
        make_eval(run, 5, t5 + eval_s, eval_s),
        PhaseRecord(name=PhaseName.CHECKPOINT, step=5, time=t5 + eval_s, expected_s=save_s),
        make_checkpoint(run, 5, t5 + eval_s + save_s, save_s),
        make_step(run, 6, time=t5 + eval_s + save_s + STEP_S),
        make_checkpoint(run, 6, t5 + eval_s + 2 * save_s + STEP_S, save_s),
        make_summary(steps=6, time=t5 + 200),
    ]
    lines = lines_of("hf", recs)
    bars = _bars(lines)
    elapsed = [b["elapsed"] for b in bars]
    assert elapsed[:6] == [duration(n * STEP_S) for n in range(1, 6)] + [
        duration(6 * STEP_S + eval_s + save_s)
    ]  # the bar's clock kept running through the evaluation and the save
    runtime = float(re.search(r"'train_runtime': ([\d.]+)", "\n".join(lines))[1])  # type: ignore[index]
    assert runtime == pytest.approx(6 * STEP_S + eval_s + 2 * save_s, abs=1e-3)
    assert bars[-1]["pct"] == "100" and bars[-1]["elapsed"] == duration(runtime)
    assert lines[-1] == bars[-1].string and "'train_runtime'" in lines[-2]


def test_hf_elapsed_never_jitters_in_a_real_run(run16: list[Record]) -> None:
    steps = [r for r in run16 if isinstance(r, StepRecord)]
    bars = _bars(lines_of("hf", run16))[: len(steps)]
    start = steps[0].time - steps[0].step_time_s
    assert [b["elapsed"] for b in bars] == [duration(s.time - start) for s in steps]


# ---------------------------------------------------------------- dashboard, plurals, bench


def test_dashboard_eta_is_smoothed_and_counts_evals_and_saves() -> None:
    run = make_run(steps=300)
    state = DashboardState()
    state.update(run)
    t, ours, naive = INIT_END, [], []
    for n in range(1, 120):
        step_s = 4.0 if n % 2 else 6.0  # jittery steps: 4 s, 6 s, 4 s, ...
        t += step_s
        state.update(make_step(run, n, time=t, step_time_s=step_s))
        ours.append(state.eta_s())
        naive.append((300 - n) * step_s)
    jumps = [abs(b - a) for a, b in itertools.pairwise(ours[20:])]
    naive_jumps = [abs(b - a) for a, b in itertools.pairwise(naive[20:])]
    assert max(jumps) < 0.25 * min(naive_jumps)
    state.update(make_eval(run, 119, t + 30.0, 30.0))
    state.update(make_checkpoint(run, 119, t + 42.0, 12.0))
    plan = run.plan
    evals = sum(1 for s in range(120, 301) if s % plan.eval_interval == 0 or s == 300)
    saves = sum(1 for s in range(120, 301) if s % plan.checkpoint_interval == 0 or s == 300)
    steps_part = (300 - 119) * state.step_s
    assert state.eta_s() == pytest.approx(steps_part + 30.0 * evals + 12.0 * saves)


def test_dashboard_shows_the_launcher_from_the_run_record() -> None:
    state = DashboardState()
    state.update(make_run())
    assert state.log and all(line.startswith("node-000:") or line.startswith("GPU ")
                             or " | " in line for line in state.log)  # fmt: skip


def test_counts_agree_with_their_nouns() -> None:
    run = make_run(8)
    one = [
        run,
        dataclasses.replace(make_eval(run, 10, T0 + 100), eval_iters=1),
        dataclasses.replace(make_checkpoint(run, 10, T0 + 110), shards=1),
        make_summary(steps=1),
    ]
    text = "\n".join(lines_of("default", one))
    assert "(1 node x 8 H100-SXM)" in text and "1 iter in" in text and "(1 shard," in text
    assert "after 1 step," in text and "on 1 node " in text
    assert not re.search(r"\b1 (nodes|steps|iters|shards|layers)\b", text)


def test_bench_shows_nccl_tests_lines_only(capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(8)
    failure = dataclasses.replace(render_failure(run), rank=3, local_rank=3, node=0)
    recs: list[Record] = [run, ReadyRecord(time=T0, ready_s=0.1, world_size=8, attempt=0), failure,
                          make_summary(exit="failed")]  # fmt: skip
    lines = lines_of("default", recs, bench=True)
    assert lines[0] == "node-000: Test NCCL failure common.cu:392 'remote process exited or " \
        "there was a network error / '"  # fmt: skip
    assert all(re.fullmatch(r" \.\. node-000 pid \d+: Test failure \w+\.cu:\d+", x)
               for x in lines[1:]) and len(lines) > 1  # fmt: skip
    assert f"pid {run.pids[4]}:" in lines[1]  # the dead rank's ring successor reports
    show_records(RunConfig(ranks=8, bench=BenchSettings(iters=1)), recs)
    assert capsys.readouterr().out.splitlines() == lines


def render_failure(run: RunRecord) -> FailureRecord:
    return next(r for r in make_records(run.world_size) if isinstance(r, FailureRecord))


def test_jsonl_is_the_wire_form_with_nan_as_null() -> None:
    run = make_run(8)
    stream = io.StringIO()
    display = JsonlDisplay(stream)
    step = make_step(run, 3, loss=math.nan)
    display.show(step)
    line = stream.getvalue()
    assert line.endswith("\n") and ", " not in line and ": " not in line
    data = json.loads(line)
    wire = record_to_wire(step)
    assert data["type"] == "step" and data["loss"] is None and data["ppl"] is None
    assert {k: v for k, v in data.items() if k not in ("loss", "ppl")} == {
        k: v for k, v in wire.items() if k not in ("loss", "ppl")
    }


def test_deepspeed_after_a_restart_builds_its_engine_before_loading_the_checkpoint() -> None:
    """``deepspeed.initialize`` comes before ``engine.load_checkpoint`` in every attempt."""
    recs = make_records()
    restart = next(i for i, r in enumerate(recs) if isinstance(r, RunRecord) and r.attempt == 1)
    renderer = render.make_style("deepspeed")
    out: list[str] = []
    for index, record in enumerate(recs):
        lines = renderer.lines(record)
        if index >= restart:
            out += [TEE.sub("", x) for x in lines]
    messages = [m["msg"] for m in map(DEEPSPEED.match, out) if m]
    engine = next(i for i, m in enumerate(messages) if "DeepSpeed info: version=" in m)
    loading = next(i for i, m in enumerate(messages) if m.startswith("[Torch] Loading checkpoint"))
    assert engine < loading, messages[:12]
    assert sum("DeepSpeed info: version=" in m for m in messages) == 1  # not again at the step
