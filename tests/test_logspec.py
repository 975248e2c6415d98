"""torchrun's log options, NCCL's debug environment, error.json and NCCL's per-rank lines (pure)."""

from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace

import jsonschema
import pytest
from nccl_formats import (
    ERROR_FILE_SCHEMA,
    MESSAGES,
    REAL_INFO,
    REAL_TRACEBACK,
    REAL_VERSION,
    TRACEBACK_LINE,
    nccl_kind,
)

from llmcluster.comm import CollectiveTimeout
from llmcluster.render.nccl import NcclRank, coll_line, init_lines, prefix
from llmcluster.worker import nccl_env
from llmcluster.worker.errors import record_exception, record_signal_death
from llmcluster.worker.logspec import (
    CONSOLE,
    LogsSpec,
    Std,
    make_attempt_dir,
    make_run_dir,
    parse_ranks_filter,
    reify,
    std_from_str,
    to_map,
)
from llmcluster.worker.nccl_env import Level, Subsys
from llmcluster.worker.rank import Rank


# ---- the regexes judge real lines first -------------------------------------------------------
@pytest.mark.parametrize("line", REAL_INFO + REAL_VERSION)
def test_regexes_accept_the_real_lines(line: str) -> None:
    assert nccl_kind(line) is not None, line


def test_traceback_regex_accepts_the_real_lines() -> None:
    assert all(TRACEBACK_LINE.match(line) for line in REAL_TRACEBACK)


# ---- Std, to_map, the filter ------------------------------------------------------------------
def test_std_from_str_as_torch() -> None:
    assert std_from_str("0") is Std.NONE and std_from_str("3") is Std.ALL
    assert std_from_str("0:3,1:0,2:1,3:2") == {0: Std.ALL, 1: Std.NONE, 2: Std.OUT, 3: Std.ERR}
    assert to_map({1: Std.OUT}, 3) == {0: Std.NONE, 1: Std.OUT, 2: Std.NONE}
    assert to_map(Std.ERR, 2) == {0: Std.ERR, 1: Std.ERR}


@pytest.mark.parametrize("bad", ["4", "10:1", "0:1,", "all", "", "0:4", "1,2"])
def test_std_from_str_rejects_with_torchs_message(bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        std_from_str(bad)
    assert str(caught.value) == (
        f"{bad} does not match: <^[0123]$> or <^(\\d:[0123],)*(\\d:[0123])$>"
    )


def test_ranks_filter() -> None:
    assert parse_ranks_filter("0,3") == {0, 3} and parse_ranks_filter("") is None
    with pytest.raises(ValueError, match=r"comma-separated list of integers e\.g\."):
        parse_ranks_filter("0,x")


# ---- reify -----------------------------------------------------------------------------------
def test_nothing_asked_keeps_the_console_and_makes_no_files() -> None:
    spec = LogsSpec()
    assert not spec.makes_files
    streams = reify(spec, None, [8, 9])
    assert all(s.stdout == s.stderr == CONSOLE and not s.error_file for s in streams)
    assert [s.prefix for s in streams] == ["[default0]:", "[default1]:"]


def test_reify_tee_is_redirect_plus_tail_and_filter_drops_console(tmp_path: str) -> None:
    spec = LogsSpec(redirects="1:2", tee="0:1,3:3", local_ranks_filter="0,3", role="rank")
    attempt = make_attempt_dir(make_run_dir(str(tmp_path), "abc"), 0, 4)
    s = reify(spec, attempt, [4, 5, 6, 7])
    assert s[0].stdout.endswith("/0/stdout.log") and s[0].tee_stdout and s[0].stderr == CONSOLE
    assert s[1].stderr.endswith("/1/stderr.log") and s[1].stdout == os.devnull  # filtered out
    assert s[2].stdout == os.devnull and s[2].stderr == os.devnull and not s[2].tee_stdout
    assert s[3].tee_stdout and s[3].tee_stderr and s[3].prefix == "[rank3]:"
    assert all(x.error_file == os.path.join(attempt, str(i), "error.json") for i, x in enumerate(s))


def test_prefix_template_and_layout(tmp_path: str) -> None:
    spec = LogsSpec(tee="3", prefix_template="[rank${rank}]: ")
    run_dir = make_run_dir(str(tmp_path), "run9")
    assert re.fullmatch(r"run9_[a-z0-9_]{8}", os.path.basename(run_dir))
    first = make_attempt_dir(run_dir, 1, 2)
    open(os.path.join(first, "0", "stdout.log"), "w").close()
    again = make_attempt_dir(run_dir, 1, 2)  # deleted and recreated, as torch does
    assert again == first and os.listdir(os.path.join(again, "0")) == []
    assert [s.prefix for s in reify(spec, again, [10, 11])] == ["[rank10]: ", "[rank11]: "]


# ---- NCCL's environment ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "level"),
    [(None, Level.NONE), ("", Level.NONE), ("version", Level.VERSION), ("WARN", Level.WARN),
     ("Info", Level.INFO), ("TRACE", Level.INFO), ("bogus", Level.NONE)],
)  # fmt: skip
def test_nccl_debug_levels(value: str | None, level: Level) -> None:
    assert nccl_env.parse_level(value) is level


def test_nccl_debug_subsys() -> None:
    assert nccl_env.parse_subsys(None) == Subsys.INIT | Subsys.BOOTSTRAP | Subsys.ENV
    assert nccl_env.parse_subsys("coll,Net") == Subsys.COLL | Subsys.NET
    assert nccl_env.parse_subsys("ALL") == nccl_env.ALL
    inverted = nccl_env.parse_subsys("^INIT,COLL")
    assert not inverted & (Subsys.INIT | Subsys.COLL) and inverted & Subsys.GRAPH
    debug = nccl_env.parse({"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "COLL"})
    assert debug.info(("COLL",)) and not debug.info(("INIT", "GRAPH"))
    assert not nccl_env.parse({"NCCL_DEBUG": "WARN"}).info(("INIT",))
    assert nccl_env.parse({"NCCL_DEBUG": "WARN"}).version


def test_nccl_debug_file_expansion() -> None:
    path = nccl_env.debug_file_path("/tmp/x.%h.%p.%%.%z", host="gpu-3", pid=42)
    assert path == "/tmp/x.gpu-3.42.%.%z"


# ---- NCCL's lines for one rank ---------------------------------------------------------------
def _me(rank: int, *, world: int = 16, nproc: int = 8, link: str = "NVLink4") -> NcclRank:
    node, local = divmod(rank, nproc)
    return NcclRank(rank=rank, local_rank=local, node=node, host=f"gpu-{node:02d}.cluster",
                    pid=4000 + rank, world_size=world, nproc_per_node=nproc,
                    nnodes=-(-world // nproc), intra_node_link=link, nccl="2.21.5", cuda="12.4",
                    comm_seed="run/0")  # fmt: skip


def _kinds(me: NcclRank) -> list[tuple[str, re.Match[str]]]:
    out = []
    for line in init_lines(me, bootstrap_s=0.4, total_s=1.1):
        found = nccl_kind(prefix(me, line.tid) + "NCCL INFO " + line.text)
        assert found is not None, line.text
        out.append(found)
    return out


def test_every_channel_every_tree_and_both_transports() -> None:
    kinds = _kinds(_me(7))  # the last GPU of node 0: its ring hop leaves the node
    rings = [m for k, m in kinds if k == "ring"]
    assert len(rings) == 24 and {m["total"] for m in rings} == {"24"}
    assert all(len(m["members"].split()) == 16 for m in rings)
    trees = next(m for k, m in kinds if k == "trees")
    assert trees["trees"].count("[") == 24
    vias = {m["via"] for k, m in kinds if k == "hop"}
    assert "NET/IB/" in " ".join(vias) and any(v.startswith("P2P/") for v in vias)
    assert any(k == "nvls_head" for k, _ in kinds)
    assert next(m for k, m in kinds if k == "channels")["nvls"] == "16"
    comm = next(m for k, m in kinds if k == "comm")
    assert int(comm["comm"], 16) % 16 == 0 and comm["nodes"] == "2"
    assert [m["state"] for k, m in kinds if k == "init"] == ["START", "COMPLETE"]


def test_pcie_node_uses_shm_and_no_nvls() -> None:
    kinds = _kinds(_me(1, world=4, nproc=4, link="PCIe4"))
    assert {m["via"] for k, m in kinds if k == "hop"} == {"SHM/direct/direct"}
    assert not any(k == "nvls_head" for k, _ in kinds)


def test_coll_line_format() -> None:
    me = _me(3)
    line = coll_line(me, name="AllReduce", op_count=26, count=3, datatype="float64", op="sum",
                     buffer="step")  # fmt: skip
    found = MESSAGES["coll"].match(line)
    assert found and found["op_count"] == "1a" and found["dtype"] == "8" and found["n"] == "16"
    assert found["send"] == found["recv"]


# ---- error.json --------------------------------------------------------------------------------
def test_record_exception_writes_torchs_schema(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "error.json")
    try:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    except RuntimeError as exc:
        assert record_exception(exc, path) == path
    with open(path) as f:
        text = f.read()
    data = json.loads(text)
    jsonschema.validate(data, ERROR_FILE_SCHEMA)
    assert "\n" not in text  # json.dump: one line
    assert data["message"]["message"].startswith("RuntimeError: CUDA error")
    assert "Traceback (most recent call last)" in data["message"]["extraInfo"]["py_callstack"]


def test_signal_death_adds_error_code(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "error.json")
    record_signal_death(path, exitcode=-9, pid=77, signal_name="SIGKILL")
    with open(path) as f:
        data = json.load(f)
    jsonschema.validate(data, ERROR_FILE_SCHEMA)
    assert data["message"]["errorCode"] == -9
    assert data["message"]["message"] == "Signal 9 (SIGKILL) received by PID 77"
    try:
        raise ValueError("boom")
    except ValueError as exc:
        record_exception(exc, path)
    record_signal_death(path, exitcode=-6, pid=77, signal_name="SIGABRT")  # keeps the rank's
    with open(path) as f:
        data = json.load(f)
    assert data["message"]["message"] == "ValueError: boom" and data["message"]["errorCode"] == -6


def test_a_failing_rank_prints_its_traceback_and_writes_its_error_file(
    tmp_path: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = os.path.join(tmp_path, "error.json")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", path)
    rank = SimpleNamespace(spec=SimpleNamespace(rank=6))
    try:
        raise CollectiveTimeout(src=5, seq=9, waited_s=30.0)
    except CollectiveTimeout as exc:
        assert Rank._record_error(rank, exc) == path  # type: ignore[arg-type]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[rank6]: Traceback (most recent call last):"
    assert all(TRACEBACK_LINE.match(line) for line in err)
    assert err[-1].endswith("CollectiveTimeout: no message from rank 5 for collective 9 in 30.0s")
    with open(path) as f:
        data = json.load(f)
    jsonschema.validate(data, ERROR_FILE_SCHEMA)
    assert data["message"]["message"].startswith("CollectiveTimeout: no message from rank 5")
