"""Bad input: one line on stderr, exit 2, no traceback, nothing started."""

from __future__ import annotations

import re
import resource
import socket
import subprocess
import sys

import pytest
from conftest import cli, own_processes, records, run_cli


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
        (["--format", "jsonl", "--style", "megatron"], "--style"),
        (["--record", "x.png"], ".svg, .html, .txt or .cast"),
        (["--chaos", "2"], "--chaos"),
    ],
)
def test_contradictory_or_out_of_range_flags(args: list[str], needle: str) -> None:
    done = run_cli("--ranks", "2", *args)
    assert done.returncode == 2 and needle in done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--grad-bucket", "inf"], {}, "--grad-bucket"),
        (["bench", "--min-bytes", "inf"], {}, "--min-bytes"),
        (["coordinator"], {"MASTER_PORT": "abc"}, "MASTER_PORT"),
        (["node"], {"MASTER_PORT": "abc"}, "MASTER_PORT"),
        (["node"], {"NODE_RANK": "two"}, "NODE_RANK"),
        (["node"], {"LLMCLUSTER_TOKEN": "bad\x01token"}, "LLMCLUSTER_TOKEN"),
        (["node", "--token", ""], {}, "--token"),
        (["node", "--node-rank", "²"], {}, "--node-rank"),
        (["node", "--master-port", "99999"], {}, "--master-port"),
        (["node", "--master-port", "0"], {}, "--master-port"),
        (["node", "--heartbeat-timeout", "-5"], {}, "--heartbeat-timeout"),
        (["node", "--master-addr", ""], {}, "--master-addr"),
        (["node", "--master-addr", "no-such-host.invalid"], {}, "--master-addr"),
        (["coordinator", "--port", "65535"], {}, "65534"),
        (["coordinator", "--port", "70000"], {}, "--port"),
        (["coordinator", "--port", "0"], {}, "--port"),
        (["coordinator", "--nnodes", "3:2"], {}, "--nnodes"),
        (["coordinator", "--bind", "192.0.2.1", "--token", "t"], {}, "cannot listen"),
        (["--record", "/nonexistent/dir/x.svg"], {}, "--record"),
        (["--inject", "kill:rank=3,step=500", "--steps", "3"], {}, "--steps"),
        (["--inject", "kill:rank=inf,step=2"], {}, "--inject"),
        (["--ui", "live", "--format", "jsonl"], {}, "contradict"),
        (["--exit-after-time", "-5s"], {}, "--exit-after-time"),
        (["--model", ""], {}, "--model"),
    ],
)
def test_issue_inputs_are_refused_before_anything_starts(
    args: list[str], env: dict[str, str], needle: str
) -> None:
    done = run_cli(*args, env=env, timeout=20)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert own_processes() == []


def test_a_named_model_that_cannot_fit_gets_a_hint_about_that_model() -> None:
    done = run_cli("--model", "Vibes-1T", "--ranks", "64", timeout=20)
    assert done.returncode == 2
    line = done.stderr.strip()
    assert "Vibes-1T" in line and "no catalog model" not in line
    needed = int(re.search(r"--ranks (\d+)", line).group(1))
    assert needed > 64  # and that many really fit on the GPU the hint names
    gpu = re.search(r"on (\S+) \(", line).group(1)
    from llmcluster import sim

    plan = sim.make_plan(sim.load_catalog(), seed=0, world_size=needed, nproc_per_node=8,
                         model="Vibes-1T", gpu=gpu)  # fmt: skip
    assert plan.model.name == "Vibes-1T"


def test_help_lists_every_default_and_the_subcommands() -> None:
    for sub in ([], ["bench"], ["coordinator"], ["node"]):
        done = run_cli(*sub, "--help")
        assert done.returncode == 0
        text = " ".join(done.stdout.split())  # argparse wraps lines
        for match in re.finditer(r"^  (--[a-z-]+)", done.stdout, re.M):
            flag = match.group(1)
            if flag not in ("--help", "--version"):
                assert re.search(rf"{flag}\b.*?\(default: ", text), (sub, flag)
    top = run_cli("--help").stdout
    for sub in ("bench", "coordinator", "node"):
        assert re.search(rf"^  llmcluster {sub} \[options\] +\S", top, re.M), sub


def test_without_seed_every_run_differs_and_the_seed_replays_it() -> None:
    def run(*extra: str) -> list[dict]:
        done = run_cli("--ranks", "2", "--steps", "2", "--format", "jsonl", "--speed", "1e6",
                       *extra)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [r for r in records(done.stdout) if r["type"] in ("run", "step")]

    first, second = run(), run()
    seed = first[0]["seed"]
    assert seed != second[0]["seed"]
    replay = run("--seed", str(seed))
    losses = [r["loss"] for r in first if r["type"] == "step"]
    assert losses == [r["loss"] for r in replay if r["type"] == "step"]
    assert replay[0]["model"]["name"] == first[0]["model"]["name"]


def test_the_default_style_header_shows_the_seed() -> None:
    done = run_cli("--ranks", "2", "--steps", "1", "--ui", "log", "--speed", "1e6",
                   "--seed", "12345")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r"\| training 1 steps?,.*seed 12345", done.stdout), done.stdout[:2000]


def test_a_coordinator_port_in_use_is_refused_up_front() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag_port in (port, port - 1):  # the control port, or the records port (+1)
            done = run_cli("coordinator", "--port", str(flag_port), "--join-timeout", "2",
                           timeout=20)  # fmt: skip
            assert done.returncode == 2, done.stderr
            assert done.stderr.splitlines() == [
                f"llmcluster: error: --bind/--port: cannot listen on 127.0.0.1:{port} "
                "(Address already in use)"
            ]
