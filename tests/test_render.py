"""What rank 0 shows: real formats, every width from 80 columns, ASCII, no ANSI when piped.

Two kinds of input: hand-built records (a 64-rank Llama-3-8B run on 8 H100 nodes and
variants with 8 and 256 ranks, NaN steps, hot, throttled and slow GPUs) that pin the
formats down exactly, and records from a real run (JSONL) that go through the same pure
renderers the terminal uses; the live dashboard is driven through a real pseudo-terminal.
"""

from __future__ import annotations

import copy
import io
import math
import re
from types import SimpleNamespace
from typing import Any

import pexpect
import pytest
from conftest import cli, records, run_cli

from llmcluster import render
from llmcluster.config import RunConfig
from llmcluster.listing import listing_lines
from llmcluster.render.dashboard import DashboardState, dashboard_renderable
from llmcluster.render.sinks import record_lines

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
STYLE_NAMES = ("default", "megatron", "deepspeed", "hf")
T0 = 1_795_000_000.25  # a simulated launch time (unix seconds)
GLOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d{3}000 \d+ torch/distributed/[\w/]+\.py:\d+\]")
NCCL = re.compile(r"^node-\d{3}:\d+:\d+ \[\d\] NCCL INFO ")
CHANNEL = re.compile(r"NCCL INFO Channel (\d\d)/24 : ((?: {1,3}\d{1,4})+)$")


# ---------------------------------------------------------------- hand-built records


def make_run(world: int = 64, nproc: int = 8) -> dict[str, Any]:
    """A run record as the coordinator publishes it (Llama-3-8B on H100 nodes)."""
    nnodes = -(-world // nproc)
    return {
        "type": "run", "run_id": "5f3a9c0e17b2", "version": "0.1.0", "world_size": world,
        "nnodes": nnodes, "nproc_per_node": nproc, "seed": 7, "algorithm": "ring",
        "speed": 100.0, "master_addr": "10.0.0.2", "master_port": 29500,
        "hosts": [f"node-{n:03d}" for n in range(nnodes)],
        "pids": [40000 + 3 * r for r in range(world)], "env": [], "agent_pid": 39990,
        "start_time": T0, "attempt": 0, "max_restarts": 3,
        "model": {
            "name": "Llama-3-8B", "family": "llama", "hf_id": "meta-llama/Meta-Llama-3-8B",
            "params": 8_030_261_248, "active_params": 8_030_261_248, "layers": 32,
            "hidden": 4096, "ffn": 14336, "heads": 32, "kv_heads": 8, "vocab": 128256,
            "context": 8192, "tokenizer": "tiktoken (128K)", "humorous": False,
        },
        "gpu": {
            "name": "H100-SXM-80GB", "smi_name": "NVIDIA H100 80GB HBM3", "vendor": "NVIDIA",
            "arch": "Hopper", "memory_gb": 80.0, "memory_mib": 81559, "mem_bw_gbs": 3350.0,
            "bf16_tflops": 989.0, "tdp_w": 700.0, "idle_w": 70.0, "nvlink_gbs": 450.0,
            "intra_node_link": "NVLink4", "nic_gbs": 50.0, "nic_name": "ConnectX-7 NDR",
            "slowdown_c": 87.0, "shutdown_c": 92.0, "max_clock_mhz": 1980, "cuda_cc": "9.0",
        },
        "dataset": {"name": "FineWeb-Edu", "hf_id": "HuggingFaceFW/fineweb-edu",
                    "tokens": 1_300_000_000_000, "documents": 1_350_000_000, "humorous": False},
        "plan": {
            "total_steps": 300, "seq_len": 8192, "micro_batch": 1, "grad_accum": 8,
            "global_batch": 512, "tokens_per_step": 4_194_304, "dp": world // 8, "tp": 8,
            "pp": 1, "strategy": "ZeRO-1", "zero_stage": 1, "recompute": "selective",
            "precision": "bf16", "peak_lr": 3e-4, "min_lr": 3e-5, "warmup_steps": 30,
            "schedule": "cosine", "weight_decay": 0.1, "grad_clip": 1.0, "adam_beta1": 0.9,
            "adam_beta2": 0.95, "adam_eps": 1e-8, "eval_interval": 100, "eval_iters": 10,
            "checkpoint_interval": 100, "checkpoint_dir": "/checkpoints/llama-3-8b",
            "export_dir": "/exports/llama-3-8b", "total_tokens": 1_258_291_200,
            "flops_per_token": 5.3e10, "step_time_model_s": 4.87, "init_s": 42.5,
            "memory": {"weights_gb": 2.0, "grads_gb": 2.0, "optimizer_gb": 1.5,
                       "activations_gb": 30.25, "overhead_gb": 4.0, "total_gb": 39.75},
            "grad_bucket_bytes": 0,
            "versions": {"torch": "2.5.1+cu124", "nccl": "2.21.5", "cuda": "12.4",
                         "driver": "550.127.08", "python": "3.11.10"},
        },
    }  # fmt: skip


def make_step(n: int = 120, **changes: Any) -> dict[str, Any]:
    """A step record; ``changes`` override fields (e.g. ``loss=math.nan``)."""
    step = {
        "type": "step", "step": n, "total_steps": 300, "time": T0 + 60 + 4.87 * n,
        "loss": 3.41213, "ppl": 30.3271, "lr": 2.85e-4, "grad_norm": 0.84217,
        "loss_scale": 1.0, "skipped": False, "tokens": 4_194_304,
        "tokens_total": 4_194_304 * n, "step_time_s": 4.8703, "tokens_per_s": 1_231_000.0,
        "samples_per_s": 105.125, "tflops_per_gpu": 426.31, "mfu": 0.4311, "events": [],
        "collective": {"op": "allreduce", "algorithm": "ring", "bytes": 16_060_522_496,
                       "model_ms": 212.4, "busbw_gbs": 371.9, "wall_ms": 3.21},
    }  # fmt: skip
    return {**step, **changes}


def make_ranks(run: dict[str, Any], n: int = 120, *, slow: int = 5, throttled: int = -1,
               hot: int = -1) -> dict[str, Any]:  # fmt: skip
    """A ranks record: every GPU healthy except the ones named."""
    nproc = run["nproc_per_node"]
    ranks = []
    for r in range(run["world_size"]):
        node, local = divmod(r, nproc)
        ranks.append({
            "rank": r, "local_rank": local, "node": node, "host": run["hosts"][node],
            "loss": 3.41213, "local_loss": 3.4 + r / 1000, "util": 97.0 + r % 3,
            "temp_c": 88.0 if r == hot else 61.0 + r % 7, "mem_used_gb": 61.5,
            "mem_total_gb": 80.0, "power_w": 640.0 + r % 50, "sm_clock_mhz": 1980,
            "throttled": r == throttled, "arrive_ms": 1.0, "wait_ms": 2.0,
            "compute_ms": 5000.0 if r == slow else 4800.0 + r % 11,
        })  # fmt: skip
    return {"type": "ranks", "step": n, "ranks": ranks}


def make_summary(**changes: Any) -> dict[str, Any]:
    summary = {
        "type": "summary", "time": T0 + 1600, "steps": 300, "final_loss": 2.71828,
        "final_ppl": 15.1543, "tokens_total": 1_258_291_200, "sim_seconds": 4000.5,
        "wall_seconds": 151.25, "checkpoints": 3, "restarts": 1, "lost_s": 312.0,
        "mfu": 0.4277, "dropped_messages": 0, "exit": "completed",
    }  # fmt: skip
    return {**summary, **changes}


def make_failure() -> dict[str, Any]:
    return {
        "type": "failure", "rank": 11, "local_rank": 3, "node": 1, "host": "node-001",
        "pid": 40033, "exitcode": -9, "signal": "SIGKILL", "reason": "rank 11 exited",
        "seq": 812, "op": "ALLREDUCE", "numel": 3, "timeout_ms": 600000, "step": 130,
        "attempt": 0, "max_restarts": 3, "time": T0 + 700.5,
    }  # fmt: skip


def make_records(world: int = 64) -> list[dict[str, Any]]:
    """One record of every kind, in the order a run with a restart emits them."""
    run = make_run(world)
    return [
        run,
        {"type": "phase", "name": "init", "step": 0, "time": T0 + 10, "expected_s": 42.5},
        make_step(1, lr=1e-5, loss=11.76),
        make_ranks(run, 1),
        make_step(10, skipped=True, grad_norm=math.nan),
        make_step(11, loss=math.nan, ppl=math.nan),
        make_step(100),
        {"type": "phase", "name": "eval", "step": 100, "time": T0 + 560, "expected_s": 30.0},
        {"type": "eval", "step": 100, "time": T0 + 590, "val_loss": 3.5012, "val_ppl": 33.15,
         "eval_iters": 10, "eval_s": 30.0, "accuracy": None},
        {"type": "phase", "name": "checkpoint", "step": 100, "time": T0 + 590,
         "expected_s": 12.0},
        {"type": "checkpoint", "step": 100, "time": T0 + 602, "path": "/checkpoints/x/iter_100",
         "shards": world, "bytes_total": 96_000_000_000, "bytes_per_rank": 1_500_000_000,
         "save_s": 12.0, "bandwidth_gbs": 8.0},
        make_failure(),
        {"type": "restart", "time": T0 + 790, "attempt": 1, "max_restarts": 3,
         "restarts_left": 2, "resume_step": 101, "replayed_steps": 29, "lost_s": 180.0,
         "reason": "rank 11 exited"},
        {"type": "log", "level": "WARNING", "time": T0 + 800, "text": "slow rank 5"},
        make_step(300),
        {"type": "export", "time": T0 + 1590, "path": "/exports/llama-3-8b",
         "format": "safetensors", "files": [{"name": "model-00001-of-00002.safetensors",
         "bytes": 9_950_000_000}, {"name": "model-00002-of-00002.safetensors",
         "bytes": 6_110_000_000}], "bytes_total": 16_060_000_000, "export_s": 20.0},
        make_summary(),
    ]  # fmt: skip


def test_each_style_shows_the_steps_own_numbers() -> None:
    run, step = make_run(), make_step()
    expected = {
        "default": ["step 120/300", "loss 3.4121", "ppl 30.33", "lr 2.850e-04",
                    "grad_norm 0.842", "tok/s 1.23M", "step 4.87s", "mfu 43.1%"],
        "megatron": ["iteration      120/     300", "lm loss: 3.412130E+00",
                     "learning rate: 2.850000E-04", "grad norm: 0.842",
                     "elapsed time per iteration (ms): 4870.3", "global batch size:   512",
                     "consumed samples:        61440"],
        "deepspeed": ["[Rank 0] step=120, skipped=0, lr=[0.000285], mom=[(0.9, 0.95)]",
                      "epoch=0/micro_step=960/global_step=120",
                      "CurrSamplesPerSec=105.125", "MemAllocated=5.50GB",
                      "MaxMemAllocated=35.75GB", "loss 3.4121"],
        "hf": ["{'loss': 3.4121, 'grad_norm': 0.84217, 'learning_rate': 0.000285, 'epoch': ",
               " 40%|", "| 120/300 [", "4.87s/it]"],
    }  # fmt: skip
    for name, fragments in expected.items():
        text = "\n".join(render.STYLES[name].step_line(run, step))
        for fragment in fragments:
            assert fragment in text, (name, fragment, text)
        assert render.STYLES[name].name == name and render.STYLES[name].example


def test_nan_and_skipped_steps_print_nan_like_real_tools() -> None:
    run = make_run()
    for name in STYLE_NAMES:
        style = render.STYLES[name]
        for missing in (math.nan, None):  # NaN, or null after a JSON round trip
            text = "\n".join(style.step_line(run, make_step(11, loss=missing))).lower()
            assert "nan" in text
    skipped = render.STYLES["megatron"].step_line(run, make_step(10, skipped=True))[0]
    assert "grad norm" not in skipped and "number of skipped iterations:   1 |" in skipped
    nan = render.STYLES["megatron"].step_line(run, make_step(11, loss=math.nan))[0]
    assert (
        "lm loss: NAN |" in nan
    )  # Python's {:.6E} and nan.endswith("number of nan iterations:   1 |")


def test_megatron_blocks_follow_the_reference() -> None:
    run, recs = make_run(), make_records()
    style = render.STYLES["megatron"]
    line = style.step_line(run, make_step(120))[0]
    match = MEGATRON_ITERATION.match(line)
    assert match and line.startswith("[default7]:[")  # the last rank prints, tee'd by torchrun
    assert (int(match["it"]), int(match["total"]), int(match["gbs"])) == (120, 300, 512)
    assert (float(match["lr"]), float(match["loss"]), float(match["grad"])) == (
        2.85e-4, 3.41213, 0.842)  # fmt: skip
    memory = style.step_line(run, make_step(10))
    assert memory[-1] == (
        "[default0]:[Rank 0] (after 10 iterations) memory (MB) | allocated: 5632.00 | "
        "max allocated: 36608.00 | reserved: 40704.00 | max reserved: 40704.00"
    )
    assert not any("memory (MB)" in x for x in style.step_line(run, make_step(11)))
    rule, text, rule2 = style.eval_lines(run, recs[8])
    assert text == "[default7]: validation loss at iteration 100 | lm loss value: " \
        "3.501200E+00 | lm loss PPL: 3.315000E+01 | "  # fmt: skip
    assert rule == rule2 == "[default7]:" + "-" * (len(text) - len("[default7]:") + 1)
    saving = style.phase_lines(run, recs[9])[0]
    assert saving.endswith("] saving checkpoint at iteration     100 to /checkpoints/llama-3-8b "
                           "in torch_dist format")  # fmt: skip
    saved = style.checkpoint_lines(run, recs[10])[0]
    assert "successfully saved checkpoint from iteration     100 to " in saved
    assert saved.endswith("[ t 1/8, p 1/1 ]")


def test_launcher_lines_are_torchrun_glog() -> None:
    run = make_run()
    lines = render.launcher_lines(run)
    assert all(GLOG.match(line) for line in lines), [x for x in lines if not GLOG.match(x)]
    assert lines[1].endswith("] " + "*" * 41) and lines[3].endswith("] " + "*" * 41)
    assert lines[2].endswith("for optimal performance in your application as needed. ")
    text = "\n".join(lines)
    for fragment in ("Starting elastic_operator with launch configs:", "nproc_per_node   : 8",
                     "rdzv_endpoint    : 10.0.0.2:29500", "run_id           : 5f3a9c0e17b2",
                     "Rendezvous complete for workers. Result:", "master_port=29500",
                     "group_world_size=8", "global_world_sizes=[64, 64, 64, 64, 64, 64, 64, 64]",
                     "[default] Starting worker group"):  # fmt: skip
        assert fragment in text
    assert " 39990 " in lines[0] and lines[0].startswith("W")


def test_nccl_init_lines_match_nccl_2_21() -> None:
    run = make_run()
    lines = render.nccl_init_lines(run, 0)
    assert 15 <= len(lines) <= 40
    assert lines.count("NCCL version 2.21.5+cuda12.4") == 1
    assert all(NCCL.match(x) for x in lines if not x.startswith("NCCL version"))
    assert lines[0].startswith("node-000:40000:40000 [0] NCCL INFO Bootstrap : Using eth0:")
    assert "NCCL INFO cudaDriverVersion 12040" in lines[1]
    assert any("comm 0x" in x and "rank 0 nRanks 64 nNodes 8 localRanks 8 localRank 0 MNNVL 0"
               in x for x in lines)  # fmt: skip
    channels = [m for m in map(CHANNEL.search, lines) if m]
    assert channels and " :    0   1   2" in lines[lines.index(channels[0].string)]
    for match in channels:
        assert sorted(map(int, match[2].split())) == list(range(64))  # a ring visits everyone
    assert "Trees [0] 1/8/16->0->-1" in "\n".join(lines)
    assert lines[-1].endswith("busId 18000 commId " + lines[-1].split("commId ")[1])
    assert lines[-1].endswith("- Init COMPLETE")
    other = render.nccl_init_lines(run, 13)
    assert not any(x.startswith("NCCL version") for x in other)
    assert other[0].startswith("node-001:40039:40039 [5] NCCL INFO")
    assert other[-1].split("commId ")[1] == lines[-1].split("commId ")[1]  # one communicator
    assert len(render.nccl_init_lines(make_run(256), 0)) <= 40


def test_gpu_detection_lists_node_zero() -> None:
    lines = render.gpu_detect_lines(make_run())
    assert [x.split(":")[0] for x in lines[:8]] == [f"GPU {i}" for i in range(8)]
    assert all("NVIDIA H100 80GB HBM3 (UUID: GPU-" in x for x in lines[:8])
    assert len({x.split("UUID: ")[1] for x in lines[:8]}) == 8
    assert "550.127.08" in lines[-1] and "12.4" in lines[-1]


@pytest.mark.parametrize("world", [8, 64, 256])
@pytest.mark.parametrize("width", WIDTHS)
def test_grid_fits_and_has_one_row_per_node(world: int, width: int) -> None:
    run = make_run(world)
    for ascii_only in (False, True):
        lines = render.grid_lines(run, make_ranks(run), width=width, ascii_only=ascii_only)
        assert all(len(line) <= width for line in lines), max(map(len, lines))
        assert len(lines) == 1 + run["nnodes"]
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
    for style in STYLE_NAMES:
        config = RunConfig(ranks=64, style=style, ascii_only=True)
        for record in recs:
            for line in record_lines(config, recs[0], record, 80):
                assert line.isascii(), (style, line)
    run = recs[0]
    assert all(x.isascii() for x in render.summary_lines(run, make_summary(), width=80,
                                                         ascii_only=True))  # fmt: skip
    big = make_run(256)
    assert all(x.isascii() for x in render.grid_lines(big, make_ranks(big), width=80,
                                                      ascii_only=True))  # fmt: skip


def test_failure_box_names_the_root_cause() -> None:
    run = make_run()
    lines = render.failure_lines(run, make_failure())
    text = "\n".join(lines)
    assert re.search(
        r"^\[rank10\]:\[E\d{3,4} \d\d:\d\d:\d\d\.\d{9} ProcessGroupNCCL\.cpp:\d+\] \[Rank 10\] "
        r"Watchdog caught collective operation timeout: WorkNCCL\(SeqNum=812, OpType=ALLREDUCE, "
        r"NumelIn=3, NumelOut=3, Timeout\(ms\)=600000\) ran for \d+ milliseconds before timing "
        r"out\.$", text, re.M)  # fmt: skip
    assert text.count("closing signal SIGTERM") == 7 and "Sending process 40033 " not in text
    box = lines[
        lines.index("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ") :
    ]
    assert box[1] == "=" * 60 and box[3] == "-" * 60
    root = box.index("Root Cause (first observed failure):")
    assert box[root + 1 : root + 8] == [
        "[0]:",
        f"  time      : {time_of(T0 + 700.5)}",
        "  host      : node-001",
        "  rank      : 11 (local_rank: 3)",
        "  exitcode  : -9 (pid: 40033)",
        "  error_file: <N/A>",
        "  traceback : Signal 9 (SIGKILL) received by PID 40033",
    ]
    assert "failed (exitcode: -9) local_rank: 3 (pid: 40033)" in text


def time_of(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d_%H:%M:%S", time.localtime(t))


def test_restart_lines_count_attempts_like_torchelastic() -> None:
    lines = render.restart_lines(make_run(), make_records()[12])
    assert lines[0].endswith("] [default] Worker group FAILED. 3/3 attempts left; will restart "
                             "worker group")  # fmt: skip
    assert any(x.endswith("restart_count=1") for x in lines)
    assert "checkpoint at step 100" in lines[-1]


@pytest.mark.parametrize("width", WIDTHS)
def test_summary_fits_and_shows_the_records_figures(width: int) -> None:
    lines = render.summary_lines(make_run(), make_summary(), width=width, ascii_only=False)
    assert all(len(x) <= width for x in lines)
    text = "\n".join(lines)
    for fragment in ("Llama-3-8B", "64 x H100-SXM-80GB on 8 node(s)", "2.7183 / 15.15",
                     "1:06:40", "0:02:31", "1.26B", "42.8%", "completed"):  # fmt: skip
        assert fragment in text, fragment
    nan = render.summary_lines(None, make_summary(final_loss=None, final_ppl=math.nan),
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
        state = DashboardState(style="megatron")
        for record in recs[:-1]:
            state.update(record)
        state.update(make_ranks(recs[0], 300))
        console = Console(width=width, color_system=None, file=io.StringIO())
        console.print(dashboard_renderable(state, width=width, ascii_only=ascii_only))
        text = console.file.getvalue()
        assert all(len(line) <= width for line in text.splitlines())
        assert re.search(r"steps +300/300", text) and "measured wall 3.21 ms (real ZeroMQ)" in text
        assert "model 212.4 ms busbw 372 GB/s" in text
        assert text.isascii() == ascii_only or not ascii_only
        assert sum(line.startswith("node-") for line in text.splitlines()) == recs[0]["nnodes"]


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
    assert all(any(x.startswith(f"  {name} ") for x in lines) for name in STYLE_NAMES)


# ---------------------------------------------------------------- records from a real run


@pytest.fixture(scope="module")
def run64() -> list[dict]:
    done = run_cli("--ranks", "64", "--steps", "25", "--seed", "1", "--format", "jsonl",
                   "--speed", "1000000", timeout=100)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return records(done.stdout)


def _config(**kwargs: object) -> RunConfig:
    return RunConfig(ranks=64, **kwargs)  # type: ignore[arg-type]


def _all_lines(recs: list[dict], width: int, **kwargs: object) -> list[str]:
    config, run, out = _config(**kwargs), None, []
    for record in recs:
        if record["type"] == "run":
            run = record
        out += record_lines(config, run, record, width)
    return out


def test_megatron_lines_parse_with_the_real_format(run64: list[dict]) -> None:
    lines = _all_lines(run64, 200, style="megatron")
    steps = [r for r in run64 if r["type"] == "step"]
    parsed = [m for m in map(MEGATRON_ITERATION.match, lines) if m]
    assert len(parsed) == len(steps) == 25
    plan = run64[0]["plan"]
    for match, step in zip(parsed, steps, strict=True):
        assert int(match["it"]) == step["step"] and int(match["total"]) == 25
        assert float(match["lr"]) == pytest.approx(step["lr"], rel=1e-6)
        assert float(match["loss"]) == pytest.approx(step["loss"], rel=1e-6)
        assert int(match["gbs"]) == plan["global_batch"]
        assert int(match["samples"]) == step["step"] * plan["global_batch"]
        assert float(match["ms"]) == pytest.approx(1000 * step["step_time_s"], abs=0.06)
        if match["grad"]:
            assert float(match["grad"]) == pytest.approx(step["grad_norm"], abs=6e-4)
    validation = [line for line in lines if "validation loss at iteration" in line]
    assert validation and all("lm loss PPL:" in line for line in validation)
    assert any("(after 10 iterations) memory (MB)" in line for line in lines)


@pytest.mark.parametrize("style", ["default", "megatron", "deepspeed", "hf"])
def test_every_style_shows_each_steps_numbers(run64: list[dict], style: str) -> None:
    run = run64[0]
    for step in (r for r in run64 if r["type"] == "step"):
        text = "\n".join(render.STYLES[style].step_line(run, step))
        assert str(step["step"]) in text
        shown = (
            f"{step['loss']:.4f}",
            f"{step['loss']:.6E}",
            f"'loss': {round(step['loss'], 4)!r}",
        )
        assert any(form in text for form in shown)


@pytest.mark.parametrize("width", WIDTHS)
def test_grid_and_summary_fit_the_width(run64: list[dict], width: int) -> None:
    run = run64[0]
    ranks = next(r for r in run64 if r["type"] == "ranks")
    grid = render.grid_lines(run, ranks, width=width, ascii_only=False)
    assert len(grid) == 1 + run["nnodes"]  # title + one row per node
    assert all(len(line) <= width for line in grid)
    for node, row in enumerate(grid[1:]):
        assert row.startswith(run["hosts"][node][-len(row.split()[0]) :])
    summary = render.summary_lines(run, run64[-1], width=width, ascii_only=False)
    assert all(len(line) <= width for line in summary)
    assert any("Final loss" in line for line in summary)


def test_256_ranks_grid_is_compressed_per_node(run64: list[dict]) -> None:
    run = copy.deepcopy(run64[0])
    ranks = copy.deepcopy(next(r for r in run64 if r["type"] == "ranks"))
    wide = []
    for copy_index in range(4):
        for gpu in ranks["ranks"]:
            moved = dict(gpu, rank=gpu["rank"] + 64 * copy_index, node=gpu["node"] + 8 * copy_index)
            wide.append(moved)
    run["hosts"] = [f"node{n:03d}" for n in range(32)]
    lines = render.grid_lines(run, {"step": 1, "ranks": wide}, width=80, ascii_only=True)
    assert len(lines) == 33 and all(len(line) <= 80 for line in lines)
    assert all("util" in line for line in lines[1:])


def test_ascii_mode_is_pure_ascii(run64: list[dict]) -> None:
    for line in _all_lines(run64, 80, ascii_only=True, style="hf"):
        assert line.isascii(), line


def test_failure_box_matches_torchelastic() -> None:
    done = run_cli("--ranks", "8", "--steps", "20", "--format", "jsonl", "--speed", "1000000",
                   "--max-restarts", "0", "--inject", "kill:rank=3,step=6")  # fmt: skip
    assert done.returncode == 1
    recs = records(done.stdout)
    run, failure = recs[0], next(r for r in recs if r["type"] == "failure")
    lines = render.failure_lines(run, failure)
    text = "\n".join(lines)
    assert "Watchdog caught collective operation timeout: WorkNCCL(SeqNum=" in text
    assert "OpType=ALLREDUCE" in text and "Timeout(ms)=30000" in text
    assert "ChildFailedError" in text and "Root Cause (first observed failure):" in text
    assert "rank      : 3 (local_rank: 3)" in text
    assert f"exitcode  : -9 (pid: {failure['pid']})" in text
    assert f"Signal 9 (SIGKILL) received by PID {failure['pid']}" in text
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
