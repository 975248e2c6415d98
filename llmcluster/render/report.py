"""Failure reports, restarts and the closing summary, in torch.distributed.elastic's formats.

A failure prints what an engineer knows from real runs (``real-logs.md`` 2c): the NCCL
watchdog timeout from the surviving ranks, the agent's ``Sending process N closing
signal SIGTERM`` lines, and the ``ChildFailedError`` box with its Root Cause entry.
"""

from __future__ import annotations

import io
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from llmcluster.render.fmt import ascii_safe, c10_glog, duration, glog, hms, human_count, num
from llmcluster.render.launch import agent_pid

MP_API = "torch/distributed/elastic/multiprocessing/api.py:1014"
MP_FAILED = "torch/distributed/elastic/multiprocessing/api.py:870"
AGENT_API = "torch/distributed/elastic/agent/server/api.py:736"
BOX_WIDTH = 60
SIGNALS = {"SIGKILL": 9, "SIGTERM": 15, "SIGABRT": 6, "SIGSEGV": 11, "SIGINT": 2}


def _witness(run: dict[str, Any], failed: int) -> list[int]:
    """Two surviving ranks whose watchdogs fire (the dead one's ring neighbours)."""
    world = run["world_size"]
    return sorted({(failed + 1) % world, (failed - 1) % world} - {failed})


def failure_lines(run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
    """Watchdog lines, the agent tearing the group down, and the ChildFailedError box."""
    t, rank = float(rec["time"]), rec["rank"]
    timeout = rec["timeout_ms"]
    work = (
        f"WorkNCCL(SeqNum={rec['seq']}, OpType={rec['op']}, NumelIn={rec['numel']}, "
        f"NumelOut={rec['numel']}, Timeout(ms)={timeout})"
    )
    lines = []
    for other in _witness(run, rank):
        stamp = c10_glog("E", t, "ProcessGroupNCCL.cpp:629")
        lines.append(
            f"[rank{other}]:{stamp} [Rank {other}] Watchdog caught collective operation timeout: "
            f"{work} ran for {timeout + 81} milliseconds before timing out."
        )
        lines.append(
            f"[rank{other}]:{c10_glog('E', t, 'ProcessGroupNCCL.cpp:695')} [Rank {other}] To avoid "
            "data inconsistency, we are taking the entire process down."
        )
    pid, apid = agent_pid(run), rec.get("pid", 0)
    nproc = run["nproc_per_node"]
    node_first = rec["node"] * nproc
    for local in range(min(nproc, run["world_size"] - node_first)):
        if node_first + local == rank:
            continue
        other_pid = run["pids"][node_first + local] if node_first + local < len(run["pids"]) else 0
        lines.append(
            f"{glog('W', t, pid, MP_API)} Sending process {other_pid} closing signal SIGTERM"
        )
    lines.append(
        f"{glog('E', t, pid, MP_FAILED)} failed (exitcode: {rec['exitcode']}) local_rank: "
        f"{rec['local_rank']} (pid: {apid}) of binary: /usr/bin/python3"
    )
    signal = rec.get("signal") or ""
    traceback = (
        f"Signal {SIGNALS.get(signal, -rec['exitcode'])} ({signal}) received by PID {apid}"
        if signal
        else "To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html"
    )
    stamp = time.strftime("%Y-%m-%d_%H:%M:%S", time.localtime(t))
    lines += [
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "=" * BOX_WIDTH,
        "pretrain_gpt.py FAILED",
        "-" * BOX_WIDTH,
        "Failures:",
        "  <NO_OTHER_FAILURES>",
        "-" * BOX_WIDTH,
        "Root Cause (first observed failure):",
        "[0]:",
        f"  time      : {stamp}",
        f"  host      : {rec['host']}",
        f"  rank      : {rank} (local_rank: {rec['local_rank']})",
        f"  exitcode  : {rec['exitcode']} (pid: {apid})",
        f"  error_file: {rec.get('error_file') or '<N/A>'}",
        f"  traceback : {traceback}",
        "=" * BOX_WIDTH,
        f"llmcluster: {rec['reason']}",
    ]
    return lines


def agent_restart_lines(run: dict[str, Any], t: float, *, attempt: int, restarts_left: int,
                        max_restarts: int) -> list[str]:  # fmt: skip
    """torchrun's elastic agent restarting its worker group (attempt ``attempt``)."""
    a, w = glog("I", t, agent_pid(run), AGENT_API), glog("W", t, agent_pid(run), AGENT_API)
    return [
        f"{w} [default] Worker group FAILED. {restarts_left + 1}/{max_restarts} "
        "attempts left; will restart worker group",
        f"{a} [default] Stopping worker group",
        f"{a} [default] Rendezvous'ing worker group",
        f"{a} [default] Rendezvous complete for workers. Result:",
        f"{a}   restart_count={attempt}",
        f"{a}   master_addr={run['master_addr']}",
        f"{a}   master_port={run['master_port']}",
        f"{a} [default] Starting worker group",
    ]


def restart_lines(run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
    """The elastic agent restarting the worker group from the last checkpoint."""
    agent = agent_restart_lines(run, float(rec["time"]), attempt=rec["attempt"],
                                restarts_left=rec["restarts_left"],
                                max_restarts=rec["max_restarts"])  # fmt: skip
    return [
        *agent,
        f"llmcluster: resuming from the checkpoint at step {rec['resume_step'] - 1}; "
        f"{rec.get('replayed_steps', 0)} step(s) to replay, {duration(rec['lost_s'])} of work lost",
    ]


def summary_renderable(run: dict[str, Any] | None, rec: dict[str, Any], *,
                       ascii_only: bool) -> Table:  # fmt: skip
    """The final summary as a rich Table."""
    table = Table(
        title="Training summary",
        box=box.ASCII if ascii_only else box.ROUNDED,
        show_header=False,
        expand=False,
    )
    table.add_column("what", style="bold")
    table.add_column("value")
    if run is not None:
        model, gpu = run["model"], run["gpu"]
        table.add_row("Run", f"{run['run_id']} (seed {run['seed']})")
        table.add_row("Model", f"{model['name']} ({human_count(model['params'])} params)")
        table.add_row("GPUs", f"{run['world_size']} x {gpu['name']} on {run['nnodes']} node(s)")
        table.add_row("Strategy", f"{run['plan']['strategy']}, {run['plan']['precision']}")
    table.add_row("Steps", str(rec["steps"]))
    table.add_row(
        "Final loss / PPL", f"{num(rec['final_loss'], '.4f')} / {num(rec['final_ppl'], '.2f')}"
    )
    table.add_row("Tokens trained", human_count(rec["tokens_total"]))
    table.add_row("Simulated time", hms(rec["sim_seconds"]))
    wall = rec["wall_seconds"]
    table.add_row("Wall time", f"{hms(wall)} ({wall:.0f}s)" if wall >= 60 else f"{wall:.1f}s")
    table.add_row("Mean MFU", f"{100 * rec['mfu']:.1f}%")
    table.add_row("Checkpoints", str(rec["checkpoints"]))
    table.add_row("Restarts", f"{rec['restarts']} ({hms(rec['lost_s'])} lost)")
    table.add_row("Dropped messages", str(rec["dropped_messages"]))
    table.add_row("Exit", rec["exit"])
    return table


def summary_lines(run: dict[str, Any] | None, rec: dict[str, Any], *, width: int,
                  ascii_only: bool) -> list[str]:  # fmt: skip
    """The summary table as plain lines no wider than ``width``."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, legacy_windows=False)
    console.print(summary_renderable(run, rec, ascii_only=ascii_only))
    lines = buffer.getvalue().rstrip("\n").split("\n")
    return [ascii_safe(line) for line in lines] if ascii_only else lines
