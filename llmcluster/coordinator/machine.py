"""The coordinator as a pure state machine: ``Coordinator.handle(event) -> list[Action]``.

It decides everything a run's coordinator decides, like torchrun's elastic agent and
c10d rendezvous together: who joins as which node and rank, when the address book goes
out, when training starts, what a failure means in every phase (restart from the last
checkpoint while restarts are left, else abort), when the run stops and when it is over.
It reads no clock (events carry ``now`` and ``wall``), owns no socket and starts no
process: the server carries out the actions. Node supervision, local or remote, reaches it
as ``AgentLost`` events and heartbeats; it never knows which launch mode it runs in.
"""

from __future__ import annotations

from collections.abc import Callable

from llmcluster import sim
from llmcluster.config import RunConfig
from llmcluster.coordinator.health import answering, silent_node, silent_rank
from llmcluster.coordinator.rendezvous import Rendezvous
from llmcluster.coordinator.reports import Reports
from llmcluster.coordinator.state import (
    Action,
    AgentLost,
    DisplayStatus,
    Event,
    ForeignJoin,
    HandshakeFailed,
    Interrupted,
    Malformed,
    NewAttempt,
    Phase,
    Publish,
    Received,
    ReplaceAgent,
    Say,
    Send,
    Settings,
    ShowUnshown,
    Tick,
)
from llmcluster.wire import Kind, Message
from llmcluster.wire.messages import (
    HEARTBEAT_S,
    AgentExit,
    Done,
    Empty,
    Exit,
    Failure,
    Heartbeat,
    RankOnly,
    Reason,
    Spawn,
    Stats,
)
from llmcluster.wire.messages import Phase as PhaseReport
from llmcluster.wire.records import LogRecord, ReadyRecord, Record

DRAIN_DISPLAY_S = 1.0  # a failure report gets this long to reach the screen before the kill
RESTART_KILL_WAIT_S = 5.0
ABORT_WAIT_S = 3.0
RENDER_WAIT_S = 10.0  # at the end, the display may go this long without showing more


class Coordinator(Rendezvous):
    """One run, from rendezvous to the summary. Mutated only by ``handle``."""

    def __init__(
        self, config: RunConfig, plan: sim.RunPlan, settings: Settings, now: float
    ) -> None:
        super().__init__(config, plan, settings, now)
        self.phase = Phase.RENDEZVOUS
        self.exit_code, self.exit_reason = 0, "completed"
        self.reports = Reports(plan, config.ranks, config.algorithm, settings.start_time)
        self.progress = self.reports.progress
        self.deadline = now + config.exit_after_s if config.exit_after_s is not None else None
        self.display_present, self.display_acked, self.published = False, 0, 0
        self.wait_for_seq = 0  # the record the display should show before we go on
        self.phase_deadline, self.kill_sent = 0.0, False
        self.display_held_said = False  # once per run: the display waits for its reader
        self.failure_reason, self._next_beat = "", 0.0

    @property
    def over(self) -> bool:
        """True once the run has ended (the server stops its loop)."""
        return self.phase is Phase.OVER

    # ---- the one entry point ---------------------------------------------------------
    def handle(self, event: Event) -> list[Action]:
        """Take one event into account; return what the server must do, in order."""
        self.out: list[Action] = []
        if isinstance(event, Received):
            self._received(event)
        elif isinstance(event, Malformed):
            self.dropped += 1
        elif isinstance(event, ForeignJoin):
            self.foreign_join(event.identity, event.version)
        elif isinstance(event, HandshakeFailed):
            self.handshake_failed(event.endpoint, event.now)
        elif isinstance(event, Tick):
            read = event.now if event.read_up_to is None else event.read_up_to
            self._tick(event.now, event.wall, read)
        elif isinstance(event, AgentLost):
            self._agent_lost(event)
        elif isinstance(event, Interrupted):
            self._stop(f"interrupted ({event.signal_name})", event.exit_code)
        elif isinstance(event, DisplayStatus):
            if self.phase is Phase.FINISHING and event.acked > self.display_acked:
                self.phase_deadline = -1.0  # it is still showing: its wait starts again
            self.display_present, self.display_acked = event.present, event.acked
        return self.out

    def publish(self, record: object) -> None:
        self.out.append(Publish(record))  # type: ignore[arg-type]
        self.published += 1

    def send(self, identities: list[bytes], kind: Kind, body: object) -> None:
        if identities:
            self.out.append(Send(tuple(identities), kind, body))

    def say(self, text: str, *, warn: bool = False) -> None:
        if warn or self.settings.standalone:
            self.out.append(Say(text, warn))

    def log(self, level: str, text: str) -> None:
        self.publish(LogRecord(level=level, text=text, time=self.progress.sim_time))

    def live_ranks(self) -> list[bytes]:
        return [p.identity for p in self.ranks.values() if not p.exited]

    def agent_identities(self) -> list[bytes]:
        return [a.identity for a in self.agents.values()]

    # ---- messages --------------------------------------------------------------------
    def _received(self, event: Received) -> None:
        msg, now = event.msg, event.now
        if msg.kind is Kind.AGENT_JOIN:  # the one kind sent before its sender knows the run
            self.agent_join(event.identity, msg, now)
            return
        if msg.run_id != self.settings.run_id or msg.attempt != self.attempt:
            self.dropped += 1  # another run, or an earlier attempt's last words
            return
        if msg.kind is Kind.JOIN:
            joined = self.rank_join(event.identity, msg, now)
            if joined is not None and self.book_complete():
                self.send_book()
            return
        peer = self.sender(event.identity, msg)
        if peer is None:
            self.dropped += 1
            return
        peer.last_seen = now
        self._dispatch(msg, event.wall)

    def _dispatch(self, msg: Message, wall: float) -> None:
        body = msg.body
        if isinstance(body, RankOnly) and msg.kind is Kind.READY:
            self._rank_ready(body.rank, wall)
        elif isinstance(body, Stats):
            if self.phase in (Phase.RENDEZVOUS, Phase.TRAINING, Phase.STOPPING):
                self.publish_all(self.reports.stats(body, self.infos()))
        elif isinstance(body, PhaseReport):
            self.publish_all(self.reports.phase(body, self.infos()))
        elif isinstance(body, Done):
            self.ranks[body.rank].done = True
            if self.phase in (Phase.TRAINING, Phase.STOPPING) and all(
                p.done for p in self.ranks.values()
            ):
                self._finish(wall)
        elif isinstance(body, Failure):
            self._fail(f"rank {body.rank}: {body.reason}", body.rank, body.exitcode,
                       error_file=body.error_file)  # fmt: skip
        elif isinstance(body, AgentExit):
            self._rank_exited(body)

    def _rank_ready(self, rank: int, wall: float) -> None:
        if not self.reports.rank_ready(rank) or self.phase is not Phase.RENDEZVOUS:
            return
        self.phase = Phase.TRAINING
        self.progress.rendezvous()
        real = wall - self.rendezvous_wall
        self.say(
            f"all {self.config.ranks} ranks ready on {self.config.nnodes} node(s) in "
            f"{real:.2f}s (attempt {self.attempt}); training"
        )
        self.publish(
            ReadyRecord(
                time=self.progress.sim_time,
                ready_s=real,
                world_size=self.config.ranks,
                attempt=self.attempt,
            )
        )
        self.send(self.live_ranks(), Kind.GO, Empty())
        self.reports.accepting = True
        self.publish_all(self.reports.release(self.infos()))

    def publish_all(self, records: list[Record]) -> None:
        for record in records:
            self.publish(record)

    # ---- stopping and finishing ------------------------------------------------------
    def _stop(self, reason: str, exit_code: int) -> None:
        """Stop at the next step boundary (the ranks agree on it in their allreduce)."""
        if self.phase is Phase.TRAINING:
            self.phase = Phase.STOPPING
            self.exit_code, self.exit_reason = exit_code, reason
            self.send(self.live_ranks(), Kind.STOP, Reason(reason=reason))
        elif self.phase in (Phase.RENDEZVOUS, Phase.RESTARTING):
            self.exit_code, self.exit_reason = exit_code, reason
            self._abort()
        elif self.phase in (Phase.STOPPING, Phase.FINISHING):
            self.exit_code = exit_code  # asked twice: stop now
            self._abort()

    def _finish(self, wall: float) -> None:
        self.phase = Phase.FINISHING
        self.publish(self._summary(wall))
        self.wait_for_seq = self.published
        self.phase_deadline = -1.0  # set on the next tick (the machine reads no clock)
        step = self.reports.merged_step
        self.say(f"run {self.exit_reason} after step {step}, exit code {self.exit_code}")

    def _summary(self, wall: float) -> object:
        return self.progress.summary(
            wall_seconds=wall - self.settings.launch_wall,
            dropped=self.dropped,
            rank_dropped=self.reports.ranks_dropped,
            exit_reason=self.exit_reason,
        )

    def _display_finished(self, now: float, read_up_to: float) -> bool:
        """Shown all, or gone. Silent RENDER_WAIT_S while rank 0 answers, it waits for the
        reader of its output (a full pipe): nothing may be written around its line."""
        shown = self.display_acked >= self.wait_for_seq or not self.display_present
        if shown or now <= self.phase_deadline:
            return shown
        if not answering(self.ranks.get(0), read_up_to, self.config.silence_tolerance_s):
            return True  # rank 0 is gone: the coordinator shows the rest
        if not self.display_held_said:
            self.display_held_said = True
            self.say(f"the display has shown nothing for {RENDER_WAIT_S:.0f} s while rank 0 "
                     "answers: waiting for the reader of its output", warn=True)  # fmt: skip
        return False

    def _release(self) -> None:
        if self.display_present and self.display_acked < self.wait_for_seq:
            self.say("rank 0 and its display are gone; showing the rest here", warn=True)
            self.out.append(ShowUnshown())  # nothing the run published is lost
        self.send(self.live_ranks(), Kind.EXIT, Exit(code=0))
        self.send(self.agent_identities(), Kind.EXIT, Exit(code=0))
        self.phase = Phase.OVER

    # ---- failures --------------------------------------------------------------------
    def _rank_exited(self, body: AgentExit) -> None:
        peer = self.ranks.get(body.rank)
        if peer is not None:
            peer.exited = True
        if peer is not None and peer.done:
            return
        self._fail(f"rank {body.rank} (pid {body.pid}) exited", body.rank, body.exitcode,
                   error_file=body.error_file)  # fmt: skip

    def _agent_lost(self, event: AgentLost) -> None:
        if self.phase in (Phase.OVER, Phase.ABORTING, Phase.FINISHING) or (
            event.node not in self.agents
        ):
            return
        self.node_lost(event.node)
        first = self.config.node_ranks(event.node)[0]
        self._fail(event.reason, first, event.exitcode)

    def _fail(self, reason: str, rank: int, exitcode: int, *, error_file: str = "") -> None:
        if self.phase in (Phase.ABORTING, Phase.OVER, Phase.RESTARTING, Phase.FINISHING):
            return
        step = self.reports.merged_step + 1
        self.say(f"failure at step {step}: {reason}")
        self.publish(
            self.failure_record(
                rank,
                exitcode,
                reason,
                step=step,
                time=self.progress.sim_time,
                seq=self.progress.last_seq + 1,
                error_file=error_file,
            )
        )
        self.wait_for_seq = self.published
        self.phase_deadline = -1.0
        if self.attempt < self.config.max_restarts:
            self.phase, self.failure_reason, self.kill_sent = Phase.RESTARTING, reason, False
            return
        self.exit_code, self.exit_reason = 1, "failed"
        self._abort()

    def _abort(self) -> None:
        """Stop every rank, then show what the display could not and end the run."""
        self.phase, self.kill_sent = Phase.ABORTING, False
        self.wait_for_seq = self.published  # what the display should show before the kill
        self.phase_deadline = -1.0

    def _respawn(self, wall: float) -> None:
        """Start attempt n+1 from the last checkpoint, as torchrun's elastic agent does."""
        self.attempt += 1
        record = self.progress.restart(
            attempt=self.attempt,
            max_restarts=self.config.max_restarts,
            merged_step=self.reports.merged_step,
            reason=self.failure_reason,
        )
        self.publish(record)
        self.new_attempt_state(wall)
        self.reports.new_attempt()
        self.phase = Phase.RENDEZVOUS
        self.out.append(NewAttempt(self.attempt))
        self.say(
            f"restart {self.attempt}/{self.config.max_restarts} from step {record.resume_step}"
        )
        for node, agent in self.agents.items():  # each node its own nonce
            self.send([agent.identity], Kind.SPAWN, self.spawn_body(node))
        for node in sorted(self.lost_nodes):  # a replacement agent gets SPAWN when it joins
            self.out.append(ReplaceAgent(node))
        self.lost_nodes.clear()

    def spawn_body(self, node: int) -> Spawn:
        return Spawn(
            attempt=self.attempt,
            nonce=self.nonce(node),
            start_step=self.progress.resume_step,
            speed=self.settings.speed,
            sim_time=self.progress.sim_time,
        )

    # ---- time ------------------------------------------------------------------------
    def _tick(self, now: float, wall: float, read_up_to: float) -> None:
        self.now = now
        if self.phase is Phase.OVER:
            return
        if now >= self._next_beat:
            self._next_beat = now + HEARTBEAT_S
            beat = Heartbeat(t=wall)
            self.send(self.agent_identities(), Kind.HEARTBEAT, beat)  # ranks: through them
        if self.phase_deadline < 0:  # a phase that waits has just begun
            wait = {Phase.FINISHING: RENDER_WAIT_S}.get(self.phase, DRAIN_DISPLAY_S)
            self.phase_deadline = now + wait
        if self.phase is Phase.RENDEZVOUS:
            self._rendezvous_tick(now)
        elif self.phase in (Phase.TRAINING, Phase.STOPPING):
            self._health_tick(now, read_up_to)
        elif self.phase is Phase.RESTARTING:
            self._wind_down(now, wall, RESTART_KILL_WAIT_S, self._respawn)
        elif self.phase is Phase.ABORTING:
            self._wind_down(now, wall, ABORT_WAIT_S, self._aborted)
        elif self.phase is Phase.FINISHING and self._display_finished(now, read_up_to):
            self._release()

    def _rendezvous_tick(self, now: float) -> None:
        if self.join_deadline is not None and now > self.join_deadline:
            missing = [n for n in range(self.config.nnodes) if n not in self.agents]
            self.exit_code, self.exit_reason = 1, "rendezvous timeout"
            named = ", ".join(map(str, missing)) or "none (ranks did not join)"
            self.say(f"rendezvous timed out; missing node(s) {named}", warn=True)
            self._abort()

    def _health_tick(self, now: float, read_up_to: float) -> None:
        if self.deadline is not None and now >= self.deadline and self.phase is Phase.TRAINING:
            self._stop("exit-after-time", 0)
        timeout = self.config.silence_tolerance_s
        node = silent_node(self.agents, read_up_to, timeout)
        if node is not None:
            agent, silence = self.agents[node], read_up_to - self.agents[node].last_seen
            self.node_lost(node)
            first_rank = self.config.node_ranks(node)[0]
            self._fail(f"node {node} ({agent.host}) silent for {silence:.1f}s", first_rank, -9)
            return
        rank = silent_rank(self.ranks, read_up_to, timeout)
        if rank is not None:
            silence = read_up_to - self.ranks[rank].last_seen
            self._fail(f"rank {rank} stopped answering for {silence:.1f}s", rank, -9)

    def _wind_down(
        self, now: float, wall: float, wait_s: float, then: Callable[[float], None]
    ) -> None:
        """Let the display show the failure, kill the group, wait for its exits, go on."""
        if not self.kill_sent:
            shown = self.display_acked >= self.wait_for_seq or not self.display_present
            if not shown and now <= self.phase_deadline:
                return
            self.send(self.agent_identities(), Kind.KILL, Reason(reason=self.exit_reason))
            self.kill_sent, self.phase_deadline = True, now + wait_s
            return
        if all(p.exited for p in self.ranks.values()) or now > self.phase_deadline:
            then(wall)

    def _aborted(self, wall: float) -> None:
        self.say(f"run {self.exit_reason}, exit code {self.exit_code}")
        self.publish(self._summary(wall))
        self.out.append(ShowUnshown())
        self.send(self.agent_identities(), Kind.EXIT, Exit(code=self.exit_code))
        self.phase = Phase.OVER
