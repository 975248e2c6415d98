"""The node agent: forks this node's ranks, supervises them, reports every exit.

Like torchrun's elastic agent, it owns its local worker group: it starts the
ranks for an attempt when the coordinator says SPAWN, reports each rank's exit
(code or signal) as it happens, terminates the group on KILL or EXIT, and kills
its ranks and leaves by itself when the coordinator goes silent. With torchrun's log
options it gives each rank its files (``logspec``), tails the tee'd ones to its console
(``tail``) and writes the error.json of a rank killed by a signal (``errors``). A refused
node (the coordinator's REFUSED, or a failed CurveZMQ handshake: a wrong token or an
impostor) exits 2 at once with the reason. Each rank it forks gets its join proof in memory,
and the node's beacon: the coordinator heartbeats agents only, and a rank counts it alive
while its agent hears it (``control.link.Beacon``). Who forks the ranks is its starter's
business (``starter``): the agent itself, or in a Slurm step of one task per rank the node's
other tasks, its slots (``slots``), which it waits for before it joins.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import zmq

from llmcluster.comm.board import clear_board, create_board
from llmcluster.comm.shm import create_region
from llmcluster.config import RunConfig
from llmcluster.control.link import CHECK_S, Beacon, ControlLink, CoordinatorLost
from llmcluster.control.net import reachable
from llmcluster.control.procs import SignalWakeup, signal_name
from llmcluster.control.rundir import RunDir, remove_if_stale, start_janitor, stop_janitor
from llmcluster.control.security import CurveKeys, HandshakeWatch, prepare_gatekeeper
from llmcluster.exporters.settings import MetricsSettings
from llmcluster.render.fmt import glog
from llmcluster.render.wholeline import write_line
from llmcluster.wire import AGENT_SRC, Kind, Message
from llmcluster.wire.messages import AgentExit, AgentJoin, AgentWelcome, Exit, Refused, Spawn
from llmcluster.worker import announce, logspec
from llmcluster.worker.agentspec import AgentSpec
from llmcluster.worker.errors import record_signal_death
from llmcluster.worker.rank import shm_capacity
from llmcluster.worker.slots import SlotLost, SlotStarter
from llmcluster.worker.starter import (
    LocalStarter,
    NodePlace,
    RankLaunch,
    prepare_forks,
    rank_launches,
)
from llmcluster.worker.tail import Tailed, TailLog

if TYPE_CHECKING:
    from llmcluster.exporters.prometheus_server import MetricsExporter

JOIN_FIRST_WAIT_S = 2.0  # a busy coordinator (hundreds of agents) may take a while to welcome
JOIN_MAX_WAIT_S = 8.0
REFUSED_EXIT = 2  # a refused node: like a usage error, retrying cannot help


class Refusal(Exception):
    """The coordinator will not have this node; the one-line reason."""


def _serve_metrics(settings: MetricsSettings) -> MetricsExporter:
    """This node's endpoint, bound now (raises MetricsError). Imported here: prometheus-client
    and the HTTP server would otherwise be in every rank the agent forks."""
    from llmcluster.exporters.prometheus_server import MetricsExporter

    return MetricsExporter(settings, 1)


MP_API = "torch/distributed/elastic/multiprocessing/api.py"
LOG_DIR_AT, REPLY_FILE_AT = f"{MP_API}:322", f"{MP_API}:396"  # _make_log_dir, reify
PREFIX_TEMPLATE_VAR = "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"


class NodeAgent:
    """Owns one context, one control link and the node's rank processes."""

    def __init__(self, spec: AgentSpec, signals: list[int] | None = None) -> None:
        self.spec = spec
        self.signals = signals if signals is not None else []  # a standalone node's SIGTERM
        self.node = spec.node
        self.config: RunConfig | None = None
        self.publish = ""
        self.children: dict[int, int] = {}  # pid -> global rank
        self.shm: Any = None  # the node's shared region (an mmap, or a memfd's buffer)
        self.board: Any = None
        self.group_done_at: float | None = None  # when the last local rank exited
        self.sim_time = 0.0  # the simulated clock at the current attempt's start
        # bound now, so a taken port fails before the node joins (raises MetricsError)
        self.exporter = _serve_metrics(spec.metrics) if spec.metrics else None
        self.run_dir = RunDir("node-")  # the local ranks' inboxes
        self.keys = CurveKeys.from_token(spec.token)
        self.log_run_dir: str | None = None  # <log_dir>/<run_id>_<random>, made at first spawn
        self.rank_logs: dict[int, logspec.RankLogs] = {}  # global rank -> its streams
        self.tail: TailLog | None = None  # the tee of this attempt's files
        self.stopping = False  # exits caused by stopping the group are not failures
        self.starter: LocalStarter | SlotStarter = (
            SlotStarter(spec.slots, spec.nproc_per_node) if spec.slots else LocalStarter()
        )  # who forks the ranks: this agent, or (local ranks 1..) the step's other tasks
        # when we last heard the coordinator, for our ranks to read
        self.beacon = Beacon(self.starter.allocate(8) if spec.slots else None)

    def run(self) -> int:
        """Serve until EXIT; returns the agent's exit code (also its slots')."""
        code = 1
        try:
            code = self._run()
        finally:
            self.starter.close(code)
        return code

    def _run(self) -> int:
        # over TCP, nobody else on this host would remove our directory after a kill -9
        janitor = 0 if self.spec.parent_dir else start_janitor(self.run_dir.path)
        ctx = zmq.Context()
        link = ControlLink(
            ctx,
            endpoint=self.spec.control,
            identity=f"agent-{self.spec.host}-{os.getpid()}-{secrets.token_hex(6)}".encode(),
            run_id=None,
            src=AGENT_SRC,
            timeout_s=max(self.spec.heartbeat_timeout_s, 3.0),
            curve=self.keys,
            watch_handshakes=True,
            beacon=self.beacon,
            marks_beacon=True,
        )
        # a child's exit wakes the loop at once (SIGCHLD's wake-up fd), so it can wait long
        wakeup = SignalWakeup()
        wake_read = wakeup.read
        try:
            code = self._slots_ready()
            if code is None:
                code = self._join(link)
            if code is not None:
                return code
            checked = -math.inf  # when the ranks were last looked at
            while True:
                code = self._serve(link, link.check_s, wake_read, self.starter.fds())
                tick = checked + self.spec.monitor_interval_s  # torchrun's monitor interval:
                while code is None and time.monotonic() < tick:  # woken before it, wait
                    code = self._serve(link, tick - time.monotonic(), wake_read)
                if code is not None:
                    return code
                for pid, exitcode in self.starter.exited(list(self.children)).items():
                    self._report_exit(link, pid, exitcode)
                checked = time.monotonic()
        except CoordinatorLost as lost:
            write_line(f"llmcluster node {self.node}: {lost}; stopping local ranks")
            return 1
        except Refusal as refusal:
            write_line(f"llmcluster node: {refusal}")
            return REFUSED_EXIT
        except SlotLost as lost:
            write_line(f"llmcluster node {self.node}: {lost}; this node cannot start its ranks")
            return 1
        finally:
            wakeup.close()
            self.starter.stop(list(self.children))
            self.children.clear()
            self._stop_tail()
            if self.exporter:
                self.exporter.close()
            if self.spec.parent_dir:  # a killed coordinator cannot remove its own
                remove_if_stale(self.spec.parent_dir)
            link.close()
            ctx.term()
            self.run_dir.remove()
            if janitor:
                stop_janitor(janitor)

    def _serve(self, link: ControlLink, seconds: float, wake: socket.socket,
               fds: Sequence[int] = ()) -> int | None:  # fmt: skip
        """Handle what arrives within ``seconds``; ``wake`` (SIGCHLD's and the stop signals'
        wake-up socket) or a readable ``fds`` ends the wait early. ``wake`` is drained before
        the ranks are reaped, so no exit slips between the two. An exit code once done."""
        for msg in link.wait(max(0.0, seconds), wake_fds=[wake.fileno(), *fds]):
            code = self._handle(link, msg)
            if code is not None:
                return code
        with contextlib.suppress(BlockingIOError):
            wake.recv(4096)
        return 128 + self.signals[0] if self.signals else None

    def _slots_ready(self) -> int | None:
        """With slots: wait until every one has connected (None), else the exit code."""
        if not isinstance(self.starter, SlotStarter):
            return None
        why = self.starter.ready(self.spec.join_timeout_s, lambda: bool(self.signals))
        if why is None:
            return None
        if why:
            write_line(f"llmcluster node: {why}")
        return 128 + self.signals[0] if self.signals else 1

    def _join(self, link: ControlLink) -> int | None:
        """Join, retrying with backoff while the coordinator is not up yet (or not answering);
        raise Refusal if it refuses us (REFUSED, or a handshake that fails)."""
        assert link.handshakes is not None
        try:
            return self._join_watched(link, link.handshakes)
        finally:
            link.unwatch()

    def _join_watched(self, link: ControlLink, watch: HandshakeWatch) -> int | None:
        started, backoff, attempt = time.monotonic(), JOIN_FIRST_WAIT_S, 0
        spec = self.spec
        join = AgentJoin(node=self.node, host=spec.host, pid=os.getpid(), nnodes=spec.nnodes,
                         nproc_per_node=spec.nproc_per_node)  # fmt: skip
        while True:
            attempt += 1
            link.send(Kind.AGENT_JOIN, join)
            link.last_heard = time.monotonic()
            deadline = time.monotonic() + backoff
            try:
                while time.monotonic() < deadline:
                    for msg in link.wait(min(CHECK_S, deadline - time.monotonic())):
                        code = self._handle(link, msg)
                        if code is not None:
                            return code
                    if self.config is not None:
                        return None
                    if self.signals:
                        return 128 + self.signals[0]
                    watch.update()
                    if watch.refused:
                        raise Refusal(self._handshake_failure())
            except CoordinatorLost:
                pass
            waited = time.monotonic() - started
            if waited > self.spec.join_timeout_s:
                write_line(
                    f"llmcluster node: no coordinator answered at {self.spec.control} in "
                    f"{waited:.0f}s; giving up"
                )
                return 1
            if attempt in (2, 5) or attempt % 10 == 0:
                write_line(
                    f"llmcluster node: waiting for the coordinator at {self.spec.control} "
                    f"(attempt {attempt})"
                )
            backoff = min(backoff * 2, JOIN_MAX_WAIT_S)

    def _handshake_failure(self) -> str:
        where = self.spec.control
        if self.keys is None:
            return (f"the coordinator at {where} requires a token (the handshake failed); "
                    "pass --token or LLMCLUSTER_TOKEN")  # fmt: skip
        return (f"the coordinator at {where} refused our token, or is not llmcluster "
                "(the CurveZMQ handshake failed)")  # fmt: skip

    def _report_exit(self, link: ControlLink, pid: int, exitcode: int) -> None:
        rank = self.children.pop(pid)
        error_file = self._error_file(rank, pid, exitcode)
        link.send(
            Kind.AGENT_EXIT, AgentExit(rank=rank, pid=pid, exitcode=exitcode, error_file=error_file)
        )
        if not self.children:
            self.group_done_at = time.monotonic()
            self._stop_tail()

    def _error_file(self, rank: int, pid: int, exitcode: int) -> str:
        """The failed rank's error.json: its own, or (killed by a signal) the agent's."""
        logs = self.rank_logs.get(rank)
        if logs is None or not logs.error_file or exitcode == 0 or self.stopping:
            return ""
        if exitcode < 0:
            name = signal_name(exitcode) or ""
            return record_signal_death(logs.error_file, exitcode=exitcode, pid=pid,
                                       signal_name=name)  # fmt: skip
        return logs.error_file if os.path.isfile(logs.error_file) else ""

    def _stop_group(self, link: ControlLink) -> None:
        self.stopping = True
        try:
            for pid, exitcode in self.starter.stop(list(self.children)).items():
                self._report_exit(link, pid, exitcode)
        finally:
            self.stopping = False
        self._stop_tail()

    def _stop_tail(self) -> None:
        """Drain and stop the tee once the ranks that wrote the files are gone."""
        if self.tail is not None:
            self.tail.stop()
            self.tail = None

    def _log(self, level: str, where: str, text: str) -> None:
        """A torch.distributed logging line of this agent (stderr, as Python logging's)."""
        write_line(f"{glog(level, self.sim_time, os.getpid(), where)} {text}")

    def _log_destinations(self, run_id: str, attempt: int, ranks: list[int]) -> None:
        """torch's ``DefaultLogsSpecs.reify``: this attempt's directories and every rank's
        streams (console, /dev/null or a file)."""
        config = self.config
        assert config is not None
        spec = logspec.LogsSpec.of(config, os.environ.get(PREFIX_TEMPLATE_VAR))
        attempt_dir = None
        if spec.makes_files:
            if self.log_run_dir is None:
                self.log_run_dir = logspec.make_run_dir(config.log_dir, run_id)
                self._log("I", LOG_DIR_AT, f"log directory set to: {self.log_run_dir}")
            attempt_dir = logspec.make_attempt_dir(self.log_run_dir, attempt, len(ranks))
        streams = logspec.reify(spec, attempt_dir, ranks)
        self.rank_logs = dict(zip(ranks, streams, strict=True))
        for logs in streams:
            if logs.error_file:
                reply = f"Setting worker{logs.local_rank} reply file to: {logs.error_file}"
                self._log("I", REPLY_FILE_AT, reply)

    def _handle(self, link: ControlLink, msg: Message) -> int | None:
        body = msg.body
        if isinstance(body, Refused) and self.config is None:
            raise Refusal(f"refused by the coordinator at {self.spec.control}: {body.reason}")
        if isinstance(body, AgentWelcome) and self.config is None:
            try:
                config = RunConfig.from_wire(body.config)
                config.validate()
            except (TypeError, ValueError, AttributeError):
                link.dropped += 1
                return None
            if not 0 <= body.node < config.nnodes:
                link.dropped += 1
                return None
            self.config = self.spec.over(config)
            link.timeout_s = max(link.timeout_s, self.config.silence_tolerance_s)
            self.node = body.node
            self._say(f"llmcluster node: joined {self.spec.control} as node {self.node} of "
                      f"{self.config.nnodes} ({self.spec.host})")  # fmt: skip
            self.publish = reachable(body.publish, self.spec.control)
            link.run_id = msg.run_id
            if self.exporter:  # an observer of the hub, like dcgm-exporter beside the job
                self.exporter.start(self.publish, [self.node], self.keys)
        elif isinstance(body, Spawn) and self.config is not None:
            self._stop_group(link)
            self.sim_time = body.sim_time
            link.attempt = body.attempt
            self._announce_group(link.attempt, link.run_id or "")
            self._spawn(body, link.run_id or "")
        elif msg.kind is Kind.KILL:
            self._stop_group(link)
        elif isinstance(body, Exit):
            self._announce_end(body.code, link.run_id or "")
            return body.code  # as torchrun on every node: the job's own exit status
        return None

    # ---- a standalone node's own lines (node 0's are rank 0's to print) -------------------
    def _say(self, text: str) -> None:
        if self.spec.announce:  # stderr, as torchrun's logging: stdout stays the ranks' own
            write_line(text)

    def _announce_group(self, attempt: int, run_id: str) -> None:
        if self.spec.announce and self.node != 0 and self.config is not None:
            self._say(announce.group_text(self.config, node=self.node, run_id=run_id,
                                          attempt=attempt, sim_time=self.sim_time))  # fmt: skip

    def _announce_end(self, code: int, run_id: str) -> None:
        if self.spec.announce and self.node != 0 and self.config is not None:
            waited = time.monotonic() - (self.group_done_at or time.monotonic())
            self._say(announce.end_text(self.config, node=self.node, run_id=run_id, code=code,
                                        waited_s=waited, sim_time=self.sim_time))  # fmt: skip

    def _started(self, pid: int, launch: RankLaunch) -> None:
        """A rank is forked: known at once, so a failure starting the next still stops it."""
        self.children[pid] = launch.spec.rank

    def _spawn(self, spawn: Spawn, run_id: str) -> None:
        config = self.config
        if config is None:
            return
        local = config.node_ranks(self.node)
        prepare_forks(config, local)  # once per node: every rank forked below inherits it
        if self.keys is not None and self.spec.tcp_host:  # its ranks serve CURVE on TCP
            prepare_gatekeeper()
        allocate = self.starter.allocate
        if self.shm is None:  # mapped before the fork: every local rank inherits it
            self.shm = create_region(len(local), shm_capacity(config), allocate)
        if self.board is None:
            self.board = create_board(len(local), allocate)
        else:  # nothing of the last attempt's words may look current to the new ranks
            clear_board(self.board)
        self._log_destinations(run_id, spawn.attempt, list(local))
        place = NodePlace(node=self.node, host=self.spec.host, control=self.spec.control,
                          publish=self.publish, run_dir=self.run_dir.path,
                          tcp_host=self.spec.tcp_host, curve=self.keys, shm=self.shm,
                          board=self.board, beacon=self.beacon)  # fmt: skip
        launches = rank_launches(config, place, spawn, run_id, self.rank_logs)
        self.starter.start_all(launches, self._started)
        streams = self.rank_logs.values()
        tailed = [Tailed(logs.stdout, logs.prefix, 1) for logs in streams if logs.tee_stdout]
        tailed += [Tailed(logs.stderr, logs.prefix, 2) for logs in streams if logs.tee_stderr]
        self.tail = TailLog(tailed).start() if tailed else None
