"""``--smi-every N``: rank 0's job shells out to nvidia-smi every N steps (real runs)."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import pytest
from conftest import run_cli
from framework_formats import SMI, framework_kind, real_smi_lines

REFERENCE = Path("/work/shared/reference/observability.md")
FAST = ("--speed", "2000")
SHAPE = ("--ranks", "8", "--nproc-per-node", "4", "--steps", "6", "--seed", "7")


def _tables(lines: list[str]) -> list[list[str]]:
    """The nvidia-smi tables in a stream: from each date line to the closing rule."""
    tables: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        if SMI["date"].match(line):
            current = []
            tables.append(current)
        if current is None:
            continue
        last = current[-1] if current else ""
        current.append(line)
        if line == "+" + "-" * 89 + "+" and (SMI["process"].match(last) or SMI["none"].match(last)):
            current = None
    return tables


@pytest.mark.skipif(not REFERENCE.exists(), reason="needs the shared reference")
def test_smi_regexes_match_the_real_table() -> None:
    lines = real_smi_lines(REFERENCE.read_text())
    assert len(lines) > 15
    for line in lines:
        assert [k for k, p in SMI.items() if p.match(line)], repr(line)


@pytest.mark.timeout(180)
def test_smi_tables_every_n_steps_in_rank_0s_stream(tmp_path: str, clean_table: None) -> None:
    done = run_cli(*SHAPE, *FAST, "--style", "megatron", "--smi-every", "2", "-r", "3",
                   "--log-dir", str(tmp_path), timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    streams = {path: Path(path).read_text().splitlines()
               for path in glob.glob(f"{tmp_path}/*/attempt_0/*/stdout.log")}  # fmt: skip
    with_tables = {path: _tables(lines) for path, lines in streams.items() if _tables(lines)}
    assert len(with_tables) == 1  # rank 0's job on node 0
    ((path, tables),) = with_tables.items()
    assert path.endswith(f"{os.sep}0{os.sep}stdout.log")
    assert len(tables) == 3  # steps 2, 4 and 6
    for table in tables:
        assert all(any(p.match(line) for p in SMI.values()) for line in table), table
        gpus = [int(m["gpu"]) for m in map(SMI["gpu"].match, table) if m]
        assert gpus == [0, 1, 2, 3]  # node 0's GPUs
        assert sum(bool(SMI["process"].match(line)) for line in table) == 4
    other = [line for line in streams[path] if not any(p.match(line) for p in SMI.values())]
    assert any(framework_kind("megatron", line) for line in other)


def test_smi_every_in_the_merged_log_is_prefixed_as_rank_0s(clean_table: None) -> None:
    done = run_cli(*SHAPE, *FAST, "--style", "deepspeed", "--smi-every", "3", "--ui", "log",
                   timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    dates = [line for line in done.stdout.splitlines()
             if line.startswith("[default0]:") and SMI["date"].match(line[len("[default0]:"):])]  # fmt: skip  # noqa: E501
    assert len(dates) == 2  # steps 3 and 6


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--smi-every must be a positive number of steps, got 0"),
        ("-2", "--smi-every must be a positive number of steps, got -2"),
        ("x", "argument --smi-every: expected a whole number, got 'x'"),
        ("1.5", "argument --smi-every: expected a whole number, got '1.5'"),
    ],
)
def test_bad_smi_every_is_one_line_exit_2(value: str, message: str) -> None:
    done = run_cli("--smi-every", value, timeout=20)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"llmcluster: error: {message}"]
    assert re.search("Traceback", done.stderr) is None
