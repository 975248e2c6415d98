"""Bad input: one line on stderr, exit 2, no traceback, nothing started."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
from conftest import cli, own_processes, run_cli


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ranks", "0"], "--ranks"),
        (["--ranks", "-3"], "--ranks"),
        (["--ranks", "abc"], "whole number"),
        (["--ranks", "100000"], "--ranks"),
        (["--frobnicate"], "unrecognized"),
        (["--steps", "0"], "--steps"),
        (["--speed", "0"], "--speed"),
        (["--speed", "nan"], "finite"),
        (["--exit-after-time", "soon"], "duration"),
        (["--algorithm", "carrier-pigeon"], "--algorithm"),
        (["--nproc-per-node", "0"], "--nproc-per-node"),
        (["bench", "--ranks", "0"], "--ranks"),
        (["bench", "--max-bytes", "lots"], "size"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    done = run_cli(*args, timeout=20)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert needle in lines[0] and "Traceback" not in done.stderr
    assert done.stdout == ""
    assert own_processes() == []


def test_rank_count_beyond_open_file_limit_is_refused() -> None:
    def low_limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

    done = subprocess.run(
        cli("--ranks", "512", "--steps", "1"),
        capture_output=True,
        text=True,
        timeout=20,
        preexec_fn=low_limits,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    assert "open files" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert own_processes() == []


def test_help_and_version_exit_0() -> None:
    assert run_cli("--help").returncode == 0
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("llmcluster ")


def test_python_dash_m_works() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llmcluster", "--version"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0


def test_list_shows_every_catalog_entry_and_style() -> None:
    from llmcluster import sim

    done = run_cli("--list")
    assert done.returncode == 0, done.stderr
    catalog = sim.load_catalog()
    for entry in (*catalog.models, *catalog.gpus, *catalog.datasets):
        assert f"  {entry.name} " in done.stdout
    for style in ("default", "megatron", "deepspeed", "hf"):
        assert f"  {style} " in done.stdout


def test_unknown_style_and_model_are_usage_errors() -> None:
    for args, text in ((["--style", "fancy"], "--style"), (["--model", "GPT-7"], "unknown model")):
        done = run_cli("--ranks", "2", *args)
        assert done.returncode == 2 and text in done.stderr
        assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--format", "jsonl", "--ui", "live"], "contradict"),
        (["--format", "jsonl", "--record", "x.svg"], "--record"),
        (["--record", "x.png"], ".svg, .html or .txt"),
        (["--chaos", "2"], "--chaos"),
    ],
)
def test_contradictory_or_out_of_range_flags(args: list[str], needle: str) -> None:
    done = run_cli("--ranks", "2", *args)
    assert done.returncode == 2 and needle in done.stderr
    assert done.stderr.count("\n") == 1
