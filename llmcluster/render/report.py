"""Failure reports, restarts, interrupts and the closing summary, in torch.distributed.elastic's
formats.

A failure prints what an engineer knows from real runs (``real-logs.md`` 2c): the NCCL
watchdog timeout from the surviving ranks (tee'd by torchrun in the framework styles), the
agent's ``Sending process N closing signal SIGTERM`` lines, and the ``ChildFailedError`` box
with its Root Cause entry. ``llmcluster:`` explanations belong to the default style only.
"""

from __future__ import annotations

import io
import re
import time

from rich import box
from rich.console import Console
from rich.table import Table

from llmcluster.render.fmt import (
    ascii_safe,
    c10_glog,
    duration,
    glog,
    hms,
    human_count,
    num,
    plural,
    tee_prefix,
)
from llmcluster.render.launch import Launch, pid_of
from llmcluster.wire.records import FailureRecord, RestartRecord, RunRecord, SummaryRecord

MP_API = "torch/distributed/elastic/multiprocessing/api.py:1014"
MP_FAILED = "torch/distributed/elastic/multiprocessing/api.py:870"
AGENT_API = "torch/distributed/elastic/agent/server/api.py:736"
AGENT_SIGNAL = "torch/distributed/elastic/agent/server/api.py:719"
BOX_WIDTH = 60
SIGNALS = {"SIGKILL": 9, "SIGTERM": 15, "SIGABRT": 6, "SIGSEGV": 11, "SIGINT": 2}
INTERRUPTED = re.compile(r"^interrupted \((SIG[A-Z]+)\)$")


def _witness(run: RunRecord, failed: int) -> list[int]:
    """Two surviving ranks whose watchdogs fire (the dead one's ring neighbours)."""
    world = run.world_size
    return sorted({(failed + 1) % world, (failed - 1) % world} - {failed})


def _node_pids(run: RunRecord, node: int) -> list[tuple[int, int]]:
    """(global rank, pid) of every worker on ``node``."""
    first = node * run.nproc_per_node
    return [(r, pid_of(run, r)) for r in range(first, min(first + run.nproc_per_node,
                                                           run.world_size))]  # fmt: skip


def _watchdog_lines(run: RunRecord, rec: FailureRecord, *, tee: bool) -> list[str]:
    """The surviving neighbours' NCCL watchdogs, each at its own time: it entered the
    collective a little apart from the others and fires one timeout later."""
    work = (
        f"WorkNCCL(SeqNum={rec.seq}, OpType={rec.op}, NumelIn={rec.numel}, "
        f"NumelOut={rec.numel}, Timeout(ms)={rec.timeout_ms})"
    )
    lines = []
    for other in _witness(run, rec.rank):
        skew_s = (other * 7919 + rec.seq * 104729) % 97 / 1000.0  # its own arrival, ms apart
        t = rec.time + skew_s
        prefix = tee_prefix(other % run.nproc_per_node) if tee else ""
        lines.append(
            f"{prefix}[rank{other}]:{c10_glog('E', t, 'ProcessGroupNCCL.cpp:629')} [Rank {other}] "
            f"Watchdog caught collective operation timeout: {work} ran for "
            f"{rec.timeout_ms + 40 + int(skew_s * 1000)} milliseconds before timing out."
        )
        lines.append(
            f"{prefix}[rank{other}]:{c10_glog('E', t + 0.05, 'ProcessGroupNCCL.cpp:695')} "
            f"[Rank {other}] To avoid data inconsistency, we are taking the entire process down."
        )
    return lines


def hung(rec: FailureRecord) -> bool:
    """A rank that went silent (its peers' watchdogs fire) rather than one that died."""
    return "stopped answering" in rec.reason or "watchdog" in rec.reason


def restarts_after(rec: FailureRecord) -> bool:
    """The elastic agent restarts the worker group after this failure."""
    return rec.attempt < rec.max_restarts


def failure_lines(run: RunRecord, rec: FailureRecord, *, tee: bool = False,
                  explain: bool = True) -> list[str]:  # fmt: skip
    """What torchrun prints when a worker fails: the peers' watchdogs for a hang, the agent's
    ``failed (exitcode ...)`` line; when no restart is left, the group's teardown and the
    ChildFailedError box (and with ``explain``, llmcluster's one-line reason)."""
    t, rank, agent, pid = rec.time, rec.rank, run.agent_pid, rec.pid
    lines = _watchdog_lines(run, rec, tee=tee) if hung(rec) else []
    lines.append(
        f"{glog('E', t, agent, MP_FAILED)} failed (exitcode: {rec.exitcode}) local_rank: "
        f"{rec.local_rank} (pid: {pid}) of binary: /usr/bin/python3"
    )
    if restarts_after(rec):  # the agent's restart lines follow with the restart record
        return [*lines, f"llmcluster: {rec.reason}"] if explain else lines
    for other, other_pid in _node_pids(run, rec.node):
        if other != rank:
            lines.append(
                f"{glog('W', t, agent, MP_API)} Sending process {other_pid} closing signal SIGTERM"
            )
    signal = rec.signal or ""
    traceback = (
        f"Signal {SIGNALS.get(signal, -rec.exitcode)} ({signal}) received by PID {pid}"
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
        f"  host      : {rec.host}",
        f"  rank      : {rank} (local_rank: {rec.local_rank})",
        f"  exitcode  : {rec.exitcode} (pid: {pid})",
        f"  error_file: {rec.error_file or '<N/A>'}",
        f"  traceback : {traceback}",
        "=" * BOX_WIDTH,
    ]
    if explain:
        lines.append(f"llmcluster: {rec.reason}")
    return lines


def agent_restart_lines(run: Launch, t: float, *, attempt: int, restarts_left: int,
                        max_restarts: int, stopping: tuple[int, ...] = (),
                        host: str = "") -> list[str]:  # fmt: skip
    """torchrun's elastic agent restarting its worker group: the FAILED line (the count
    before the restart is spent), stopping its workers (``stopping``: their pids), the next
    round of the c10d rendezvous, and the new group (``restart_count=attempt``)."""
    a, w = glog("I", t, run.agent_pid, AGENT_API), glog("W", t, run.agent_pid, AGENT_API)
    node = f"{host or 'localhost'}_{run.agent_pid}_0"
    return [
        f"{w} [default] Worker group FAILED. {restarts_left + 1}/{max_restarts} "
        "attempts left; will restart worker group",
        f"{a} [default] Stopping worker group",
        *(
            f"{glog('W', t, run.agent_pid, MP_API)} Sending process {pid} closing signal SIGTERM"
            for pid in stopping
        ),
        f"{a} [default] Rendezvous'ing worker group",
        f"{a} The node '{node}' attempts to join the next round of the rendezvous '{run.run_id}'.",
        f"{a} The node '{node}' has joined round {attempt} of the rendezvous '{run.run_id}' as "
        f"rank 0 in a world of size {run.nnodes}.",
        f"{a} [default] Rendezvous complete for workers. Result:",
        f"{a}   restart_count={attempt}",
        f"{a}   master_addr={run.master_addr}",
        f"{a}   master_port={run.master_port}",
        f"{a} [default] Starting worker group",
    ]


def restart_lines(run: RunRecord, rec: RestartRecord, *, failed_rank: int = -1,
                  explain: bool = True) -> list[str]:  # fmt: skip
    """The elastic agent of node 0 restarting the worker group (its live workers are
    stopped; with ``explain``: from which step the run resumes)."""
    stopping = tuple(pid for r, pid in _node_pids(run, 0) if r != failed_rank)
    host = run.real_hosts[0] if run.real_hosts else ""
    lines = agent_restart_lines(run, rec.time, attempt=rec.attempt,
                                restarts_left=rec.restarts_left,
                                max_restarts=rec.max_restarts, stopping=stopping,
                                host=host)  # fmt: skip
    if explain:
        lines.append(
            f"llmcluster: resuming from the checkpoint at step {rec.resume_step - 1}; "
            f"{plural(rec.replayed_steps, 'step')} to replay, {duration(rec.lost_s)} of work lost"
        )
    return lines


def interrupt_lines(run: RunRecord, rec: SummaryRecord) -> list[str]:
    """torchrun's agent forwarding Ctrl+C (or a SIGTERM) to node 0's workers, when the
    summary says the run was interrupted; nothing otherwise."""
    match = INTERRUPTED.match(rec.exit)
    if match is None:
        return []
    name, agent = match[1], run.agent_pid
    lines = [
        f"{glog('W', rec.time, agent, AGENT_SIGNAL)} Received Signals.{name} death signal, "
        "shutting down workers"
    ]
    lines += [
        f"{glog('W', rec.time, agent, MP_API)} Sending process {pid} closing signal {name}"
        for _, pid in _node_pids(run, 0)
    ]
    return lines


def summary_renderable(run: RunRecord | None, rec: SummaryRecord, *, ascii_only: bool) -> Table:
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
        model, gpu = run.model, run.gpu
        table.add_row("Run", f"{run.run_id} (seed {run.seed})")
        table.add_row("Model", f"{model.name} ({human_count(model.params)} params)")
        table.add_row("GPUs", f"{run.world_size} x {gpu.name} on {plural(run.nnodes, 'node')}")
        table.add_row("Strategy", f"{run.plan.strategy}, {run.plan.precision}")
    table.add_row("Steps", str(rec.steps))
    table.add_row("Final loss / PPL", f"{num(rec.final_loss, '.4f')} / {num(rec.final_ppl, '.2f')}")
    table.add_row("Tokens trained", human_count(rec.tokens_total))
    table.add_row("Simulated time", hms(rec.sim_seconds))
    wall = rec.wall_seconds
    table.add_row("Wall time", f"{hms(wall)} ({wall:.0f}s)" if wall >= 60 else f"{wall:.1f}s")
    table.add_row("Mean MFU", f"{100 * rec.mfu:.1f}%")
    table.add_row("Checkpoints", str(rec.checkpoints))
    table.add_row("Restarts", f"{rec.restarts} ({hms(rec.lost_s)} lost)")
    table.add_row("Dropped messages", str(rec.dropped_messages))
    table.add_row("Exit", rec.exit)
    return table


def summary_lines(run: RunRecord | None, rec: SummaryRecord, *, width: int,
                  ascii_only: bool) -> list[str]:  # fmt: skip
    """The summary table as plain lines no wider than ``width``."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, legacy_windows=False)
    console.print(summary_renderable(run, rec, ascii_only=ascii_only))
    lines = buffer.getvalue().rstrip("\n").split("\n")
    return [ascii_safe(line) for line in lines] if ascii_only else lines
