"""Short soak (the CI form): 64 ranks with random kills and hangs, checked end to end."""

from __future__ import annotations

import time

import pytest
from conftest import Running


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_soak_with_random_kills_and_hangs(clean_table: None) -> None:
    run = Running("--ranks", "64", "--steps", "150", "--format", "jsonl", "--speed", "3000",
                  "--model", "Llama-3-8B", "--gpu", "H100-SXM", "--chaos", "0.02",
                  "--max-restarts", "10", "--seed", "3")  # fmt: skip
    try:
        run.wait_for(lambda r: r["type"] == "step")
        rss_start = _rss_mib(run.proc.pid)
        last, longest_gap = time.monotonic(), 0.0
        while True:
            record = run.wait_for(lambda r: True, timeout_s=60)
            now = time.monotonic()
            longest_gap, last = max(longest_gap, now - last), now
            if record["type"] == "summary":
                rss_end = _rss_mib(run.proc.pid)
                break
        code, recs, err = run.finish(timeout_s=30)
    finally:
        run.kill()
    assert code == 0, err
    failures = [r for r in recs if r["type"] == "failure"]
    restarts = [r for r in recs if r["type"] == "restart"]
    assert failures and len(restarts) == len(failures)  # the chaos really struck
    assert longest_gap < 3.0 + 6.0  # no hang beyond the heartbeat timeout plus a restart
    steps = [r["step"] for r in recs if r["type"] == "step"]
    assert sorted(set(steps)) == list(range(1, 151))
    for restart in restarts:
        index = next(i for i, r in enumerate(recs) if r is restart)
        resumed = next(r["step"] for r in recs[index:] if r["type"] == "step")
        assert resumed == restart["resume_step"]
    for ranks in (r for r in recs if r["type"] == "ranks"):
        assert len(ranks["ranks"]) == 64 and len({x["loss"] for x in ranks["ranks"]}) == 1
    summary = recs[-1]
    assert summary["restarts"] == len(restarts) and summary["exit"] == "completed"
    assert rss_end - rss_start < 25.0, (rss_start, rss_end)  # the coordinator's memory is flat
