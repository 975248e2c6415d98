"""A real run's JSONL output is complete and self-consistent: phases, clock, physics."""

from __future__ import annotations

import math

import pytest
from conftest import records, run_cli

FAST = ("--speed", "1000000")


@pytest.fixture(scope="module")
def run_records() -> list[dict]:
    done = run_cli(
        "--ranks", "8", "--steps", "20", "--seed", "4", "--format", "jsonl", *FAST, timeout=100
    )
    assert done.returncode == 0, done.stderr
    return records(done.stdout)


def test_phases_come_in_order(run_records: list[dict]) -> None:
    kinds = [
        (r["type"], r.get("name") or r.get("step")) for r in run_records if r["type"] != "ranks"
    ]
    assert kinds[:3] == [("run", None), ("ready", None), ("phase", "init")]
    assert ("step", 1) in kinds and kinds[-1][0] == "summary"
    evals = [r["step"] for r in run_records if r["type"] == "eval"]
    ckpts = [r["step"] for r in run_records if r["type"] == "checkpoint"]
    run = run_records[0]
    interval = run["plan"]["eval_interval"]
    assert evals == ckpts == [s for s in range(1, 21) if s % interval == 0 or s == 20]
    order = [r["type"] for r in run_records]
    assert order.index("export") > max(i for i, t in enumerate(order) if t == "checkpoint")
    summary = run_records[-1]
    assert summary["checkpoints"] == len(ckpts) and summary["exit"] == "completed"


def test_simulated_clock_adds_up(run_records: list[dict]) -> None:
    timed = [r for r in run_records if "time" in r and r["type"] not in ("run", "ranks")]
    times = [r["time"] for r in timed]
    assert times == sorted(times)
    previous = None
    for record in run_records:
        if record["type"] == "step" and previous is not None and previous["type"] == "step":
            assert record["time"] - previous["time"] == pytest.approx(record["step_time_s"])
        if record["type"] == "eval":
            assert record["time"] - previous["time"] == pytest.approx(record["eval_s"])
        if record["type"] in ("step", "eval", "checkpoint", "export"):
            previous = record


def test_every_number_agrees(run_records: list[dict]) -> None:
    run = run_records[0]
    plan, gpu = run["plan"], run["gpu"]
    for step in (r for r in run_records if r["type"] == "step"):
        assert step["ppl"] == pytest.approx(math.exp(step["loss"]), rel=1e-12)
        assert step["tokens_per_s"] * step["step_time_s"] == pytest.approx(step["tokens"])
        assert step["tokens"] == plan["tokens_per_step"]
        assert step["mfu"] == pytest.approx(step["tflops_per_gpu"] / gpu["bf16_tflops"])
        assert step["mfu"] == pytest.approx(
            plan["flops_per_token"] * step["tokens"] / step["step_time_s"] / 8
            / (gpu["bf16_tflops"] * 1e12)
        )  # fmt: skip
    for ranks in (r for r in run_records if r["type"] == "ranks"):
        for x in ranks["ranks"]:
            assert x["mem_used_gb"] <= x["mem_total_gb"]
            assert gpu["idle_w"] <= x["power_w"] <= gpu["tdp_w"]
    for ev in (r for r in run_records if r["type"] == "eval"):
        assert ev["val_ppl"] == pytest.approx(math.exp(ev["val_loss"]))
    export = next(r for r in run_records if r["type"] == "export")
    assert sum(f["bytes"] for f in export["files"]) == export["bytes_total"]
    weights = 2 * run["model"]["params"]  # bf16, plus safetensors headers and the JSON files
    assert weights < export["bytes_total"] < 1.001 * weights + 100_000


def test_same_seed_same_losses() -> None:
    runs = [
        run_cli("--ranks", "4", "--steps", "5", "--seed", "9", "--format", "jsonl", *FAST)
        for _ in range(2)
    ]
    losses = [[r["loss"] for r in records(d.stdout) if r["type"] == "step"] for d in runs]
    assert losses[0] == losses[1] and len(losses[0]) == 5
    other = run_cli("--ranks", "4", "--steps", "5", "--seed", "10", "--format", "jsonl", *FAST)
    assert [r["loss"] for r in records(other.stdout) if r["type"] == "step"] != losses[0]
