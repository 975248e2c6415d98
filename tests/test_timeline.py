"""One simulated timeline per seed: the same at any --speed, and never stamped in the future."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import Running, records, run_cli

from llmcluster import sim
from llmcluster.config import RunConfig
from llmcluster.sim.faults import build_setup

WALL_FIELDS = {"run_id", "pids", "env", "speed", "agent_pid", "ready_s", "wall_seconds",
               "wall_ms", "arrive_ms", "wait_ms"}  # fmt: skip


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in WALL_FIELDS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


@pytest.mark.timeout(150)
def test_one_seed_gives_the_same_records_at_any_speed(clean_table: None) -> None:
    common = ("--ranks", "4", "--steps", "4", "--seed", "11", "--format", "jsonl",
              "--start-time", "2026-11-30T09:00:00")  # fmt: skip
    fast = run_cli(*common, "--speed", "1000", timeout=60)
    paced = run_cli(*common, "--speed", "auto", timeout=120)
    assert fast.returncode == paced.returncode == 0, (fast.stderr, paced.stderr)
    a, b = records(fast.stdout), records(paced.stdout)
    assert [r["type"] for r in a] == [r["type"] for r in b]
    for left, right in zip(a, b, strict=True):
        assert _strip(left) == _strip(right), left["type"]
    assert a[0]["speed"] != b[0]["speed"]


@pytest.mark.timeout(120)
def test_no_record_is_stamped_later_than_the_clock_that_prints_it(clean_table: None) -> None:
    run = Running("--ranks", "8", "--nproc-per-node", "4", "--steps", "30", "--format", "jsonl",
                  "--speed", "5000", "--inject", "kill:rank=6,step=12")  # fmt: skip
    try:
        late = []
        while True:
            record = run.wait_for(lambda r: True, timeout_s=60)
            if record.get("time", 0) > time.time():
                late.append(record)
            if record["type"] == "summary":
                break
        code, recs, _ = run.finish()
        assert code == 0 and not late, late[:2]
        assert any(r["type"] == "restart" for r in recs)
        assert recs[0]["start_time"] < time.time() - 600  # backfilled, not starting now
    finally:
        run.kill()


def test_start_at_launch_and_start_time_anchor_the_timeline(clean_table: None) -> None:
    before = time.time()
    now = run_cli("--ranks", "2", "--steps", "2", "--speed", "1e6", "--format", "jsonl",
                  "--start-at-launch", timeout=60)  # fmt: skip
    assert now.returncode == 0, now.stderr
    assert before - 5 < records(now.stdout)[0]["start_time"] <= time.time()
    fixed = run_cli("--ranks", "2", "--steps", "2", "--speed", "1e6", "--format", "jsonl",
                    "--start-time", "2025-06-01T12:00:00+00:00", timeout=60)  # fmt: skip
    assert records(fixed.stdout)[0]["start_time"] == 1748779200.0
    both = run_cli("--start-time", "-1h", "--start-at-launch")
    assert both.returncode == 2 and "contradict" in both.stderr


def test_the_backfill_covers_every_restart() -> None:
    plan = build_setup(RunConfig(ranks=16, seed=3)).plan
    assert (
        sim.run_span_s(plan, max_restarts=3)
        > sim.run_span_s(plan, max_restarts=0)
        > (plan.total_steps * sim.step_time_model_s(plan))
    )
