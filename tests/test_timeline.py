"""The simulated clock is never stamped in the future (tests/test_realism.py checks that one
seed gives one timeline at any --speed)."""

from __future__ import annotations

import time

import pytest
from conftest import Running, records, run_cli

from llmcluster import sim
from llmcluster.config import RunConfig
from llmcluster.setup import build_setup


@pytest.mark.timeout(120)
def test_no_record_is_stamped_later_than_the_clock_that_prints_it(clean_table: None) -> None:
    launched = time.time()
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
        # backfilled: the whole simulated run, lost work included, fits before the launch
        assert recs[0]["start_time"] < recs[-1]["time"] <= launched + 1.0
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
