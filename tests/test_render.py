"""What rank 0 shows: real formats, every width from 80 columns, ASCII, no ANSI when piped.

Two kinds of input: typed records built from a real plan (a 64-rank Llama-3-8B run on
8 H100 nodes and variants with 8 and 256 ranks, NaN steps, hot, throttled and slow GPUs;
``render_fixtures``) that pin the formats down exactly, and records from a real run
(JSONL decoded by ``record_from_wire``) that go through the same renderers the terminal
uses; the live dashboard is driven through a real pseudo-terminal.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import time
from types import SimpleNamespace

import pexpect
import pytest
from conftest import cli, records, run_cli
from nccl_formats import nccl_kind
from render_fixtures import (
    make_failure,
    make_ranks,
    make_records,
    make_restart,
    make_run,
    make_step,
    make_summary,
    typed,
)

from llmcluster import render
from llmcluster.listing import listing_lines
from llmcluster.render.dashboard import DashboardState, dashboard_renderable
from llmcluster.wire.records import (
    FailureRecord,
    RanksRecord,
    Record,
    RunRecord,
    StepRecord,
    SummaryRecord,
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Megatron-LM training_log, from real-logs.md 2d (one physical line)
MEGATRON_ITERATION = re.compile(
    r"^\[default\d+\]:\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] iteration +(?P<it>\d+)/ +"
    r"(?P<total>\d+) \| consumed samples: +(?P<samples>\d+) \| elapsed time per iteration \(ms\): "
    r"(?P<ms>[\d.]+) \| throughput per GPU \(TFLOP/s/GPU\): (?P<tflops>[\d.]+) \| learning rate: "
    r"(?P<lr>\d\.\d{6}E[+-]\d\d) \| global batch size: +(?P<gbs>\d+) \| lm loss: "
    r"(?P<loss>\d\.\d{6}E[+-]\d\d) \| loss scale: (?P<scale>[\d.]+) \| (grad norm: "
    r"(?P<grad>[\d.]+) \| )?number of skipped iterations: +(?P<skipped>\d+) \| number of nan "
    r"iterations: +(?P<nan>\d+) \|$"
)
WIDTHS = (80, 120, 200)
GLOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d{3}000 \d+ torch/distributed/[\w/]+\.py:\d+\]")


def lines_of(style: str, recs: list[Record], *, width: int = 120, ascii_only: bool = False,
             bench: bool = False) -> list[str]:  # fmt: skip
    """Every line one renderer of ``style`` prints for ``recs``, in order."""
    renderer = render.make_style(style, width=width, ascii_only=ascii_only, bench=bench)
    return [line for record in recs for line in renderer.lines(record)]


def step_lines(style: str, run: RunRecord, step: StepRecord) -> list[str]:
    """What ``style`` prints for one step (after the run record)."""
    renderer = render.make_style(style)
    renderer.lines(run)
    return renderer.lines(step)


# ---------------------------------------------------------------- records built from a plan


def test_each_style_shows_the_steps_own_numbers() -> None:
    run = make_run()
    step, plan = make_step(run), run.plan
    mem = plan.memory
    allocated = mem.weights_gb + mem.grads_gb + mem.optimizer_gb
    peak = allocated + mem.activations_gb
    expected = {
        "default": ["step 120/300", "loss 3.4121", "ppl 30.33", "lr 2.850e-04",
                    "grad_norm 0.842", "step 4.87s", "mfu 43.1%"],
        "megatron": ["iteration      120/     300", "lm loss: 3.412130E+00",
                     "learning rate: 2.850000E-04", "grad norm: 0.842",
                     "elapsed time per iteration (ms): 4870.3",
                     f"global batch size: {plan.global_batch:5d}",
                     f"consumed samples: {120 * plan.global_batch:12d}"],
        "deepspeed": ["[Rank 0] step=120, skipped=0, lr=[0.000285], mom=[(0.9, 0.95)]",
                      f"epoch=0/micro_step={120 * plan.grad_accum}/global_step=120",
                      f"CurrSamplesPerSec={plan.global_batch / 4.8703!r}",
                      f"MemAllocated={allocated:.2f}GB", f"MaxMemAllocated={peak:.2f}GB",
                      "loss 3.4121"],
        "hf": ["{'loss': 3.4121, 'grad_norm': 0.84217, 'learning_rate': 0.000285, 'epoch': ",
               " 40%|", "| 120/300 [", "4.87s/it]"],
    }  # fmt: skip
    for name, fragments in expected.items():
        text = "\n".join(step_lines(name, run, step))
        for fragment in fragments:
            assert fragment in text, (name, fragment, text)
        assert render.STYLES[name].name == name and render.STYLES[name].example
    shown = re.search(r"tok/s ([\d.]+)([KMB])", "\n".join(step_lines("default", run, step)))
    assert shown, "the default style shows tokens per second"
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}[shown[2]]
    assert float(shown[1]) * scale == pytest.approx(step.tokens_per_s, rel=5e-3)


def test_nan_and_skipped_steps_print_nan_like_real_tools() -> None:
    run = make_run()
    for name in render.STYLES:
        text = "\n".join(step_lines(name, run, make_step(run, 11, loss=math.nan))).lower()
        assert "nan" in text, name
    skipped = step_lines("megatron", run, make_step(run, 10, skipped=True))[0]
    assert "grad norm" not in skipped and "number of skipped iterations:   1 |" in skipped
    nan = step_lines("megatron", run, make_step(run, 11, loss=math.nan))[0]
    assert "lm loss: NAN |" in nan and nan.endswith("number of nan iterations:   1 |")


def test_megatron_blocks_follow_the_reference() -> None:
    recs = make_records()
    run = recs[0]
    assert isinstance(run, RunRecord)
    line = step_lines("megatron", run, make_step(run, 120))[0]
    match = MEGATRON_ITERATION.match(line)
    assert match and line.startswith("[default7]:[")  # the last rank prints, tee'd by torchrun
    assert (int(match["it"]), int(match["total"]), int(match["gbs"])) == (
        120, 300, run.plan.global_batch)  # fmt: skip
    assert (float(match["lr"]), float(match["loss"]), float(match["grad"])) == (
        2.85e-4, 3.41213, 0.842)  # fmt: skip
    memory = step_lines("megatron", run, make_step(run, 10))
    mem = run.plan.memory
    allocated = 1024 * (mem.weights_gb + mem.grads_gb + mem.optimizer_gb)
    assert memory[-1] == (
        f"[default0]:[Rank 0] (after 10 iterations) memory (MB) | allocated: {allocated:.2f} | "
        f"max allocated: {allocated + 1024 * mem.activations_gb:.2f} | reserved: "
        f"{1024 * mem.total_gb:.2f} | max reserved: {1024 * mem.total_gb:.2f}"
    )
    assert not any("memory (MB)" in x for x in step_lines("megatron", run, make_step(run, 11)))
    lines = lines_of("megatron", recs)
    rule_at = next(i for i, x in enumerate(lines) if "validation loss at iteration 100" in x)
    rule, text, rule2 = lines[rule_at - 1 : rule_at + 2]
    assert text == "[default7]: validation loss at iteration 100 | lm loss value: " \
        "3.501200E+00 | lm loss PPL: 3.315000E+01 | "  # fmt: skip
    assert rule == rule2 == "[default7]:" + "-" * (len(text) - len("[default7]:") + 1)
    saving = next(x for x in lines if "saving checkpoint at iteration" in x)
    assert saving.endswith(f"] saving checkpoint at iteration     100 to "
                           f"{run.plan.checkpoint_dir} in torch_dist format")  # fmt: skip
    saved = next(x for x in lines if "successfully saved checkpoint" in x)
    assert "successfully saved checkpoint from iteration     100 to " in saved
    assert saved.endswith(f"[ t 1/{run.plan.tp}, p 1/{run.plan.pp} ]")


def test_launcher_lines_are_torchrun_glog() -> None:
    run = make_run()
    lines = render.launcher_lines(run)
    assert all(GLOG.match(line) for line in lines), [x for x in lines if not GLOG.match(x)]
    assert lines[1].endswith("] " + "*" * 41) and lines[3].endswith("] " + "*" * 41)
    assert lines[2].endswith("for optimal performance in your application as needed. ")
    text = "\n".join(lines)
    for fragment in ("Starting elastic_operator with launch configs:", "nproc_per_node   : 8",
                     "rdzv_endpoint    : 127.0.0.1:29500", "run_id           : 5f3a9c0e17b2",
                     "Rendezvous complete for workers. Result:", "master_port=29500",
                     "group_world_size=8", "global_world_sizes=[64, 64, 64, 64, 64, 64, 64, 64]",
                     "[default] Starting worker group"):  # fmt: skip
        assert fragment in text
    assert " 39990 " in lines[0] and lines[0].startswith("W")


def test_merged_nccl_init_is_rank_zeros_own_lines_in_nccls_format() -> None:
    run = make_run()
    lines = render.merged_init_lines(run, 0)
    versions = run.plan.versions
    assert lines[2] == f"NCCL version {versions['nccl']}+cuda{versions['cuda']}"
    kinds = [nccl_kind(line) for line in lines]
    assert None not in kinds, [
        line for line, kind in zip(lines, kinds, strict=True) if kind is None
    ]
    assert all(line.startswith("node-000:40000:") for line in lines if line != lines[2])
    major, minor = versions["cuda"].split(".")[:2]
    assert f"NCCL INFO cudaDriverVersion {int(major) * 1000 + int(minor) * 10}" in lines[1]
    rings = [found for kind, found in filter(None, kinds) if kind == "ring"]
    assert len(rings) == 24 and all(int(ring["total"]) == 24 for ring in rings)  # H100: 24
    for ring in rings:
        assert sorted(map(int, ring["members"].split())) == list(range(64))  # visits everyone
    assert "Trees [0] 1/8/16->0->-1" in "\n".join(lines)
    comm = [found for kind, found in filter(None, kinds) if kind == "init"]
    assert [found["state"] for found in comm] == ["START", "COMPLETE"]
    assert comm[0]["bus"] == "18000" and int(comm[0]["comm"], 16) % 16 == 0
    other = render.merged_init_lines(run, 13)
    assert not any("version" in line.split(" NCCL INFO ")[0] for line in other)
    assert other[0].startswith("node-001:40039:40039 [5] NCCL INFO")
    commids = {line.split("commId ")[1] for line in lines + other if "commId" in line}
    assert len(commids) == 2  # START and COMPLETE of one communicator both ranks share
    assert render.merged_init_lines(run, 0) == lines  # the plan, not the clock: one seed, one log


def test_rccl_prints_its_own_version_line() -> None:
    run = make_run()
    rocm = dataclasses.replace(
        run, plan=dataclasses.replace(run.plan, versions={**run.plan.versions,
                                                          "nccl": "2.20.5",
                                                          "cuda": "rocm-6.2.41133"}))  # fmt: skip
    line = render.merged_init_lines(rocm, 0)[2]
    assert line == "RCCL version 2.20.5+hip6.2" and nccl_kind(line) is not None


def test_gpu_detection_is_nvidia_smi_l_for_node_zero() -> None:
    run = make_run()
    lines = render.gpu_detect_lines(run)
    assert len(lines) == 8
    for index, line in enumerate(lines):  # nvidia-smi -L: "GPU 0: <name> (UUID: GPU-<uuid>)"
        assert re.fullmatch(rf"GPU {index}: {re.escape(run.gpu.smi_name)} \(UUID: GPU-"
                            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\)",
                            line)  # fmt: skip
    assert len({x.split("UUID: ")[1] for x in lines}) == 8


@pytest.mark.parametrize("world", [8, 64, 256])
@pytest.mark.parametrize("width", WIDTHS)
def test_grid_fits_and_has_one_row_per_node(world: int, width: int) -> None:
    run = make_run(world)
    for ascii_only in (False, True):
        lines = render.grid_lines(run, make_ranks(run), width=width, ascii_only=ascii_only)
        assert all(len(line) <= width for line in lines), max(map(len, lines))
        assert len(lines) == 1 + run.nnodes
        for node, line in enumerate(lines[1:]):
            assert line.startswith(f"node-{node:03d} ")
        if world == 256:  # compressed: min/mean/max per node
            assert all(re.search(r"util +\d+/ *\d+/ *\d+%", x) for x in lines[1:])
        else:
            assert all(len(re.findall(r"\d+%|\d+/\d+", x)) == 8 for x in lines[1:])


def test_grid_marks_straggler_throttled_and_hot() -> None:
    run = make_run(16)
    lines = render.grid_lines(run, make_ranks(run, slow=5, throttled=9, hot=14), width=200,
                              ascii_only=True)  # fmt: skip
    cells = [re.findall(r"\d+% \d+C [\d.]+G +\d+W([*!^]?)", line) for line in lines[1:]]
    assert cells[0][5] == "*" and cells[1][1] == "!" and cells[1][6] == "^"
    assert len(cells[0]) == len(cells[1]) == 8 and (cells[0] + cells[1]).count("") == 13


def test_ascii_mode_is_ascii_everywhere() -> None:
    recs = make_records(64)
    for style in render.STYLES:
        for line in lines_of(style, recs, width=80, ascii_only=True):
            assert line.isascii(), (style, line)
    run = recs[0]
    assert isinstance(run, RunRecord)
    assert all(x.isascii() for x in render.summary_lines(run, make_summary(), width=80,
                                                         ascii_only=True))  # fmt: skip
    big = make_run(256)
    assert all(x.isascii() for x in render.grid_lines(big, make_ranks(big), width=80,
                                                      ascii_only=True))  # fmt: skip


def time_of(t: float) -> str:
    return time.strftime("%Y-%m-%d_%H:%M:%S", time.localtime(t))


def test_failure_box_names_the_root_cause() -> None:
    run = make_run()
    failure = dataclasses.replace(make_failure(run), attempt=3)  # no restart left
    lines = render.failure_lines(run, failure)
    text = "\n".join(lines)
    assert "Watchdog" not in text  # a killed rank: the agent tears the group down first
    assert text.count("closing signal SIGTERM") == 7 and f"Sending process {failure.pid} " \
        not in text  # fmt: skip
    box = lines[
        lines.index("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ") :
    ]
    assert box[1] == "=" * 60 and box[3] == "-" * 60
    root = box.index("Root Cause (first observed failure):")
    assert box[root + 1 : root + 8] == [
        "[0]:",
        f"  time      : {time_of(failure.time)}",
        "  host      : node-001",
        "  rank      : 11 (local_rank: 3)",
        f"  exitcode  : -9 (pid: {failure.pid})",
        "  error_file: <N/A>",
        f"  traceback : Signal 9 (SIGKILL) received by PID {failure.pid}",
    ]
    assert f"failed (exitcode: -9) local_rank: 3 (pid: {failure.pid})" in text
    assert lines[-1] == "llmcluster: rank 11 exited"  # the default style explains
    tee = render.failure_lines(run, failure, tee=True, explain=False)
    assert tee[-1] == "=" * 60


def test_a_hang_fires_the_peers_watchdogs_each_at_its_own_time() -> None:
    run = make_run()
    hang = dataclasses.replace(make_failure(run), reason="rank 11 stopped answering for 3.1s")
    lines = render.failure_lines(run, hang, tee=True, explain=False)
    watchdog = re.compile(
        r"^\[default(\d)\]:\[rank(\d+)\]:\[E(\d{4}) (\d\d:\d\d:\d\d\.\d{9}) "
        r"ProcessGroupNCCL\.cpp:629\] \[Rank \2\] Watchdog caught collective operation timeout: "
        r"WorkNCCL\(SeqNum=812, OpType=ALLREDUCE, NumelIn=5, NumelOut=5, Timeout\(ms\)=600000\) "
        r"ran for (\d+) milliseconds before timing out\.$"
    )  # a real line: real-logs.md 2c
    fired = [m for m in map(watchdog.match, lines) if m]
    assert [int(m[2]) for m in fired] == [10, 12]
    assert fired[0][4] != fired[1][4]  # each rank's own stamp
    assert all(int(m[5]) > 600000 for m in fired)
    assert "ChildFailedError" not in "\n".join(lines)  # restarts are left


def test_a_failure_with_restarts_left_is_followed_by_torchruns_restart_sequence() -> None:
    run = make_run()
    failure = make_failure(run, rank=3)
    failure_text = render.failure_lines(run, failure, explain=False)
    assert len(failure_text) == 1 and "failed (exitcode: -9) local_rank: 3" in failure_text[0]
    restart = render.restart_lines(run, make_restart(), failed_rank=3, explain=False)
    messages = [line.split("] ", 1)[1] for line in restart]
    assert messages[0] == "[default] Worker group FAILED. 3/3 attempts left; will restart " \
        "worker group"  # fmt: skip
    assert messages[1] == "[default] Stopping worker group"
    stopped = [m for m in messages if m.endswith("closing signal SIGTERM")]
    assert len(stopped) == 7 and not any(str(run.pids[3]) in m for m in stopped)
    rendezvous = messages.index("[default] Rendezvous'ing worker group")
    assert "attempts to join the next round of the rendezvous" in messages[rendezvous + 1]
    assert "has joined round 1 of the rendezvous" in messages[rendezvous + 2]
    assert "restart_count=1" in messages[rendezvous + 4]
    assert messages[-1] == "[default] Starting worker group"


def test_restart_lines_count_attempts_like_torchelastic() -> None:
    lines = render.restart_lines(make_run(), make_restart())
    assert lines[0].endswith("] [default] Worker group FAILED. 3/3 attempts left; will restart "
                             "worker group")  # fmt: skip
    assert any(x.endswith("restart_count=1") for x in lines)
    assert lines[-1].startswith("llmcluster: resuming from the checkpoint at step 100; ")
    assert "29 steps to replay" in lines[-1]
    one = render.restart_lines(make_run(), make_restart(replayed_steps=1))
    assert "1 step to replay" in one[-1]
    assert all(GLOG.match(x) for x in render.restart_lines(make_run(), make_restart(),
                                                           explain=False))  # fmt: skip


@pytest.mark.parametrize("width", WIDTHS)
def test_summary_fits_and_shows_the_records_figures(width: int) -> None:
    run = make_run()
    lines = render.summary_lines(run, make_summary(), width=width, ascii_only=False)
    assert all(len(x) <= width for x in lines)
    text = "\n".join(lines)
    for fragment in ("Llama-3-8B", "64 x H100-SXM on 8 nodes", "2.7183 / 15.15", "1:06:40",
                     "0:02:31", "1.26B", "42.8%", "completed"):  # fmt: skip
        assert fragment in text, fragment
    single = render.summary_lines(make_run(8), make_summary(), width=width, ascii_only=False)
    assert "8 x H100-SXM on 1 node " in "\n".join(single)
    nan = render.summary_lines(None, make_summary(final_loss=math.nan, final_ppl=math.nan),
                               width=80, ascii_only=True)  # fmt: skip
    assert "nan / nan" in "\n".join(nan)


def test_bench_table_rows_parse_and_busbw_follows_algbw() -> None:
    n, rows = 8, []

    def figures(seconds: float, size: int) -> dict:
        algbw = size / seconds / 1e9
        return {"time_us": seconds * 1e6, "algbw_gbs": algbw,
                "busbw_gbs": algbw * 2 * (n - 1) / n, "wrong": 0}  # fmt: skip

    for size in (8, 8 << 10, 8 << 20, 8 << 30):
        seconds = 30e-6 + size / 100e9
        rows.append({"size": size, "count": size // 4, "type": "float", "redop": "sum",
                     **figures(seconds, size),
                     "in_place": figures(seconds * 0.9, size)})  # fmt: skip
    lines = render.bench_table_lines(rows, world_size=n, algorithm="ring", iters=7, warmup=2)
    assert lines[0].startswith("# nThread 1 nGpus 1 minBytes 8 maxBytes 8589934592 step: 1024(")
    assert "warmup iters: 2 iters: 7 " in lines[0]
    assert "#       size         count      type   redop    root     time   algbw   busbw #wrong" \
        "     time   algbw   busbw #wrong" in lines  # fmt: skip
    body = [x for x in lines if not x.startswith("#")]
    assert len(body) == 4
    for line, row in zip(body, rows, strict=True):
        cols = line.split()
        assert cols[:5] == [str(row["size"]), str(row["count"]), "float", "sum", "-1"]
        assert float(cols[7]) == pytest.approx(float(cols[6]) * 2 * (n - 1) / n, abs=0.011)
        assert float(cols[9]) == pytest.approx(row["in_place"]["time_us"], rel=1e-3)
        assert float(cols[11]) == pytest.approx(float(cols[10]) * 2 * (n - 1) / n, abs=0.011)
    assert body[-1][:12] == "  8589934592"
    assert "# Out of bounds values : 0 OK" in lines
    mean = sum(r["busbw_gbs"] + r["in_place"]["busbw_gbs"] for r in rows) / 8
    assert f"# Avg bus bandwidth    : {mean:g} " in lines


@pytest.mark.parametrize("width", WIDTHS)
def test_dashboard_fits_every_width(width: int) -> None:
    from rich.console import Console

    for world, ascii_only in ((8, False), (64, True), (256, False)):
        recs = make_records(world)
        run = recs[0]
        assert isinstance(run, RunRecord)
        state = DashboardState(style="megatron")
        for record in recs[:-1]:
            state.update(record)
        state.update(make_ranks(run, 300))
        console = Console(width=width, color_system=None, file=io.StringIO())
        console.print(dashboard_renderable(state, width=width, ascii_only=ascii_only))
        text = console.file.getvalue()
        assert all(len(line) <= width for line in text.splitlines())
        assert re.search(r"steps +300/300", text) and "measured wall 3.21 ms (real ZeroMQ)" in text
        assert "model 212.4 ms busbw 372 GB/s" in text
        assert text.isascii() == ascii_only or not ascii_only
        assert sum(line.startswith("node-") for line in text.splitlines()) == run.nnodes
        assert re.search(rf"on {run.nnodes} node{'s' if run.nnodes > 1 else ''}\b", text)


def test_listing_has_every_section() -> None:
    model = SimpleNamespace(
        name="Llama-3-8B",
        params=8_030_261_248,
        layers=32,
        hidden=4096,
        vocab=128256,
        moe_experts=0,
        moe_active=0,
        humorous=False,
    )
    joke = SimpleNamespace(**{**vars(model), "name": "Clippy-2-70B", "humorous": True})
    gpu = SimpleNamespace(
        name="H100",
        memory_gb=80.0,
        bf16_tflops=989.0,
        bf16_supported=True,
        tdp_w=700.0,
        intra_node_link="NVLink4",
        aliases=("h100-sxm",),
    )
    data = SimpleNamespace(name="FineWeb-Edu", tokens=1.3e12, humorous=False)
    catalog = SimpleNamespace(models=(model, joke), gpus=(gpu,), datasets=(data,))
    lines = listing_lines(catalog)
    sections = [x for x in lines if not x.startswith(" ")]
    assert sections == ["Models:", "GPUs:", "Datasets:", "Styles:"]
    assert re.search(r"Llama-3-8B +8\.03B params +32 layers +hidden +4096 +vocab 128256$", lines[1])
    assert lines[2].endswith("[joke]") and "989 BF16 TFLOPs" in lines[4] and "700 W" in lines[4]
    assert "1.30T tokens" in lines[6]
    assert all(any(x.startswith(f"  {name} ") for x in lines) for name in render.STYLES)


# ---------------------------------------------------------------- records from a real run


@pytest.fixture(scope="module")
def run64() -> list[Record]:
    done = run_cli("--ranks", "64", "--steps", "25", "--seed", "1", "--format", "jsonl",
                   "--speed", "1000000", timeout=100)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return typed(records(done.stdout))


def test_megatron_lines_parse_with_the_real_format(run64: list[Record]) -> None:
    lines = lines_of("megatron", run64, width=200)
    steps = [r for r in run64 if isinstance(r, StepRecord)]
    parsed = [m for m in map(MEGATRON_ITERATION.match, lines) if m]
    assert len(parsed) == len(steps) == 25
    run = run64[0]
    assert isinstance(run, RunRecord)
    for match, step in zip(parsed, steps, strict=True):
        assert int(match["it"]) == step.step and int(match["total"]) == 25
        assert float(match["lr"]) == pytest.approx(step.lr, rel=1e-6)
        assert float(match["loss"]) == pytest.approx(step.loss, rel=1e-6)
        assert int(match["gbs"]) == run.plan.global_batch
        assert int(match["samples"]) == step.step * run.plan.global_batch
        assert float(match["ms"]) == pytest.approx(1000 * step.step_time_s, abs=0.06)
        if match["grad"]:
            assert float(match["grad"]) == pytest.approx(step.grad_norm, abs=6e-4)
    validation = [line for line in lines if "validation loss at iteration" in line]
    assert validation and all("lm loss PPL:" in line for line in validation)
    assert any("(after 10 iterations) memory (MB)" in line for line in lines)


@pytest.mark.parametrize("style", list(render.STYLES))
def test_every_style_shows_each_steps_numbers(run64: list[Record], style: str) -> None:
    run = run64[0]
    assert isinstance(run, RunRecord)
    for step in (r for r in run64 if isinstance(r, StepRecord)):
        text = "\n".join(step_lines(style, run, step))
        assert str(step.step) in text
        shown = (f"{step.loss:.4f}", f"{step.loss:.6E}", f"'loss': {round(step.loss, 4)!r}")
        assert any(form in text for form in shown)


@pytest.mark.parametrize("width", WIDTHS)
def test_grid_and_summary_fit_the_width(run64: list[Record], width: int) -> None:
    run = run64[0]
    assert isinstance(run, RunRecord)
    ranks = next(r for r in run64 if isinstance(r, RanksRecord))
    grid = render.grid_lines(run, ranks, width=width, ascii_only=False)
    assert len(grid) == 1 + run.nnodes  # title + one row per node
    assert all(len(line) <= width for line in grid)
    for node, row in enumerate(grid[1:]):
        assert row.startswith(run.hosts[node][-len(row.split()[0]) :])
    summary = run64[-1]
    assert isinstance(summary, SummaryRecord)
    lines = render.summary_lines(run, summary, width=width, ascii_only=False)
    assert all(len(line) <= width for line in lines)
    assert any("Final loss" in line for line in lines)


def test_256_ranks_grid_is_compressed_per_node(run64: list[Record]) -> None:
    run = run64[0]
    assert isinstance(run, RunRecord)
    ranks = next(r for r in run64 if isinstance(r, RanksRecord))
    wide = tuple(
        dataclasses.replace(gpu, rank=gpu.rank + 64 * copy, node=gpu.node + 8 * copy)
        for copy in range(4)
        for gpu in ranks.ranks
    )
    big = dataclasses.replace(run, world_size=256, nnodes=32,
                              hosts=tuple(f"node{n:03d}" for n in range(32)))  # fmt: skip
    lines = render.grid_lines(big, dataclasses.replace(ranks, ranks=wide), width=80,
                              ascii_only=True)  # fmt: skip
    assert len(lines) == 33 and all(len(line) <= 80 for line in lines)
    assert all("util" in line for line in lines[1:])


def test_ascii_mode_is_pure_ascii(run64: list[Record]) -> None:
    for line in lines_of("hf", run64, width=80, ascii_only=True):
        assert line.isascii(), line


def test_failure_box_matches_torchelastic() -> None:
    done = run_cli("--ranks", "8", "--steps", "20", "--format", "jsonl", "--speed", "1000000",
                   "--max-restarts", "0", "--inject", "kill:rank=3,step=6")  # fmt: skip
    assert done.returncode == 1
    recs = typed(records(done.stdout))
    run = recs[0]
    failure = next(r for r in recs if isinstance(r, FailureRecord))
    assert isinstance(run, RunRecord)
    text = "\n".join(render.failure_lines(run, failure))
    assert failure.attempt == failure.max_restarts == 0 and "Watchdog" not in text
    assert "ChildFailedError" in text and "Root Cause (first observed failure):" in text
    assert "rank      : 3 (local_rank: 3)" in text
    assert f"exitcode  : -9 (pid: {failure.pid})" in text
    assert f"Signal 9 (SIGKILL) received by PID {failure.pid}" in text
    assert text.count("closing signal SIGTERM") == 7


def test_bench_table_busbw_is_algbw_times_the_factor() -> None:
    done = run_cli("bench", "--ranks", "4", "--max-bytes", "65536", "--iters", "3")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line and not line.startswith("#")]
    assert rows and rows[0][:5] == ["8", "2", "float", "sum", "-1"]
    for row in rows:
        for algbw, busbw, wrong in (row[6:9], row[10:13]):  # out-of-place, in-place
            assert float(busbw) == pytest.approx(float(algbw) * 2 * 3 / 4, abs=0.011)
            assert wrong == "0"  # no wrong elements
    assert "# Out of bounds values : 0 OK" in done.stdout


def test_piped_log_has_no_ansi_codes() -> None:
    done = run_cli("--ranks", "8", "--steps", "12", "--speed", "1000000")
    assert done.returncode == 0, done.stderr
    assert not ANSI.search(done.stdout)
    assert "NCCL INFO" in done.stdout and "Init COMPLETE" in done.stdout
    assert "Training summary" in done.stdout


@pytest.mark.parametrize("columns", [80, 200])
def test_live_dashboard_in_a_real_terminal(columns: int, clean_table: None) -> None:
    argv = cli("--ranks", "64", "--steps", "15", "--speed", "1000000", "--seed", "4")
    child = pexpect.spawn(argv[0], argv[1:], dimensions=(60, columns), encoding="utf-8",
                          timeout=90)  # fmt: skip
    try:
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    screen = ANSI.sub("", child.before)
    assert child.exitstatus == 0
    assert re.search(r"steps +15/15", screen) and "Training summary" in screen
    assert "allreduce" in screen and "measured wall" in screen
    assert "\x1b[?25h" in child.before  # the cursor is shown again at the end
    for line in screen.splitlines():
        assert len(line.rstrip()) <= columns, line


def test_record_writes_an_svg(tmp_path: pytest.TempPathFactory) -> None:
    target = tmp_path / "run.svg"  # type: ignore[operator]
    done = run_cli("--ranks", "4", "--steps", "5", "--speed", "1000000", "--record", str(target))
    assert done.returncode == 0, done.stderr
    svg = target.read_text()
    assert svg.startswith("<svg") and "Training summary" in svg.replace("&#160;", " ")
