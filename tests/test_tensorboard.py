"""``--tensorboard DIR``: tbparse reads back every step's scalars (skipped without the extra)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from conftest import records, run_cli

from llmcluster.worker.tensorboard import MISSING


@pytest.mark.timeout(120)
def test_tbparse_reads_back_every_step(tmp_path: str, clean_table: None) -> None:
    pytest.importorskip("tensorboardX")
    tbparse = pytest.importorskip("tbparse")
    log_dir = f"{tmp_path}/tb"
    done = run_cli("--ranks", "4", "--steps", "6", "--speed", "2000", "--format", "jsonl",
                   "--tensorboard", log_dir, timeout=90)  # fmt: skip
    assert done.returncode == 0, done.stderr
    recs = records(done.stdout)
    steps = {r["step"]: r for r in recs if r["type"] == "step"}
    gpus = {(r["step"], g["rank"]): g for r in recs if r["type"] == "ranks" and r.get("phase")
            is None for g in r["ranks"]}  # fmt: skip
    assert sorted(steps) == list(range(1, 7))
    scalars = tbparse.SummaryReader(log_dir).scalars
    read: dict[str, dict[int, float]] = {}
    for tag, step, value in zip(scalars["tag"], scalars["step"], scalars["value"], strict=True):
        read.setdefault(tag, {})[int(step)] = float(value)
    fields = {"loss": "loss", "lr": "lr", "grad_norm": "grad_norm",
              "tokens_per_s": "tokens_per_s", "mfu": "mfu"}  # fmt: skip
    for tag, field in fields.items():
        assert sorted(read[f"train/{tag}"]) == sorted(steps), tag  # every step, once
        for step, rec in steps.items():  # event files hold float32
            assert math.isclose(read[f"train/{tag}"][step], rec[field], rel_tol=1e-6), tag
    for rank in range(4):
        for tag, field in (("util", "util"), ("temp_c", "temp_c")):
            got = read[f"gpu/{tag}/rank{rank}"]
            assert sorted(got) == sorted(steps)
            for step in steps:
                assert math.isclose(got[step], gpus[(step, rank)][field], rel_tol=1e-6)


def test_without_the_extra_it_is_one_line_exit_2(tmp_path: str) -> None:
    code = ("import sys; sys.modules['tensorboardX'] = None; from llmcluster.cli import main; "
            f"sys.exit(main(['--tensorboard', {str(tmp_path)!r}]))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"llmcluster: error: {MISSING}"]
