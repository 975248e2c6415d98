"""The coordinator's event loop: rendezvous, address book, health, telemetry, shutdown.

One thread owns two sockets: a ROUTER for the control plane (agents and ranks
connect DEALERs to it) and an XPUB for output records (rank 0, and any other
observer, subscribes). Records wait in an outbox until a subscriber is there,
so nothing is lost while rank 0 is (re)starting; if no rank 0 is left at the end,
the coordinator shows them itself, as torchrun's agent prints its own report.
"""

from __future__ import annotations

import hmac
import math
import os
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import zmq

from llmcluster import __version__, sim
from llmcluster.config import RunConfig
from llmcluster.control.env import env_mismatches
from llmcluster.coordinator.telemetry import RankInfo, merge_step, summary_record, valid_stats
from llmcluster.wire import MAX_CONTROL_BYTES, DecodeError, Kind, Message, decode, encode
from llmcluster.wire.codec import send_frames
from llmcluster.worker.display import ACK, ack_frame
from llmcluster.worker.procs import reap, signal_name, terminate_all

COORD_SRC = -1
HEARTBEAT_S = 1.0
RENDER_WAIT_S = 10.0
CONTROL_BATCH = 256
RENDEZVOUS_SIM_CAP_S = 60.0
RESTART_KILL_WAIT_S = 5.0
DRAIN_DISPLAY_S = 1.0
RESTART_OVERHEAD_S = 90.0  # detect, tear down, re-rendezvous, NCCL init (simulated)
EXIT_CODES = {  # 128 + the signal, as a shell reports it; SIGPIPE: stdout was closed
    signal.SIGHUP: 129,
    signal.SIGINT: 130,
    signal.SIGPIPE: 141,
    signal.SIGTERM: 143,
}


@dataclass
class Peer:
    """A connected agent or rank, as the coordinator sees it."""

    identity: bytes
    last_seen: float
    info: RankInfo | None = None
    host: str = ""
    pid: int = 0
    done: bool = False
    exited: bool = False
    env: dict[str, str] = field(default_factory=dict)
    endpoints: list[str] = field(default_factory=list)


@dataclass
class RunState:
    """Progress of the run, mutated only by the coordinator loop."""

    phase: str = "rendezvous"  # rendezvous | training | stopping | restarting | finishing | over
    exit_code: int = 0
    exit_reason: str = "completed"
    ready_wall: float | None = None
    sim_time: float = 0.0
    sim_seconds: float = 0.0
    tokens_total: int = 0
    steps_done: int = 0
    mfu_sum: float = 0.0
    mfu_steps: int = 0
    last_step: dict[str, Any] | None = None
    pending: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    disagreements: int = 0
    checkpoints: int = 0
    last_checkpoint_step: int = 0
    checkpoint_time: float = 0.0  # simulated time the last checkpoint (or training) began from
    restarts: int = 0
    lost_s: float = 0.0
    last_seq: int = 0
    rendezvous_wall: float = 0.0
    failure_reason: str = ""
    restart_deadline: float = 0.0
    merged_step: int = 0
    resume_step: int = 1
    rank_dropped: dict[int, int] = field(default_factory=dict)  # per rank, this attempt
    earlier_dropped: int = 0  # ranks' drops in earlier attempts
    held_phases: list[dict[str, Any]] = field(default_factory=list)
    ready: set[int] = field(default_factory=set)


class Coordinator:
    """Runs one training run from rendezvous to the summary."""

    def __init__(
        self,
        config: RunConfig,
        plan: sim.RunPlan,
        *,
        run_id: str,
        control: str,
        publish: str,
        speed: float,
        launch_wall: float,
        local_agent_pids: list[int],
        show_locally: Any,
        start_agent: Any = None,
        token: str = "",
        join_timeout_s: float = 0.0,
        announce: bool = False,
    ) -> None:
        self.config, self.plan, self.run_id, self.speed = config, plan, run_id, speed
        self.launch_wall = launch_wall
        self.pacing = speed if config.speed is None else 0.0  # as the ranks pace their phases
        self.local_agent_pids = list(local_agent_pids)
        self.show_locally = show_locally  # callable(list[record]) for records nobody received
        self.start_agent = start_agent  # callable(node) -> pid: replace a lost local agent
        self.token = token  # required from agents when set (non-loopback binds)
        self.join_timeout_s = join_timeout_s
        self.announce = announce  # a standalone coordinator reports joins, failures, the end
        self.join_deadline = time.monotonic() + join_timeout_s if join_timeout_s else None
        self.refused = 0
        self.lost_nodes: set[int] = set()
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.router.setsockopt(zmq.LINGER, 1000)
        self.router.bind(control)
        self.xpub = self.ctx.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.SNDHWM, 0)
        self.xpub.setsockopt(zmq.MAXMSGSIZE, 1024)
        self.xpub.setsockopt(zmq.LINGER, 1000)
        self.xpub.bind(publish)
        self.publish_endpoint = publish
        self.attempt = 0
        self.agents: dict[int, Peer] = {}
        self.ranks: dict[int, Peer] = {}
        self.state = RunState(sim_time=launch_wall, rendezvous_wall=launch_wall)
        self.outbox: deque[tuple[int, dict[str, Any]]] = deque()
        self.unacked: deque[tuple[int, dict[str, Any]]] = deque()
        self.record_seq = 0
        self.subscribers = 0
        self.dropped = 0
        self.signals: list[int] = []
        self.deadline = (
            time.monotonic() + config.exit_after_s if config.exit_after_s is not None else None
        )
        self._next_beat = 0.0
        self._render_deadline = 0.0

    # ---- sending ------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.announce:
            print(f"llmcluster coordinator: {text}", file=sys.stderr, flush=True)

    def _send(self, identity: bytes, kind: Kind, **body: Any) -> None:
        frames = encode(Message(kind, self.run_id, self.attempt, COORD_SRC, body))
        send_frames(self.router, [identity, *frames])

    def _to_ranks(self, kind: Kind, **body: Any) -> None:
        for peer in self.ranks.values():
            if not peer.exited:
                self._send(peer.identity, kind, **body)

    def _to_agents(self, kind: Kind, **body: Any) -> None:
        for peer in self.agents.values():
            self._send(peer.identity, kind, **body)

    def publish(self, record: dict[str, Any]) -> None:
        """Queue an output record for rank 0 (and any observer); kept until acknowledged."""
        self.record_seq += 1
        self.outbox.append((self.record_seq, record))
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        while self.subscribers > 0 and self.outbox:
            seq, record = self.outbox.popleft()
            body = {"record": record, "seq": seq}
            send_frames(self.xpub, encode(Message(Kind.RECORD, self.run_id, 0, COORD_SRC, body)))
            self.unacked.append((seq, record))

    def _drain_display(self, timeout_s: float = DRAIN_DISPLAY_S) -> None:
        """Give a live rank 0 a moment to show (and acknowledge) everything published so far,
        so a failure report is on screen before its worker group is killed."""
        deadline = time.monotonic() + timeout_s
        while self.subscribers and (self.unacked or self.outbox) and time.monotonic() < deadline:
            if self.xpub.poll(20):
                self._subscriptions()

    def _unshown(self) -> list[dict[str, Any]]:
        """Records no display has acknowledged, oldest first."""
        return [record for _, record in (*self.unacked, *self.outbox)]

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        """Serve until the run is over; return the process exit code."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.xpub, zmq.POLLIN)
        try:
            while self.state.phase != "over":
                events = dict(poller.poll(100))
                if self.xpub in events:
                    self._subscriptions()
                if self.router in events:
                    self._control()
                self._timers()
            return self.state.exit_code
        finally:
            self._shutdown()

    def _subscriptions(self) -> None:
        while True:
            try:
                frame = self.xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] == b"\x01":
                if self.subscribers == 0:  # a new rank 0: replay what the last one never showed
                    self.outbox.extendleft(reversed(self.unacked))
                    self.unacked.clear()
                self.subscribers += 1
            elif frame[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)
            elif frame[:1] == ACK and len(frame) == len(ack_frame(0)):
                acked = int.from_bytes(frame[1:], "little")
                while self.unacked and self.unacked[0][0] <= acked:
                    self.unacked.popleft()
            self._flush_outbox()

    def _control(self) -> None:
        for _ in range(CONTROL_BATCH):  # bounded, so heartbeats go out even under a join storm
            try:
                identity, *frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:  # an empty multipart message
                self.dropped += 1
                continue
            try:
                msg = decode(frames, run_id=None)
                if msg.kind is not Kind.AGENT_JOIN and msg.run_id != self.run_id:
                    raise DecodeError("message from another run")
                if msg.src >= 0 and msg.attempt != self.attempt:
                    raise DecodeError("message from an earlier attempt")
                if msg.kind is Kind.STATS and not valid_stats(msg.body["stats"]):
                    raise DecodeError("malformed stats")
            except DecodeError:
                self.dropped += 1
                continue
            self._dispatch(identity, msg)

    def _dispatch(self, identity: bytes, msg: Message) -> None:
        now = time.monotonic()
        kind, body = msg.kind, msg.body
        if kind is Kind.AGENT_JOIN:
            self._agent_join(identity, msg, now)
            return
        peer = self._peer_of(msg, identity)
        if peer is None:
            self.dropped += 1
            return
        peer.last_seen = now
        if kind is Kind.JOIN:
            self._rank_join(peer, msg)
        elif kind is Kind.READY:
            self._rank_ready(body["rank"])
        elif kind is Kind.STATS:
            self._stats(body["rank"], body["step"], body["stats"])
        elif kind is Kind.PHASE:
            self._phase(body)
        elif kind is Kind.DONE:
            peer.done = True
            if all(p.done for p in self.ranks.values()) and self.state.phase in (
                "training",
                "stopping",
            ):
                self._finish()
        elif kind is Kind.RENDERED:
            self._release()
        elif kind is Kind.FAILURE:
            self._fail(f"rank {body['rank']}: {body['reason']}", body["rank"], body["exitcode"])
        elif kind is Kind.AGENT_EXIT:
            self._rank_exited(body["rank"], body["pid"], body["exitcode"])

    def _peer_of(self, msg: Message, identity: bytes) -> Peer | None:
        if msg.src == -2:
            return next((a for a in self.agents.values() if a.identity == identity), None)
        if msg.kind is Kind.JOIN:
            rank = msg.body["rank"]
            if rank >= self.config.ranks:
                return None
            peer = self.ranks.setdefault(rank, Peer(identity, time.monotonic()))
            peer.identity = identity
            return peer
        peer = self.ranks.get(msg.src)
        return peer if peer is not None and peer.identity == identity else None

    # ---- rendezvous ---------------------------------------------------------------------
    def _agent_join(self, identity: bytes, msg: Message, now: float) -> None:
        if self.token and not hmac.compare_digest(msg.body["token"], self.token):
            self.refused += 1
            self.dropped += 1
            print(f"llmcluster coordinator: refused a join from {msg.body['host']!r} "
                  "(wrong or missing token)", file=sys.stderr)  # fmt: skip
            return
        if any(agent.identity == identity for agent in self.agents.values()):
            return  # a retried join whose welcome is already on its way
        node = msg.body["node"]
        if node < 0:
            node = next(n for n in range(self.config.nnodes + 1) if n not in self.agents)
        if node >= self.config.nnodes or node in self.agents:
            self.dropped += 1
            print(f"llmcluster coordinator: refused {msg.body['host']!r} as node {node} "
                  "(taken or out of range)", file=sys.stderr)  # fmt: skip
            return
        self.agents[node] = Peer(identity, now, host=msg.body["host"], pid=msg.body["pid"])
        self._say(f"node {node} joined from {msg.body['host']} "
                  f"({len(self.agents)}/{self.config.nnodes} nodes)")  # fmt: skip
        self._send(
            identity,
            Kind.AGENT_WELCOME,
            node=node,
            config=self.config.to_wire(),
            publish=self.publish_endpoint,
        )
        self._send(
            identity,
            Kind.SPAWN,
            attempt=self.attempt,
            start_step=self.state.resume_step,
            speed=self.speed,
        )

    def _rank_join(self, peer: Peer, msg: Message) -> None:
        body = msg.body
        host = self._display_host(body["node"], body["host"])
        peer.info = RankInfo(body["rank"], body["local_rank"], body["node"], host, body["pid"])
        peer.endpoints = [str(a) for a in body["endpoints"]]
        peer.env = {str(k): str(v) for k, v in body["env"].items()}
        wrong = env_mismatches(
            peer.env,
            rank=body["rank"],
            local_rank=body["local_rank"],
            node=body["node"],
            world_size=self.config.ranks,
        )
        if wrong:
            self.publish(self._log("ERROR", f"rank {body['rank']} sees wrong {', '.join(wrong)}"))
        if len(self.ranks) == self.config.ranks and all(p.info for p in self.ranks.values()):
            order = [self.ranks[r] for r in range(self.config.ranks)]
            endpoints = [p.endpoints for p in order]
            nodes = [p.info.node for p in order if p.info]
            book = Message(Kind.BOOK, self.run_id, self.attempt, COORD_SRC,
                           {"endpoints": endpoints, "nodes": nodes})  # fmt: skip
            # encoded once and shared, not copied: at 1024 ranks the book is ~100 KB
            frames = [zmq.Frame(frame) for frame in encode(book)]
            for p in order:
                send_frames(self.router, [p.identity, *frames], copy=False)
            self.publish(self._run_record())

    def _display_host(self, node: int, real_host: str) -> str:
        """The node's host name as logs show it: real across machines; when every node
        runs on this machine, the plan's simulated cluster host names tell them apart."""
        if self.local_agent_pids and self.config.nnodes > 1:
            return self.plan.node_names[node]
        return real_host

    def _rank_ready(self, rank: int) -> None:
        self.state.ready.add(rank)
        if len(self.state.ready) == self.config.ranks:
            self.state.ready_wall = time.time()
            self.state.phase = "training"
            # the simulated clock runs `speed` times faster than the real rendezvous did
            # (capped: a real NCCL bootstrap takes seconds, not the hours --speed 1e6 implies)
            real = self.state.ready_wall - self.state.rendezvous_wall
            self._say(f"all {self.config.ranks} ranks ready on {self.config.nnodes} node(s) "
                      f"in {real:.2f}s (attempt {self.attempt}); training")  # fmt: skip
            self.state.sim_time += max(real, min(real * self.speed, RENDEZVOUS_SIM_CAP_S))
            self.publish(
                {
                    "type": "ready",
                    "time": self.state.sim_time,
                    "world_size": self.config.ranks,
                    "ready_s": self.state.ready_wall - self.state.rendezvous_wall,
                    "attempt": self.attempt,
                }
            )
            self._release_held_phases()

    def _run_record(self) -> dict[str, Any]:
        plan, config = self.plan, self.config
        infos = [self.ranks[r].info for r in range(config.ranks)]
        real = [self.agents[n].host if n in self.agents else "" for n in range(config.nnodes)]
        hosts = [self._display_host(n, h) for n, h in enumerate(real)]
        described = sim.describe_plan(plan)
        described["plan"]["init_s"] = sim.init_time_s(plan, self.pacing)
        described["plan"]["eval_s"] = sim.eval_time_s(plan, self.pacing)
        return {
            "type": "run",
            "run_id": self.run_id,
            "version": __version__,
            "world_size": config.ranks,
            "nnodes": config.nnodes,
            "nproc_per_node": config.nproc_per_node,
            "seed": config.seed,
            "algorithm": config.algorithm,
            "speed": self.speed,
            "master_addr": config.master_addr,
            "master_port": config.master_port,
            "hosts": hosts,
            "real_hosts": real,
            "pids": [info.pid if info else 0 for info in infos],
            "env": [self.ranks[r].env for r in range(config.ranks)],
            "agent_pid": os.getpid(),
            "start_time": self.launch_wall,
            "attempt": self.attempt,
            "max_restarts": config.max_restarts,
            **described,
        }

    # ---- training -----------------------------------------------------------------------
    def _stats(self, rank: int, step: int, stats: dict[str, Any]) -> None:
        if self.state.phase not in ("training", "stopping"):
            return  # a failed attempt's last reports: its steps will be replayed
        pending = self.state.pending.setdefault(step, {})
        pending[rank] = stats
        dropped = stats.get("dropped", 0)
        if isinstance(dropped, int) and not isinstance(dropped, bool) and dropped >= 0:
            self.state.rank_dropped[rank] = dropped
        if len(pending) < self.config.ranks:
            return
        del self.state.pending[step]
        ordered = [pending[r] for r in range(self.config.ranks)]
        infos = [self.ranks[r].info for r in range(self.config.ranks)]
        step_time = float(ordered[0]["step_time_s"])
        self.state.sim_time += step_time
        self.state.sim_seconds += step_time
        self.state.tokens_total += int(ordered[0]["tokens"])
        merged = merge_step(
            self.plan,
            step=step,
            stats=ordered,
            infos=[i for i in infos if i is not None],
            sim_time=self.state.sim_time,
            tokens_total=self.state.tokens_total,
            algorithm=self.config.algorithm,
        )
        if merged.disagreeing:
            self.state.disagreements += 1
            self.publish(
                self._log(
                    "ERROR",
                    f"loss mismatch at step {step}: ranks {list(merged.disagreeing)} "
                    "disagree with rank 0 after allreduce",
                )
            )
        self.state.steps_done = step
        self.state.last_seq = int(ordered[0].get("seq", 0))
        self.state.mfu_sum += merged.step["mfu"]
        self.state.mfu_steps += 1
        self.state.last_step = merged.step
        self.state.merged_step = step
        self.publish(merged.step)
        self.publish(merged.ranks)
        self._release_held_phases()

    def _release_held_phases(self) -> None:
        held, self.state.held_phases = self.state.held_phases, []
        for body in held:
            self._phase(body)

    def _phase(self, body: dict[str, Any]) -> None:
        """A phase rank 0 began or ended; held back until its step has been published."""
        state = self.state
        if state.ready_wall is None or body["step"] > state.merged_step:
            state.held_phases.append(body)
            return
        name, step, data = body["name"], body["step"], body["data"]
        if body["state"] == "begin":
            expected = float(data.get("expected_s", 0.0))
            self.publish(
                {"type": "phase", "name": name, "step": step, "time": state.sim_time,
                 "expected_s": expected}
            )  # fmt: skip
            return
        record: dict[str, Any] | None = None
        if name == "eval":
            elapsed = float(data["eval_s"])
            val_loss = float(data["val_loss"])
            record = {
                "type": "eval", "step": step, "val_loss": val_loss,
                "val_ppl": math.exp(val_loss), "eval_iters": self.plan.eval_iters,
                "eval_s": elapsed, "accuracy": None,
            }  # fmt: skip
        elif name == "checkpoint":
            info = sim.checkpoint_info(self.plan, step, self.pacing)
            elapsed = info.save_s
            state.checkpoints += 1
            state.last_checkpoint_step = step
            record = {"type": "checkpoint", **asdict(info)}
        elif name == "export":
            export = sim.export_info(self.plan, self.pacing)
            elapsed = export.export_s
            record = {
                "type": "export", "path": export.path, "format": "safetensors",
                "files": [{"name": n, "bytes": b} for n, b in export.files],
                "bytes_total": export.bytes_total, "export_s": export.export_s,
            }  # fmt: skip
        else:
            elapsed = float(data.get("elapsed_s", 0.0))
        state.sim_time += elapsed
        state.sim_seconds += elapsed
        if name in ("checkpoint", "init", "restore"):
            state.checkpoint_time = state.sim_time  # work after this is lost on a failure
        if record is not None:
            record["time"] = state.sim_time
            self.publish(record)

    def _log(self, level: str, text: str) -> dict[str, Any]:
        return {"type": "log", "level": level, "time": self.state.sim_time, "text": text}

    def request_stop(self, reason: str, exit_code: int) -> None:
        """Stop at the next step boundary (all ranks agree on it through an allreduce)."""
        if self.state.phase == "training":
            self.state.phase = "stopping"
            self.state.exit_code, self.state.exit_reason = exit_code, reason
            self._to_ranks(Kind.STOP, reason=reason)
        elif self.state.phase == "rendezvous":
            self.state.exit_code, self.state.exit_reason = exit_code, reason
            self._abort()
        elif self.state.phase in ("stopping", "finishing"):
            self.state.exit_code = exit_code
            self._abort()

    def _finish(self) -> None:
        state = self.state
        state.phase = "finishing"
        if state.exit_reason == "completed" and state.exit_code != 0:
            state.exit_reason = "failed"
        self.publish(self._summary())
        self._say(f"run {state.exit_reason} after step {state.merged_step}, "
                  f"exit code {state.exit_code}")  # fmt: skip
        self._render_deadline = time.monotonic() + RENDER_WAIT_S

    def _summary(self) -> dict[str, Any]:
        state = self.state
        return summary_record(
            sim_time=state.sim_time,
            sim_seconds=state.sim_seconds,
            wall_seconds=time.time() - self.launch_wall,
            last_step=state.last_step,
            steps=state.steps_done,
            tokens_total=state.tokens_total,
            mfu_mean=state.mfu_sum / state.mfu_steps if state.mfu_steps else 0.0,
            checkpoints=state.checkpoints,
            restarts=state.restarts,
            lost_s=state.lost_s,
            dropped=self.dropped,
            rank_dropped=state.earlier_dropped + sum(state.rank_dropped.values()),
            exit_reason=state.exit_reason,
        )

    def _release(self) -> None:
        self._to_ranks(Kind.EXIT, code=0)
        self._to_agents(Kind.EXIT, code=0)
        self.state.phase = "over"

    # ---- failures -----------------------------------------------------------------------
    def _rank_exited(self, rank: int, pid: int, exitcode: int) -> None:
        peer = self.ranks.get(rank)
        if peer is not None:
            peer.exited = True
        if self.state.phase in ("finishing", "over") or (peer is not None and peer.done):
            return
        if self.state.phase in ("aborting", "restarting"):
            return
        self._fail(f"rank {rank} (pid {pid}) exited", rank, exitcode)

    def _fail(self, reason: str, rank: int, exitcode: int) -> None:
        state = self.state
        if state.phase in ("aborting", "over", "restarting", "finishing"):
            return
        info = self.ranks[rank].info if rank in self.ranks else None
        self._say(f"failure at step {state.merged_step + 1}: {reason}")
        self.publish(
            {
                "type": "failure",
                "time": state.sim_time,
                "rank": rank,
                "local_rank": info.local_rank if info else rank % self.config.nproc_per_node,
                "node": info.node if info else rank // self.config.nproc_per_node,
                "host": info.host if info else "",
                "pid": info.pid if info else 0,
                "exitcode": exitcode,
                "signal": signal_name(exitcode),
                "reason": reason,
                "seq": state.last_seq + 1,
                "op": "ALLREDUCE",
                "numel": 3,
                "timeout_ms": int(self.config.collective_timeout_s * 1000),
                "step": state.merged_step + 1,
                "attempt": self.attempt,
                "max_restarts": self.config.max_restarts,
            }
        )
        if state.phase == "training" and self.attempt < self.config.max_restarts:
            state.phase = "restarting"
            state.failure_reason = reason
            self._drain_display()
            state.restart_deadline = time.monotonic() + RESTART_KILL_WAIT_S
            self._to_agents(Kind.KILL, reason=reason)
            return
        state.exit_code, state.exit_reason = 1, "failed"
        self._abort()

    def _respawn(self) -> None:
        """Start attempt n+1 from the last checkpoint, as torchrun's elastic agent does."""
        state, plan = self.state, self.plan
        self.attempt += 1
        resume = state.last_checkpoint_step + 1
        state.resume_step = resume
        lost = max(0.0, state.sim_time - state.checkpoint_time)
        state.sim_time += RESTART_OVERHEAD_S
        state.lost_s += lost + RESTART_OVERHEAD_S
        state.restarts += 1
        self.publish(
            {
                "type": "restart",
                "time": state.sim_time,
                "attempt": self.attempt,
                "max_restarts": self.config.max_restarts,
                "restarts_left": self.config.max_restarts - self.attempt,
                "resume_step": resume,
                "replayed_steps": state.merged_step - state.last_checkpoint_step,
                "lost_s": lost + RESTART_OVERHEAD_S,
                "reason": state.failure_reason,
            }
        )
        self.ranks.clear()
        state.earlier_dropped += sum(state.rank_dropped.values())
        state.rank_dropped.clear()
        state.ready.clear()
        state.pending.clear()
        state.held_phases.clear()
        state.merged_step = state.steps_done = resume - 1
        state.tokens_total = plan.tokens_per_step * (resume - 1)
        state.ready_wall = None
        state.rendezvous_wall = time.time()
        state.phase = "rendezvous"
        self._say(f"restart {self.attempt}/{self.config.max_restarts} from step {resume}")
        self._to_agents(Kind.SPAWN, attempt=self.attempt, start_step=resume, speed=self.speed)
        if self.join_timeout_s:  # remote nodes get the join timeout again to come back
            self.join_deadline = time.monotonic() + self.join_timeout_s
        for node in sorted(self.lost_nodes):  # a replacement agent gets SPAWN when it joins
            if self.start_agent is not None:
                self.local_agent_pids.append(self.start_agent(node))
        self.lost_nodes.clear()

    def _abort(self) -> None:
        """Kill every rank, show what rank 0 could not, and end the run."""
        self.state.phase = "aborting"
        self._drain_display()
        self._to_agents(Kind.KILL, reason=self.state.exit_reason)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not all(p.exited for p in self.ranks.values()):
            if self.router.poll(50):
                self._control()
            self._reap_agents()
            if not self._agents_alive():
                break
        self._say(f"run {self.state.exit_reason}, exit code {self.state.exit_code}")
        self.show_locally([*self._unshown(), self._summary()])
        self.outbox.clear()
        self.unacked.clear()
        self._to_agents(Kind.EXIT, code=self.state.exit_code)
        self.state.phase = "over"

    # ---- timers -------------------------------------------------------------------------
    def _timers(self) -> None:
        now = time.monotonic()
        while self.signals:
            signum = self.signals.pop(0)
            self.request_stop(f"interrupted ({signal.Signals(signum).name})", EXIT_CODES[signum])
        if self.state.phase == "over":
            return
        if (
            self.join_deadline is not None
            and self.state.phase == "rendezvous"
            and now > self.join_deadline
        ):
            missing = [n for n in range(self.config.nnodes) if n not in self.agents]
            self.state.exit_code, self.state.exit_reason = 1, "rendezvous timeout"
            print("llmcluster coordinator: rendezvous timed out; missing node(s) "
                  f"{', '.join(map(str, missing)) or 'none (ranks did not join)'}",
                  file=sys.stderr)  # fmt: skip
            self._abort()
            return
        if self.deadline is not None and now >= self.deadline and self.state.phase == "training":
            self.request_stop("exit-after-time", 0)
        if now >= self._next_beat:
            self._next_beat = now + HEARTBEAT_S
            self._to_agents(Kind.HEARTBEAT, t=time.time())
            self._to_ranks(Kind.HEARTBEAT, t=time.time())
        self._reap_agents()
        if self.state.phase == "restarting":
            gone = all(p.exited for p in self.ranks.values())
            if gone or now > self.state.restart_deadline:
                self._respawn()
            return
        if self.state.phase == "finishing" and now > self._render_deadline:
            self._release()
            return
        if self.state.phase in ("training", "stopping") and not self.local_agent_pids:
            for node, agent in list(self.agents.items()):  # remote agents: heartbeats only
                if now - agent.last_seen > self.config.silence_tolerance_s:
                    del self.agents[node]
                    self.lost_nodes.add(node)
                    for rank in self.config.node_ranks(node):
                        if rank in self.ranks:
                            self.ranks[rank].exited = True
                    silent = now - agent.last_seen
                    first = self.config.node_ranks(node)[0]
                    self._fail(f"node {node} ({agent.host}) silent for {silent:.1f}s", first, -9)
                    return
        if self.state.phase in ("training", "stopping"):
            timeout = self.config.silence_tolerance_s
            for rank, peer in self.ranks.items():
                if not peer.exited and not peer.done and now - peer.last_seen > timeout:
                    self._fail(
                        f"rank {rank} stopped answering for {now - peer.last_seen:.1f}s", rank, -9
                    )
                    return

    def _reap_agents(self) -> None:
        finished = reap(self.local_agent_pids)
        for pid, code in finished.items():
            self.local_agent_pids.remove(pid)
            if self.state.phase in ("over", "aborting", "finishing"):
                continue
            node = next((n for n, a in self.agents.items() if a.pid == pid), -1)
            if node < 0:
                continue
            del self.agents[node]
            self.lost_nodes.add(node)
            for rank in self.config.node_ranks(node):  # its ranks died with it (PDEATHSIG)
                if rank in self.ranks:
                    self.ranks[rank].exited = True
            rank = self.config.node_ranks(node)[0]
            self._fail(f"node agent {node} (pid {pid}) exited with {code}", rank, code)

    def _agents_alive(self) -> bool:
        return bool(self.local_agent_pids)

    def _shutdown(self) -> None:
        deadline = time.monotonic() + 2.0
        while self.local_agent_pids and time.monotonic() < deadline:
            for pid in reap(self.local_agent_pids):
                self.local_agent_pids.remove(pid)
            time.sleep(0.01)
        terminate_all(self.local_agent_pids, grace_s=0.5)
        self.router.close(0)
        self.xpub.close(0)
        self.ctx.term()
