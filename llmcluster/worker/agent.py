"""The node agent: forks this node's ranks, supervises them, reports every exit.

Like torchrun's elastic agent, it owns its local worker group: it starts the
ranks for an attempt when the coordinator says SPAWN, reports each rank's exit
(code or signal) as it happens, terminates the group on KILL or EXIT, and kills
its ranks and leaves by itself when the coordinator goes silent.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import zmq

from llmcluster.comm.board import clear_board, create_board
from llmcluster.comm.shm import create_region
from llmcluster.config import RunConfig
from llmcluster.control.env import torchrun_env
from llmcluster.control.link import CHECK_S, ControlLink, CoordinatorLost
from llmcluster.control.procs import fork_child, reap, terminate_all
from llmcluster.exporters.prometheus_server import MetricsExporter, MetricsSettings
from llmcluster.render.launch import finish_lines, launcher_lines
from llmcluster.render.report import agent_restart_lines
from llmcluster.wire import AGENT_SRC, Kind, Message
from llmcluster.wire.messages import AgentExit, AgentJoin, AgentWelcome, Exit, Spawn
from llmcluster.worker.rank import Rank, RankSpec, shm_capacity

JOIN_FIRST_WAIT_S = 2.0  # a busy coordinator (hundreds of agents) may take a while to welcome
JOIN_MAX_WAIT_S = 8.0


@dataclass(frozen=True)
class AgentSpec:
    """How to reach the coordinator and which node this agent plays."""

    node: int  # -1: ask the coordinator to assign one
    control: str
    host: str
    heartbeat_timeout_s: float = 3.0
    tcp_host: str | None = None  # bind rank inboxes on this address too (multi-host)
    token: str = ""  # shared secret the coordinator requires across hosts
    join_timeout_s: float = 60.0  # give up if no coordinator answers for this long
    announce: bool = False  # a standalone node prints its own agent lines (rank 0 prints node 0's)
    metrics: MetricsSettings | None = None  # serve this node's GPUs (``llmcluster node``)


class NodeAgent:
    """Owns one context, one control link and the node's rank processes."""

    def __init__(self, spec: AgentSpec, signals: list[int] | None = None) -> None:
        self.spec = spec
        self.signals = signals if signals is not None else []  # a standalone node's SIGTERM
        self.node = spec.node
        self.config: RunConfig | None = None
        self.publish = ""
        self.children: dict[int, int] = {}  # pid -> global rank
        self.shm: mmap.mmap | None = None
        self.board: mmap.mmap | None = None
        self.group_done_at: float | None = None  # when the last local rank exited
        # bound now, so a taken port fails before the node joins (raises MetricsError)
        self.exporter = MetricsExporter(spec.metrics, 1) if spec.metrics else None
        self.work_dir = tempfile.mkdtemp(prefix=f"llmcluster-{os.getpid()}-node-")  # swept
        os.chmod(self.work_dir, 0o700)

    def run(self) -> int:
        """Serve until EXIT; returns the agent's exit code."""
        ctx = zmq.Context()
        link = ControlLink(
            ctx,
            endpoint=self.spec.control,
            identity=f"agent-{self.spec.host}-{os.getpid()}-{secrets.token_hex(6)}".encode(),
            run_id=None,
            src=AGENT_SRC,
            timeout_s=max(self.spec.heartbeat_timeout_s, 3.0),
        )
        # a child's exit wakes the loop at once (SIGCHLD's wake-up fd), so it can wait long
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wake_write.fileno())
        previous_handler = signal.signal(signal.SIGCHLD, lambda *_: None)
        try:
            code = self._join(link)
            if code is not None:
                return code
            while True:
                for msg in link.wait(CHECK_S, wake_fd=wake_read.fileno()):
                    code = self._handle(link, msg)
                    if code is not None:
                        return code
                with contextlib.suppress(BlockingIOError):  # drained before reaping: no
                    wake_read.recv(4096)  # exit can slip between the two
                for pid, exitcode in reap(list(self.children)).items():
                    self._report_exit(link, pid, exitcode)
                if self.signals:
                    return 128 + self.signals[0]
        except CoordinatorLost as lost:
            print(f"llmcluster node {self.node}: {lost}; stopping local ranks", file=sys.stderr)
            return 1
        finally:
            signal.set_wakeup_fd(previous_fd)
            signal.signal(signal.SIGCHLD, previous_handler)
            wake_read.close()
            wake_write.close()
            terminate_all(list(self.children))
            self.children.clear()
            if self.exporter:
                self.exporter.close()
            link.close()
            ctx.term()
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _join(self, link: ControlLink) -> int | None:
        """Join, retrying with backoff while the coordinator is not up yet (or not answering)."""
        started, backoff, attempt = time.monotonic(), JOIN_FIRST_WAIT_S, 0
        while True:
            attempt += 1
            link.send(
                Kind.AGENT_JOIN,
                AgentJoin(
                    node=self.node, host=self.spec.host, pid=os.getpid(), token=self.spec.token
                ),
            )
            link.last_heard = time.monotonic()
            deadline = time.monotonic() + backoff
            try:
                while time.monotonic() < deadline:
                    for msg in link.wait(deadline - time.monotonic()):
                        code = self._handle(link, msg)
                        if code is not None:
                            return code
                    if self.config is not None:
                        return None
                    if self.signals:
                        return 128 + self.signals[0]
            except CoordinatorLost:
                pass
            waited = time.monotonic() - started
            if waited > self.spec.join_timeout_s:
                print(f"llmcluster node: no coordinator answered at {self.spec.control} in "
                      f"{waited:.0f}s; giving up", file=sys.stderr)  # fmt: skip
                return 1
            if attempt in (2, 5) or attempt % 10 == 0:
                print(f"llmcluster node: waiting for the coordinator at {self.spec.control} "
                      f"(attempt {attempt})", file=sys.stderr)  # fmt: skip
            backoff = min(backoff * 2, JOIN_MAX_WAIT_S)

    def _report_exit(self, link: ControlLink, pid: int, exitcode: int) -> None:
        rank = self.children.pop(pid)
        link.send(Kind.AGENT_EXIT, AgentExit(rank=rank, pid=pid, exitcode=exitcode))
        if not self.children:
            self.group_done_at = time.monotonic()

    def _stop_group(self, link: ControlLink) -> None:
        for pid, exitcode in terminate_all(list(self.children)).items():
            self._report_exit(link, pid, exitcode)

    def _handle(self, link: ControlLink, msg: Message) -> int | None:
        body = msg.body
        if isinstance(body, AgentWelcome) and self.config is None:
            try:
                self.config = RunConfig.from_wire(body.config)
            except (TypeError, ValueError):
                link.dropped += 1
                return None
            link.timeout_s = max(link.timeout_s, self.config.silence_tolerance_s)
            self.node = body.node
            self._say(f"llmcluster node: joined {self.spec.control} as node {self.node} of "
                      f"{self.config.nnodes} ({self.spec.host})")  # fmt: skip
            self.publish = reachable(body.publish, self.spec.control)
            link.run_id = msg.run_id
            if self.exporter:  # an observer of the hub, like dcgm-exporter beside the job
                self.exporter.start(self.publish, [self.node])
        elif isinstance(body, Spawn) and self.config is not None:
            self._stop_group(link)
            link.attempt = body.attempt
            self._announce_group(link.attempt, link.run_id or "")
            self._spawn(body, link.run_id or "")
        elif msg.kind is Kind.KILL:
            self._stop_group(link)
        elif isinstance(body, Exit):
            self._announce_end(body.code, link.run_id or "")
            return 0
        return None

    # ---- a standalone node's own lines (node 0's are rank 0's to print) -------------------
    def _say(self, text: str) -> None:
        if self.spec.announce:  # stderr, as torchrun's logging: stdout stays the ranks' own
            print(text, file=sys.stderr, flush=True)

    def _agent_record(self, run_id: str, attempt: int) -> dict[str, Any]:
        config = self.config
        assert config is not None
        return {
            "start_time": time.time(),
            "agent_pid": os.getpid(),
            "nnodes": config.nnodes,
            "nproc_per_node": config.nproc_per_node,
            "world_size": config.ranks,
            "master_addr": config.master_addr,
            "master_port": config.master_port,
            "run_id": run_id,
            "max_restarts": config.max_restarts,
            "attempt": attempt,
        }

    def _announce_group(self, attempt: int, run_id: str) -> None:
        if not self.spec.announce or self.node == 0 or self.config is None:
            return
        run = self._agent_record(run_id, attempt)
        if attempt == 0:
            lines = launcher_lines(run, group_rank=self.node)
        else:
            lines = agent_restart_lines(run, run["start_time"], attempt=attempt,
                                        restarts_left=self.config.max_restarts - attempt,
                                        max_restarts=self.config.max_restarts)  # fmt: skip
        self._say("\n".join(lines))

    def _announce_end(self, code: int, run_id: str) -> None:
        if not self.spec.announce or self.node == 0 or self.config is None:
            return
        if code != 0:
            self._say(f"llmcluster node {self.node}: the run failed (exit code {code}); "
                      "local worker group stopped")  # fmt: skip
            return
        waited = time.monotonic() - (self.group_done_at or time.monotonic())
        run = self._agent_record(run_id, 0)
        self._say("\n".join(finish_lines(run, run["start_time"], round(waited, 6))))

    def _spawn(self, spawn: Spawn, run_id: str) -> None:
        config = self.config
        if config is None:
            return
        local = config.node_ranks(self.node)
        if self.shm is None:  # mapped before the fork: every local rank inherits it
            self.shm = create_region(len(local), shm_capacity(config))
        if self.board is None:
            self.board = create_board(len(local))
        else:  # nothing of the last attempt's words may look current to the new ranks
            clear_board(self.board)
        for local_rank, rank in enumerate(local):
            inbox = [f"ipc://{self.work_dir}/r{rank}"]
            if self.spec.tcp_host:
                inbox.append(f"tcp://{self.spec.tcp_host}:0")
            spec = RankSpec(
                config=config,
                run_id=run_id,
                rank=rank,
                local_rank=local_rank,
                node=self.node,
                host=self.spec.host,
                attempt=spawn.attempt,
                start_step=spawn.start_step,
                sim_time=spawn.sim_time,
                control=self.spec.control,
                publish=self.publish,
                inbox=inbox,
                speed=spawn.speed,
                shm=self.shm,
                board=self.board,
            )
            env = torchrun_env(
                rank=rank,
                local_rank=local_rank,
                world_size=config.ranks,
                local_world_size=len(local),
                group_rank=self.node,
                master_addr=config.master_addr,
                master_port=config.master_port,
                run_id=run_id,
                restart_count=spec.attempt,
                max_restarts=config.max_restarts,
            )
            pid = fork_child(lambda s=spec: Rank(s).run(), name=f"llmc-rank{rank}", env=env)
            self.children[pid] = rank


def reachable(endpoint: str, control: str) -> str:
    """A coordinator endpoint bound on a wildcard, as this node reaches it (the control host)."""
    host = control.rsplit(":", 1)[0].removeprefix("tcp://")
    for wildcard in ("tcp://0.0.0.0:", "tcp://*:"):
        if endpoint.startswith(wildcard):
            return f"tcp://{host}:{endpoint[len(wildcard) :]}"
    return endpoint


def outgoing_address(host: str, port: int) -> str:
    """This machine's address on the route to ``host`` (what peers on other hosts can reach)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((socket.gethostbyname(host), port))  # UDP: no packet is sent
        return probe.getsockname()[0]


def local_host_name() -> str:
    """This machine's short host name, as NCCL and torchrun print it."""
    return socket.gethostname().split(".")[0] or "localhost"
