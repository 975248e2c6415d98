"""``llmcluster launch``'s command line: torchrun's flags and spellings, who hosts the
coordinator, bad input as one line and exit 2 before anything starts, and a one-node job."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from collections.abc import Iterator

import pytest
from conftest import Running, records, run_cli
from inherited_modules import heavy_modules_of_ranks

from llmcluster.cli import parse
from llmcluster.commands import LaunchRun, NodeRun

SCHEDULER_PREFIXES = ("PET_", "SLURM_", "SLURMD_")
SCHEDULER_VARS = ("JOB_COMPLETION_INDEX", "LLMCLUSTER_MASTER_ADDR")


@pytest.fixture(autouse=True)
def _no_scheduler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever job the suite itself runs in (Slurm, a pod) must not place these nodes."""
    for name in list(os.environ):
        if name.startswith(SCHEDULER_PREFIXES) or name in SCHEDULER_VARS:
            monkeypatch.delenv(name)
    yield


def _free_port() -> int:
    """A port whose successor is free too (the records port)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65534:
            with socket.socket() as other:
                try:
                    other.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port


def _launch(*args: str) -> LaunchRun:
    command = parse(["launch", *args])
    assert isinstance(command, LaunchRun)
    return command


def test_node_rank_zero_hosts_the_coordinator_and_runs_its_own_node() -> None:
    port = _free_port()
    run = _launch("--nnodes", "3", "--nproc_per_node", "4", "--node-rank", "0", "--master-addr",
                  "127.0.0.1", "--master-port", str(port), "--token", "t", "--seed", "5",
                  "--max-restarts", "2")  # fmt: skip
    assert run.coordinator is not None
    config = run.coordinator.config
    assert (config.ranks, config.nproc_per_node, config.nnodes, config.max_restarts) == (
        12, 4, 3, 2)  # fmt: skip
    assert (config.master_addr, config.master_port, run.coordinator.bind) == (
        "127.0.0.1", port, "0.0.0.0")  # fmt: skip
    node = run.node
    assert (node.node_rank, node.nnodes, node.nproc_per_node, node.master_port) == (0, 3, 4, port)
    assert "node rank 0 of 3" in run.banner and "serving it here" in run.banner


def test_other_node_ranks_only_join() -> None:
    run = _launch("--nnodes", "3", "--nproc-per-node", "4", "--node_rank", "2", "--master_addr",
                  "127.0.0.1", "--token", "t")  # fmt: skip
    assert run.coordinator is None and run.node.node_rank == 2 and run.node.master_port == 29500
    assert "joining it" in run.banner


def test_pet_variables_fill_what_flags_do_not_say(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "3", "PET_NODE_RANK": "1",
                        "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": "29999",
                        "LLMCLUSTER_TOKEN": "t"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    run = _launch("--nproc-per-node", "2")
    assert (run.node.nnodes, run.node.nproc_per_node, run.node.node_rank) == (2, 2, 1)
    assert run.node.master_port == 29999 and run.coordinator is None


def test_c10d_hosts_the_coordinator_where_the_endpoint_is_this_machine() -> None:
    port = _free_port()
    here = _launch("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                   f"127.0.0.1:{port}", "--token", "t")  # fmt: skip
    assert here.coordinator is not None and here.node.node_rank == -1
    elsewhere = _launch(
        "--nnodes",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "192.0.2.1:29400",
        "--token",
        "t",
    )  # TEST-NET-1: never this machine
    assert elsewhere.coordinator is None and elsewhere.node.master_addr == "192.0.2.1"


def test_a_one_node_job_needs_no_token_and_listens_on_loopback() -> None:
    run = _launch("--nproc-per-node", "2", "--master-port", str(_free_port()))
    assert run.coordinator is not None and run.coordinator.bind == "127.0.0.1"
    assert run.coordinator.token == run.node.token != ""
    port = _free_port()
    c10d = _launch("--rdzv-backend", "c10d", "--rdzv-endpoint", f"192.0.2.1:{port}")
    assert c10d.coordinator is not None and c10d.node.master_addr == "127.0.0.1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nnodes", "0"], "--nnodes must be between 1 and 512"),
        (["--rdzv-endpoint", "nohostport"], "--rdzv-endpoint must be HOST:PORT"),
        (["--node-rank", "3", "--nnodes", "2"], "--node-rank 3 is out of range for 2 node(s)"),
        (["--rdzv-backend", "etcd"], "--rdzv-backend must be static or c10d"),
        (["--nnodes", "2", "--node-rank", "1"], "needs --token (or LLMCLUSTER_TOKEN)"),
        (["--nproc-per-node", "0"], "--nproc-per-node must be a whole number 1-64"),
        (["--model", "nope"], "nope"),
        (["--ranks", "8"], "unrecognized arguments: --ranks 8"),
        (["--monitor-interval", "-5"], "--monitor-interval must be seconds"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_anything_starts(
    args: list[str], message: str
) -> None:
    done = run_cli("launch", *args, timeout=30)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("llmcluster: error: ") and message in lines[0], lines[0]
    assert done.stdout == ""


def test_pet_errors_name_the_variable() -> None:
    done = run_cli("launch", env={**os.environ, "PET_NNODES": "many"}, timeout=30)
    assert done.returncode == 2 and "PET_NNODES must be N or MIN:MAX" in done.stderr


def test_help_says_min_max_is_taken_as_fixed() -> None:
    done = run_cli("launch", "--help", timeout=30)
    text = " ".join(done.stdout.split())
    assert done.returncode == 0 and "MIN:MAX taken as MAX" in text and "--nproc_per_node" in text


@pytest.mark.timeout(120)
def test_a_one_node_launch_trains_to_the_end(clean_table: None) -> None:
    port = str(_free_port())
    done = run_cli("launch", "--nproc-per-node", "2", "--master-port", port, "--steps", "3",
                   "--speed", "1e6", "--seed", "11", "--format", "jsonl", timeout=90)  # fmt: skip
    assert done.returncode == 0, done.stderr
    recs = records(done.stdout)
    assert recs[0]["type"] == "run" and recs[0]["world_size"] == 2
    assert recs[-1]["type"] == "summary" and recs[-1]["exit"] == "completed"
    assert done.stderr.startswith("llmcluster launch: job (command line): node rank 0 of 1")


@pytest.mark.timeout(120)
def test_the_rendezvous_backend_and_monitor_interval_are_the_launchs_own(
    clean_table: None,
) -> None:
    """torchrun's launch configs show them, and the agent checks its ranks that often: a rank
    killed mid-run is still reported, the group restarted and the run completed."""
    port = str(_free_port())
    done = run_cli("launch", "--nproc-per-node", "2", "--master-port", port, "--steps", "4",
                   "--speed", "1e6", "--seed", "11", "--monitor-interval", "0.7",
                   "--max-restarts", "1", "--inject", "kill:rank=1,step=2", "--style",
                   "megatron", "--ui", "log", timeout=90)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rdzv_backend     : static" in done.stdout, done.stdout[:3000]
    assert "monitor_interval : 0.7" in done.stdout
    assert "restart 1/1" in done.stderr or "restart 1/1" in done.stdout
    jsonl = run_cli("launch", "--nproc-per-node", "2", "--master-port", str(_free_port()),
                    "--steps", "1", "--speed", "1e6", "--rdzv-backend", "c10d", "--format", "jsonl",
                    timeout=90)  # fmt: skip
    run = records(jsonl.stdout)[0]
    assert (run["rdzv_backend"], run["monitor_interval_s"]) == ("c10d", 0.1)


def test_a_slurm_launcher_names_the_job_its_nodes_and_this_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slurm = {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "localhost,127.0.0.2",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURMD_NODENAME": "n2",
             "SLURM_GPUS_ON_NODE": "4", "LLMCLUSTER_TOKEN": "t"}  # fmt: skip
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    run = _launch()
    assert run.banner.startswith(
        "llmcluster launch: Slurm job 77 on localhost,127.0.0.2 (localhost, 127.0.0.2): "
        "node rank 1 of 2 (n2), 4 rank(s) per node; static rendezvous at localhost:29500"
    ), run.banner
    assert run.coordinator is None and run.node.master_addr == "localhost"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_hosting_launcher_leaves_no_process_behind(sig: int, clean_table: None) -> None:
    """Its agent (PDEATHSIG) and the agent's ranks end with it, however it ends."""
    run = Running("launch", "--nproc-per-node", "2", "--master-port", str(_free_port()),
                  "--steps", "100000", "--speed", "50", "--format", "jsonl")  # fmt: skip
    try:
        run.wait_for(lambda record: record.get("type") == "step", timeout_s=60)
        os.kill(run.proc.pid, sig)
        code, _, err = run.finish(timeout_s=30)
    finally:
        run.kill()
    assert code == (-sig if sig == signal.SIGKILL else 128 + sig), err[-1000:]


def test_a_node_checks_its_ranks_at_its_own_monitor_interval() -> None:
    """``llmcluster node --monitor-interval`` is that node's own, as torchrun's is per node: its
    agent sees (and its launch lines show) it over the coordinator's."""
    from llmcluster.config import RunConfig
    from llmcluster.launch.remote import node_spec
    from llmcluster.worker.agentspec import AgentSpec

    node = parse(["node", "--monitor-interval", "2.5", "--token", "t"])
    assert isinstance(node, NodeRun) and node.monitor_interval_s == 2.5
    spec = node_spec(**{f.name: getattr(node, f.name) for f in dataclasses.fields(node)})
    assert isinstance(spec, AgentSpec)
    assert spec.over(RunConfig(monitor_interval_s=0.1)).monitor_interval_s == 2.5
    bad = run_cli("node", "--monitor-interval", "0", timeout=30)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "--monitor-interval: expected seconds in (0, 3600]" in bad.stderr


def test_ranks_serving_curve_inherit_the_zap_handler_from_their_agent(clean_table: None) -> None:
    """zmq.auth is imported only where CURVE is served, and then once, by the node agent
    before it forks: not by each rank after (50-60 ms of CPU apiece)."""
    port = _free_port()
    held = heavy_modules_of_ranks(
        "launch", "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(port), "--token", "s3cret", "--steps", "1", "--speed", "1e6",
    )  # fmt: skip
    assert set(held) == {0, 1}
    assert all("zmq.auth" in modules.split(",") for modules in held.values()), held
