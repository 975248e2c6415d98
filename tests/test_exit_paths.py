"""Exit paths a terminal user meets: a closed terminal, a closed pipe, and a demo beside the suite.

A killed tmux session (SIGHUP to the run, its terminal gone) ends the run like
SIGTERM and leaves no process or directory; ``| head`` ends the run as soon as head
exits (exit 141, as a Unix tool killed by SIGPIPE), with no traceback; and a run
started by someone else (another marker) survives a test's process checks.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest
from conftest import (
    MARK,
    Running,
    cli,
    own_processes,
    owned_table,
    processes_marked,
    records,
    run_cli,
    wait_until_clean,
)

from llmcluster.control.rundir import socket_root

SLOW_RUN = ("--ranks", "8", "--steps", "100000", "--speed", "200")


def _run_dirs(pids: set[int]) -> list[str]:
    """Socket directories of these processes (the coordinator's and each agent's)."""
    return [path for pid in pids for path in glob.glob(f"{socket_root()}/llmcluster-{pid}-*")]


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.timeout(90)
def test_a_killed_tmux_session_ends_the_run_and_leaves_nothing(
    test_mark: str, clean_table: None
) -> None:
    server = f"llmc-test-{test_mark[:12]}"  # a private tmux server: the user's is untouched
    tmux = ["tmux", "-L", server]
    command = shlex.join(cli(*SLOW_RUN, "--ui", "log"))
    subprocess.run([*tmux, "new-session", "-d", "-s", "run", "-x", "160", "-y", "50", command],
                   check=True, timeout=10)  # fmt: skip
    try:

        def training() -> bool:
            pane = subprocess.run([*tmux, "capture-pane", "-p", "-t", "run"], text=True,
                                  capture_output=True, timeout=10).stdout  # fmt: skip
            return re.search(r"\| step +\d+/", pane) is not None

        _wait(training, 60, "the run to train in the tmux pane")
        seen = {p.pid for p in own_processes()}
        ranks = [p for p in own_processes() if p.comm.startswith("llmc-rank")]
        assert len(ranks) == 8
        subprocess.run([*tmux, "kill-session", "-t", "run"], check=True, timeout=10)
        left = wait_until_clean(10.0)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)
    assert left == [], f"still alive after the session was killed: {left}"
    assert _run_dirs(seen) == []


@pytest.mark.parametrize("output", ["log", "jsonl"])
@pytest.mark.timeout(60)
def test_piping_into_head_ends_the_run_promptly(output: str, clean_table: None) -> None:
    command = shlex.join(cli(*SLOW_RUN, "--format", output))
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", f"{command} | head -5; echo exit=${{PIPESTATUS[0]}} >&2"],
        capture_output=True, text=True, timeout=45, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    took = time.monotonic() - started
    assert len(done.stdout.splitlines()) == 5, (done.stdout, done.stderr)
    assert done.stderr.splitlines()[-1] == "exit=141", done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    print(f"| head -5 ({output}): the whole pipeline took {took:.2f}s")


def test_a_closed_stdout_stops_the_run_within_seconds(clean_table: None) -> None:
    run = Running(*SLOW_RUN, "--format", "jsonl")
    try:
        run.wait_for(lambda r: r["type"] == "step")
        assert run.proc.stdout is not None
        run.proc.stdout.close()  # the only reader: the run's stdout is now a broken pipe
        closed = time.monotonic()
        code = run.proc.wait(timeout=15)
        took = time.monotonic() - closed
        err = run.stderr_text()
    finally:
        run.kill()
    assert code == 141
    assert "Traceback" not in err, err
    assert took < 5.0, f"the run took {took:.1f}s to notice its closed stdout"


def _until_the_end_waits_for_the_reader(run: Running, *, timeout_s: float) -> None:
    """Hold the read back (on purpose) until the coordinator says its end waits for the
    reader; this polls stderr's lines."""
    deadline = time.monotonic() + timeout_s
    while not any("waiting for the reader" in line for line in run.stderr_lines_so_far()):
        assert run.proc.poll() is None, run.stderr_text()
        assert time.monotonic() < deadline, "the coordinator never said it waits"
        time.sleep(0.05)


@pytest.mark.timeout(90)
def test_a_reader_that_pauses_at_the_end_gets_every_record_whole(clean_table: None) -> None:
    """``llmcluster --format jsonl | shipper`` where the shipper stops reading for a while
    as the run ends: rank 0's display blocks on the full pipe in the middle of a line. The
    coordinator says so and waits; every record then arrives once, and whole (writing the
    rest itself, it cut into that line)."""
    run = Running("--ranks", "64", "--steps", "20", "--speed", "1e6", "--format", "jsonl")
    try:
        _until_the_end_waits_for_the_reader(run, timeout_s=60)
        code, seen, err = run.finish(timeout_s=30)  # (records() parses every line)
    finally:
        run.kill()
    assert code == 0, err
    assert [r["step"] for r in seen if r["type"] == "step"] == list(range(1, 21))
    assert [r["type"] for r in seen].count("summary") == 1 and seen[-1]["type"] == "summary"
    assert "showing the rest here" not in err, err


def test_a_restart_while_the_reader_lags_leaves_no_half_record(clean_table: None) -> None:
    """``llmcluster --format jsonl | shipper``, a slow shipper and ranks killed twice mid-run:
    each restart kills rank 0 while its display waits on the full pipe, and the next
    attempt's display replays what was not shown. Every line still parses (rank 0 was
    killed in the middle of a line, and the replay continued that line)."""
    kills = "kill:rank=5,step=8;kill:rank=9,step=14"
    run = Running("--ranks", "64", "--steps", "20", "--speed", "1e6", "--inject", kills,
                  "--format", "jsonl")  # fmt: skip
    try:
        _until_the_end_waits_for_the_reader(run, timeout_s=90)
        code, seen, err = run.finish(timeout_s=30)  # (records() parses every line)
    finally:
        run.kill()
    assert code == 0, err
    assert [r["type"] for r in seen].count("restart") == 2
    assert [r["step"] for r in seen if r["type"] == "step"][-1] == 20
    assert [r["type"] for r in seen].count("summary") == 1 and seen[-1]["type"] == "summary"


@pytest.mark.timeout(90)
def test_a_demo_beside_the_suite_survives_a_clean_table_test(test_mark: str) -> None:
    demo_mark = f"demo-{uuid.uuid4().hex}"  # someone else's run: not this test's marker
    demo = Running(*SLOW_RUN, "--format", "jsonl", env={MARK: demo_mark})
    try:
        first = demo.wait_for(lambda r: r["type"] == "run")
        demo.wait_for(lambda r: r["type"] == "step")
        demo_pids = {demo.proc.pid, *first["pids"]}
        assert demo_pids <= {p.pid for p in processes_marked(demo_mark)}
        with owned_table():  # what a clean_table test does before and after its body
            assert not demo_pids & {p.pid for p in own_processes()}
            done = run_cli("--ranks", "4", "--steps", "2", "--format", "jsonl", "--speed", "1e6")
            assert done.returncode == 0, done.stderr
        assert demo.proc.poll() is None
        for pid in demo_pids:
            os.kill(pid, 0)  # still alive (raises if not)
        step = demo.seen[-1]["step"] if demo.seen[-1]["type"] == "step" else 1
        demo.wait_for(lambda r: r["type"] == "step" and r["step"] > step)  # and still training
        demo.proc.send_signal(signal.SIGINT)
        code, records, _ = demo.finish(timeout_s=15)
    finally:
        demo.kill()
    assert code == 130 and records[-1]["type"] == "summary"
    deadline = time.monotonic() + 5
    while processes_marked(demo_mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_marked(demo_mark) == []


def test_started_with_stdout_closed_is_one_line_exit_2(clean_table: None) -> None:
    command = shlex.join(cli("--ranks", "2", "--steps", "1", "--speed", "1e6"))
    done = subprocess.run(["bash", "-c", f"{command} >&-"], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["llmcluster: error: stdout is closed; nothing to show "
                                        "the run on"]  # fmt: skip


def test_started_with_stderr_closed_still_runs(clean_table: None) -> None:
    command = shlex.join(cli("--ranks", "2", "--steps", "2", "--speed", "1e6", "--format", "jsonl"))
    done = subprocess.run(["bash", "-c", f"{command} 2>&-"], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0
    assert records(done.stdout)[-1]["exit"] == "completed"


@pytest.mark.timeout(90)
def test_kill_9_of_a_tcp_coordinator_leaves_its_node_nothing(clean_table: None) -> None:
    with socket.socket() as probe:  # two free loopback ports: control and records
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = ("--token", "kill-nine")
    coordinator = subprocess.Popen(
        cli("coordinator", "--bind", "127.0.0.1", "--port", str(port), "--nnodes", "1",
            "--nproc-per-node", "4", "--steps", "100000", "--speed", "200", "--format",
            "jsonl", *token),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    node = subprocess.Popen(
        cli("node", "--master-addr", "127.0.0.1", "--master-port", str(port), *token),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert node.stdout is not None
        for line in node.stdout:  # rank 0's display: the run is training
            if line.startswith('{"type":"step"'):
                break
        made = {path for path in glob.glob(os.path.join(socket_root(),
                                                        f"llmcluster-{node.pid}-*"))}  # fmt: skip
        assert made  # the node agent's socket directory (named by its pid: only ours)
        coordinator.kill()
        assert node.wait(timeout=30) == 1  # it noticed the silence and stopped its ranks
        assert wait_until_clean(5.0) == []
        assert not made & set(glob.glob(os.path.join(socket_root(), "llmcluster-*")))
    finally:
        for proc in (coordinator, node):
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
