"""Every rank's own streams in torchrun's layout, NCCL_DEBUG honoured by each rank (real runs)."""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator

import jsonschema
import pytest
from conftest import records, run_cli
from framework_formats import (
    GLOG,
    GPU_LIST,
    HF,
    HF_STDERR,
    MEGATRON,
    REAL_DEEPSPEED,
    REAL_GLOG,
    REAL_HF,
    REAL_HF_STDERR,
    REAL_MEGATRON,
    framework_kind,
)
from nccl_formats import ERROR_FILE_SCHEMA, TRACEBACK_LINE, nccl_kind

FAST = ("--speed", "2000")
CONSOLE_PREFIX = re.compile(r"^\[default(\d+)\]:")


@pytest.fixture(autouse=True)
def _no_nccl_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(("NCCL_", "PET_", "TORCHELASTIC_")):
            monkeypatch.delenv(name)
    yield


def _rank_files(log_dir: str, attempt: int, name: str) -> list[str]:
    return sorted(glob.glob(f"{log_dir}/*_*/attempt_{attempt}/*/{name}"))


def _lines(path: str) -> list[str]:
    with open(path) as f:
        return f.read().splitlines()


def test_tee_with_local_ranks_filter_shows_exactly_those_ranks(
    tmp_path: str, clean_table: None
) -> None:
    done = run_cli(
        "--ranks", "8", "--nproc-per-node", "4", "--steps", "3", "--format", "jsonl", *FAST,
        "--tee", "3", "--local-ranks-filter", "0,3", "--log-dir", str(tmp_path),
        env={"NCCL_DEBUG": "INFO"}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    console = done.stdout.splitlines()
    assert console and all(CONSOLE_PREFIX.match(line) for line in console)
    assert {CONSOLE_PREFIX.match(line)[1] for line in console} == {"0", "3"}  # type: ignore[index]
    ranks_on_console = set()
    for line in console:
        found = nccl_kind(line[CONSOLE_PREFIX.match(line).end() :])  # type: ignore[union-attr]
        if found and found[0] == "comm":
            ranks_on_console.add(int(found[1]["rank"]))
    assert ranks_on_console == {0, 3, 4, 7}  # local ranks 0 and 3 of both nodes
    stdouts = _rank_files(str(tmp_path), 0, "stdout.log")
    assert len(stdouts) == 8 and len(_rank_files(str(tmp_path), 0, "stderr.log")) == 8
    assert all(_lines(path) for path in stdouts)  # filtered ranks still write their files


def test_every_line_of_every_rank_parses_and_nothing_without_nccl_debug(
    tmp_path: str, clean_table: None
) -> None:
    base = ("--ranks", "16", "--nproc-per-node", "8", "--steps", "4", "--format", "jsonl", *FAST)
    on, off = os.path.join(tmp_path, "on"), os.path.join(tmp_path, "off")
    done = run_cli(*base, "-r", "3", "--log-dir", on, timeout=60,
                   env={"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT,COLL,ENV",
                        "NCCL_IB_HCA": "mlx5"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # every stream went to its file
    stdouts = _rank_files(on, 0, "stdout.log")
    assert len(stdouts) == 16
    for path in stdouts:
        kinds = set()
        for line in _lines(path):
            found = nccl_kind(line)
            if found is None:  # rank 0 also prints its JSONL records
                assert path.endswith("/0/stdout.log") and json.loads(line), f"{path}: {line!r}"
                continue
            kinds.add(found[0])
        assert {"init", "comm", "ring", "trees", "hop", "coll", "env"} <= kinds, path
    assert any("NET/IB" in line for p in _rank_files(on, 0, "stdout.log") for line in _lines(p))
    for path in _rank_files(on, 0, "stderr.log"):
        assert all(TRACEBACK_LINE.match(line) for line in _lines(path)), path

    done = run_cli(*base, "-r", "3", "--log-dir", off, timeout=60)
    assert done.returncode == 0, done.stderr
    for path in _rank_files(off, 0, "stdout.log"):
        assert not [line for line in _lines(path) if "NCCL" in line and not line.startswith("{")]


def test_coll_lines_per_collective_and_debug_file_per_rank(
    tmp_path: str, clean_table: None
) -> None:
    template = os.path.join(tmp_path, "nccl.%h.%p")
    done = run_cli(
        "--ranks", "4", "--nproc-per-node", "4", "--steps", "3", "--format", "jsonl", *FAST,
        env={"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "COLL", "NCCL_DEBUG_FILE": template},
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = next(r for r in records(done.stdout) if r["type"] == "run")
    files = sorted(glob.glob(os.path.join(tmp_path, "nccl.*")))
    host = run["hosts"][0].split(".")[0]  # as NCCL names it: cut at the first dot (debug.cc)
    assert files == sorted(os.path.join(tmp_path, f"nccl.{host}.{pid}") for pid in run["pids"])
    for path in files:
        found = [nccl_kind(line) for line in _lines(path)]
        assert all(f is not None for f in found)
        if path.endswith(f".{run['pids'][0]}"):  # rank 0 prints the version (any subsystem)
            assert found[0][0] == "version"  # type: ignore[index]
            found = found[1:]
        assert found and all(f[0] == "coll" for f in found)  # type: ignore[index]
        counts = [int(f[1]["op_count"], 16) for f in found]  # type: ignore[index]
        assert counts == list(range(len(counts)))  # one line per collective, in order
        steps = [f for f in found if f[1]["count"] == "3"]  # type: ignore[index]
        assert len(steps) == 3  # the step's sum allreduce, once per step


@pytest.mark.timeout(180)
def test_killed_rank_gives_attempt_1_error_json_and_the_box_names_it(
    tmp_path: str, clean_table: None
) -> None:
    done = run_cli(
        "--ranks", "16", "--nproc-per-node", "8", "--steps", "8", *FAST, "--ui", "log",
        "-r", "3", "--log-dir", str(tmp_path), "--inject", "kill:rank=5,step=4",
        timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for attempt in (0, 1):
        assert len(_rank_files(str(tmp_path), attempt, "stdout.log")) == 16
        assert len(_rank_files(str(tmp_path), attempt, "stderr.log")) == 16
    errors = _rank_files(str(tmp_path), 0, "error.json")
    assert len(errors) == 1 and errors[0].endswith("/attempt_0/5/error.json")
    with open(errors[0]) as f:
        data = json.load(f)
    jsonschema.validate(data, ERROR_FILE_SCHEMA)
    assert data["message"]["errorCode"] == -9
    assert data["message"]["message"].startswith("Signal 9 (SIGKILL) received by PID ")
    assert not _rank_files(str(tmp_path), 1, "error.json")
    rank0 = [line for p in glob.glob(f"{tmp_path}/*/attempt_*/0/stdout.log") for line in _lines(p)]
    assert any("failed (exitcode: -9) local_rank: 5" in line for line in rank0)
    assert not any("ChildFailedError" in line for line in rank0)  # restarts were left
    final = os.path.join(str(tmp_path), "final")
    exhausted = run_cli(
        "--ranks", "8", "--steps", "8", *FAST, "--ui", "log", "-r", "3", "--log-dir", final,
        "--inject", "kill:rank=5,step=4", "--max-restarts", "0", timeout=150,
    )  # fmt: skip
    assert exhausted.returncode == 1
    (error_file,) = glob.glob(f"{final}/*/attempt_0/5/error.json")
    rank0 = [line for p in glob.glob(f"{final}/*/attempt_0/0/stdout.log") for line in _lines(p)]
    assert f"  error_file: {error_file}" in rank0  # no restart left: torchrun's box names it
    assert f"Setting worker5 reply file to: {errors[0]}" in done.stderr


STD_ERROR = "does not match: <^[0123]$> or <^(\\d:[0123],)*(\\d:[0123])$>"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--redirects", "5"], {}, f"argument -r/--redirects: 5 {STD_ERROR}"),
        (["-t", "0:1,12:3"], {}, f"argument -t/--tee: 0:1,12:3 {STD_ERROR}"),
        ([], {"PET_TEE": "x"}, f"argument -t/--tee: x {STD_ERROR}"),
        (["--local_ranks_filter", "0,a"], {},
         "argument --local-ranks-filter/--local_ranks_filter: --local_ranks_filter must be a "
         "comma-separated list of integers e.g. --local_ranks_filter=0,1,2"),
    ],
)  # fmt: skip
def test_bad_log_options_are_torchs_message_on_one_line(
    args: list[str], env: dict[str, str], message: str
) -> None:
    done = run_cli(*args, env=env, timeout=20)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"llmcluster: error: {message}"]


def test_log_dir_that_is_a_file(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "file")
    open(path, "w").close()
    done = run_cli("--log-dir", path, timeout=20)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"llmcluster: error: log_dir: {path} is a file"]


def test_nothing_asked_makes_no_log_directory(tmp_path: str, clean_table: None) -> None:
    done = run_cli("--ranks", "4", "--steps", "2", "--format", "jsonl", *FAST,
                   env={"TMPDIR": str(tmp_path)}, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not glob.glob(os.path.join(tmp_path, "torchelastic_*"))
    assert "reply file" not in done.stderr
    assert [r["type"] for r in records(done.stdout)][-1] == "summary"


RANK_PREFIX = re.compile(r"^\[(\d+)\]:")
SHAPE = ("--ranks", "8", "--nproc-per-node", "4", "--model", "llama-3-8b", "--gpu", "A100-40GB")


def test_framework_formats_match_real_lines() -> None:
    for style, lines in (("megatron", REAL_MEGATRON), ("deepspeed", REAL_DEEPSPEED),
                         ("hf", REAL_HF)):  # fmt: skip
        for line in lines:
            assert framework_kind(style, line) is not None, line
    for line in REAL_HF_STDERR:
        assert any(p.match(line) for p in HF_STDERR.values()), line
    assert all(GLOG.match(line) for line in REAL_GLOG)


def _per_rank_run(tmp_path: str, style: str, *extra: str) -> dict[int, list[str]]:
    """A run whose ranks tee into files with a global-rank prefix; each rank's stdout lines
    (the console's, checked equal to the files')."""
    done = run_cli(*SHAPE, "--steps", "6", *FAST, "--seed", "7", "--style", style, "--ui", "log",
                   "-t", "3", "--log-dir", tmp_path, *extra, timeout=120,
                   env={"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[${rank}]:"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    by_rank: dict[int, list[str]] = {rank: [] for rank in range(8)}
    for line in done.stdout.splitlines():
        found = RANK_PREFIX.match(line)
        assert found, line
        by_rank[int(found[1])].append(line[found.end() :])
    files = [_lines(path) for path in _rank_files(tmp_path, 0, "stdout.log")]
    assert sorted(files) == sorted(by_rank.values())  # the tee shows each file, in order
    return by_rank


@pytest.mark.timeout(240)
@pytest.mark.parametrize("style", ["megatron", "deepspeed", "hf"])
def test_every_rank_writes_its_own_framework_lines_in_real_formats(
    tmp_path: str, clean_table: None, style: str
) -> None:
    by_rank = _per_rank_run(str(tmp_path), style)
    kinds: dict[int, list[str]] = {rank: [] for rank in range(8)}
    for rank, lines in by_rank.items():
        for line in lines:
            kind = framework_kind(style, line)
            if kind is None and rank == 0:  # rank 0 also shows torchrun's and NCCL's lines
                kind = "torchrun" if GLOG.match(line) or GPU_LIST.match(line) else None
                kind = kind or ("nccl" if nccl_kind(line) else None)
            assert kind is not None, f"rank {rank}: {line!r}"
            kinds[rank].append(kind)
    for path in _rank_files(str(tmp_path), 0, "stderr.log"):  # healthy: warnings at most
        assert all(any(p.match(line) for p in HF_STDERR.values()) for line in _lines(path))
    if style == "megatron":  # print_rank_last, print_rank_0, report_memory on DP-rank-0s
        iterations = [MEGATRON["iteration"].match(line) for line in by_rank[7]]
        assert [int(m["it"]) for m in iterations if m] == list(range(1, 7))
        assert all("iteration" not in kinds[r] and "validation" not in kinds[r] for r in range(7))
        assert "validation" in kinds[7] and "world" in kinds[0]
        assert all("world" not in kinds[r] for r in range(1, 8))
        reporters = set()
        for rank, lines in by_rank.items():
            for line in lines:
                found = MEGATRON["memory"].match(line)
                if found:
                    assert int(found["rank"]) == rank
                    reporters.add(rank)
        assert reporters == {0, 1, 2, 3}  # tp 4: the data-parallel rank 0s
    elif style == "deepspeed":  # log_dist(ranks=[0]) on rank 0, logger.info on every rank
        for rank, lines in by_rank.items():
            assert {"accelerator", "cdb", "commit", "zero_saved"} <= set(kinds[rank]), rank
            assert all("[Rank 0]" not in line for line in lines) or rank == 0
            shards = {line.rsplit("/", 1)[1] for line in lines if "zero checkpoint saved" in line}
            assert shards == {f"bf16_zero_pp_rank_{rank // 4}_mp_rank_{rank % 4:02d}"
                              "_optim_states.pt"}  # fmt: skip
        assert "[Rank 0] step=6," in "\n".join(by_rank[0])
    else:  # the main process prints the Trainer's lines, every process its warning
        for rank in range(8):
            process = [HF["process"].match(line) for line in by_rank[rank]]
            assert [int(m["local"]) for m in process if m] == [rank % 4]
        assert "tqdm" in kinds[0] and "dict" in kinds[0]
        assert all(kinds[r] == ["process"] for r in range(1, 8))


@pytest.mark.timeout(240)
def test_last_ranks_iteration_lines_are_the_merged_logs(tmp_path: str, clean_table: None) -> None:
    """The last rank's own lines carry the numbers and timestamps the coordinator publishes."""
    pinned = ("--start-time", "2026-01-05T09:00")
    merged = run_cli(*SHAPE, "--steps", "6", *FAST, "--seed", "7", "--style", "megatron",
                     "--ui", "log", *pinned, timeout=120)  # fmt: skip
    assert merged.returncode == 0, merged.stderr
    shown = [line.split(":", 1)[1] for line in merged.stdout.splitlines()
             if line.startswith("[default3]:") and MEGATRON["iteration"].match(line.split(":", 1)[1])]  # fmt: skip  # noqa: E501
    own = _per_rank_run(str(tmp_path), "megatron", *pinned)[7]
    assert len(shown) == 6
    assert [line for line in own if MEGATRON["iteration"].match(line)] == shown


def test_hf_processes_warn_of_gradient_checkpointing_with_full_recompute() -> None:
    """Each process's stderr at its first step: transformers' and torch's warnings (RANK view),
    only with full activation recompute (the Trainer's gradient checkpointing)."""
    import dataclasses

    from llmcluster.config import RunConfig
    from llmcluster.render.base import View
    from llmcluster.render.styles import make_style
    from llmcluster.setup import build_setup
    from llmcluster.telemetry.describe import run_record

    config = RunConfig(ranks=8, nproc_per_node=4, seed=7, steps=6)
    run = run_record(config, build_setup(config).plan, run_id="r", speed=1.0, start_time=0.0,
                     attempt=0, hosts=(), real_hosts=(), pids=(), env=(), agent_pid=0)  # fmt: skip
    for recompute, expected in (("selective", 0), ("full", 3)):
        shaped = dataclasses.replace(run, plan=dataclasses.replace(run.plan, recompute=recompute))
        for rank in (0, 5):
            style = make_style("hf", view=View.RANK, rank=rank)
            lines = style.warnings(shaped)
            assert len(lines) == expected
            assert all(any(p.match(line) for p in HF_STDERR.values()) for line in lines)
            process = [HF["process"].match(line) for line in style.lines(shaped)]
            assert [int(m["local"]) for m in process if m] == [rank % 4]
