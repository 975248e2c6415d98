"""What rank 0 shows: real formats, every width from 80 columns, ASCII, no ANSI when piped.

Records come from a real run (JSONL), then go through the same pure renderers the
terminal uses; the live dashboard is driven through a real pseudo-terminal.
"""

from __future__ import annotations

import copy
import re

import pexpect
import pytest
from conftest import cli, records, run_cli

from llmcluster import render
from llmcluster.config import RunConfig
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
        algbw, busbw = float(row[6]), float(row[7])
        assert busbw == pytest.approx(algbw * 2 * 3 / 4, abs=0.011)
        assert row[8] == "0"  # no wrong elements
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
    assert "steps 15/15" in screen and "Training summary" in screen
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
