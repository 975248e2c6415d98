"""The coordinator's state machine, driven by events alone: no socket, clock or process."""

from __future__ import annotations

import functools
import math

import pytest

from llmcluster import sim
from llmcluster.config import RunConfig
from llmcluster.coordinator.machine import Coordinator
from llmcluster.coordinator.state import (
    AgentLost,
    DisplayStatus,
    ForeignJoin,
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
from llmcluster.setup import build_setup
from llmcluster.wire import AGENT_SRC, Kind, Message
from llmcluster.wire.messages import (
    AgentExit,
    AgentJoin,
    Done,
    Failure,
    Heartbeat,
    Join,
    PhaseState,
    RankOnly,
    RankStats,
    Stats,
)
from llmcluster.wire.messages import (
    Phase as PhaseReport,
)
from llmcluster.wire.records import PhaseName

RUN = "run1"


@functools.cache
def _plan(config: RunConfig) -> object:
    return build_setup(config).plan


class Harness:
    """A machine for 2 nodes x 2 ranks and the events a real run would bring, in order."""

    def __init__(self, **overrides: object) -> None:
        values = {"ranks": 4, "nproc_per_node": 2, "steps": 6, "seed": 1, "max_restarts": 2}
        values.update(overrides)
        self.config = RunConfig(**values)  # type: ignore[arg-type]
        plan = _plan(self.config)
        settings = Settings(
            run_id=RUN,
            speed=100.0,
            launch_wall=1_000.0,
            start_time=1_000.0,
            join_timeout_s=60.0,
            publish_endpoint="ipc://hub",
        )
        self.now, self.wall = 0.0, 1_000.0
        self.machine = Coordinator(self.config, plan, settings, self.now)
        self.actions: list[object] = []
        self.host_prefix = "host"  # where each node's ranks say they run

    def feed(self, event: object) -> list[object]:
        out = self.machine.handle(event)  # type: ignore[arg-type]
        self.actions += out
        return out

    def message(self, identity: bytes, kind: Kind, body: object, src: int) -> list[object]:
        msg = Message(kind, RUN, self.machine.attempt, src, body)
        return self.feed(Received(identity, msg, self.now, self.wall))

    def tick(self, seconds: float = 0.05) -> list[object]:
        self.now += seconds
        self.wall += seconds
        return self.feed(Tick(self.now, self.wall))

    def join_agents(self) -> None:
        for node in range(self.config.nnodes):
            body = AgentJoin(node=node, host=f"host{node}", pid=100 + node)
            self.message(f"agent{node}".encode(), Kind.AGENT_JOIN, body, AGENT_SRC)

    def join_ranks(self) -> None:
        for rank in range(self.config.ranks):
            body = Join(
                rank=rank,
                local_rank=rank % 2,
                node=rank // 2,
                pid=200 + rank,
                endpoints=(f"ipc://r{rank}",),
                host=f"{self.host_prefix}{rank // 2}",
                env={
                    "RANK": str(rank),
                    "LOCAL_RANK": str(rank % 2),
                    "GROUP_RANK": str(rank // 2),
                    "WORLD_SIZE": "4",
                },
                proof=self.machine.rank_proof(rank),
            )
            self.message(self.rank_id(rank), Kind.JOIN, body, rank)

    def rank_id(self, rank: int) -> bytes:
        return f"r{rank}-a{self.machine.attempt}".encode()

    def ready(self) -> None:
        for rank in range(self.config.ranks):
            self.message(self.rank_id(rank), Kind.READY, RankOnly(rank=rank), rank)

    def start(self) -> None:
        self.join_agents()
        self.join_ranks()
        self.ready()

    def step(self, step: int, loss: float = 5.0) -> None:
        for rank in range(self.config.ranks):
            stats = RankStats(
                loss=loss,
                local_loss=loss,
                tokens=1000,
                grad_norm=1.0,
                compute_s=2.0,
                step_time_s=2.5,
                comm_s=0.5,
                exposed_comm_s=0.5,
                arrive=1000.0 + rank,
                wait_ms=1.0,
                util=95.0,
                temp_c=60.0,
                power_w=600.0,
                mem_used_gb=50.0,
                mem_total_gb=80.0,
                sm_clock_mhz=1900,
                throttled=False,
                seq=step,
                dropped=0,
            )
            body = Stats(rank=rank, step=step, stats=stats)
            self.message(self.rank_id(rank), Kind.STATS, body, rank)

    def samples(self, step: int, phase: PhaseName, ranks: range | None = None) -> int:
        """Every rank's (or ``ranks``') GPU samples during ``phase`` after ``step``; returns
        how many each."""
        count = sim.phase_samples(self.machine.plan, phase.value, step)
        for index in range(count):
            for rank in ranks if ranks is not None else range(self.config.ranks):
                stats = RankStats(loss=5.0, local_loss=5.0, tokens=0, grad_norm=1.0,
                                  compute_s=0.0, step_time_s=15.0, comm_s=0.0,
                                  exposed_comm_s=0.0, arrive=1000.0, wait_ms=0.0, util=5.0,
                                  temp_c=50.0, power_w=120.0, mem_used_gb=50.0,
                                  mem_total_gb=80.0, sm_clock_mhz=1900, throttled=False,
                                  seq=step, dropped=0)  # fmt: skip
                body = Stats(rank=rank, step=step, stats=stats, phase=phase, sample=index,
                             phase_elapsed_s=15.0 * (index + 1))  # fmt: skip
                self.message(self.rank_id(rank), Kind.STATS, body, rank)
        return count

    def published(self) -> list[object]:
        return [a.record for a in self.actions if isinstance(a, Publish)]  # type: ignore[union-attr]

    def sent(self, kind: Kind) -> list[Send]:
        return [a for a in self.actions if isinstance(a, Send) and a.kind is kind]

    def types(self) -> list[str]:
        return [r.TYPE for r in self.published()]  # type: ignore[attr-defined]

    def exit_all(self) -> None:
        for rank in range(self.config.ranks):
            node = rank // 2
            self.message(
                f"agent{node}".encode(),
                Kind.AGENT_EXIT,
                AgentExit(rank=rank, pid=200 + rank, exitcode=-15),
                AGENT_SRC,
            )


def test_go_reaches_every_rank_once_the_last_is_ready() -> None:
    """init_process_group's store barrier: no rank hears GO before every rank is READY."""
    h = Harness()
    h.join_agents()
    h.join_ranks()
    for rank in range(h.config.ranks - 1):
        h.message(h.rank_id(rank), Kind.READY, RankOnly(rank=rank), rank)
    assert h.sent(Kind.GO) == [] and "ready" not in h.types()
    last = h.config.ranks - 1
    h.message(h.rank_id(last), Kind.READY, RankOnly(rank=last), last)
    (go,) = h.sent(Kind.GO)
    assert sorted(go.identities) == sorted(h.rank_id(r) for r in range(h.config.ranks))
    assert h.types()[-1] == "ready"


def test_rendezvous_sends_the_book_once_every_rank_joined() -> None:
    h = Harness()
    h.join_agents()
    assert len(h.sent(Kind.AGENT_WELCOME)) == 2 and len(h.sent(Kind.SPAWN)) == 2
    h.join_ranks()
    books = h.sent(Kind.BOOK)  # one per node, to its ranks, with what they send to
    assert [len(book.identities) for book in books] == [2, 2]
    assert [book.body.ranks for book in books] == [(0, 1, 2), (0, 2, 3)]
    assert books[1].body.endpoints[2] == h.machine.ranks[3].endpoints
    assert h.types() == ["run"]
    h.ready()
    assert h.machine.phase is Phase.TRAINING and h.types() == ["run", "ready"]


def test_a_second_join_for_a_taken_rank_is_dropped() -> None:
    h = Harness()
    h.start()
    forged = Join(rank=1, local_rank=1, node=0, pid=9, endpoints=("tcp://evil:1",), host="x",
                  env={}, proof=h.machine.rank_proof(1))  # even with the right proof  # fmt: skip
    before = h.machine.dropped
    h.message(b"intruder", Kind.JOIN, forged, 1)
    assert h.machine.dropped == before + 1
    assert h.machine.ranks[1].endpoints == ("ipc://r1",)


def test_steps_merge_in_rank_order_and_phases_follow_their_step() -> None:
    h = Harness()
    h.start()
    h.message(
        h.rank_id(0),
        Kind.PHASE,
        PhaseReport(rank=0, step=1, name=PhaseName.EVAL, state=PhaseState.BEGIN),
        0,
    )
    assert "phase" not in h.types()  # held back: step 1 is not merged yet
    h.step(1)
    assert h.types()[-3:] == ["step", "ranks", "phase"]
    begun = h.published()[-1]
    end = PhaseReport(rank=0, step=1, name=PhaseName.EVAL, state=PhaseState.END, val_loss=5.1)
    h.message(h.rank_id(0), Kind.PHASE, end, 0)
    assert h.types()[-1] == "phase"  # held: the phase's samples are not all in yet
    count = h.samples(1, PhaseName.EVAL)
    samples = h.published()[-1 - count : -1]
    assert [r.phase for r in samples] == [PhaseName.EVAL] * count
    assert [r.time - begun.time for r in samples] == [15.0 * (i + 1) for i in range(count)]
    evaluation = h.published()[-1]
    assert evaluation.TYPE == "eval" and evaluation.val_ppl == pytest.approx(math.exp(5.1))
    ranks = next(r for r in h.published() if r.TYPE == "ranks")
    assert [s.rank for s in ranks.ranks] == [0, 1, 2, 3]


def test_the_next_phase_begins_only_after_the_last_ended() -> None:
    """Rank 0 ended the eval and began the checkpoint while rank 3's last eval samples were
    still on the wire: the checkpoint waits behind the eval's end."""
    h = Harness()
    h.start()
    plan = h.machine.plan
    at = next(
        s for s in range(1, 7) if sim.is_eval_step(plan, s) and sim.is_checkpoint_step(plan, s)
    )
    for step in range(1, at + 1):
        h.step(step)
    for name, state in ((PhaseName.EVAL, PhaseState.BEGIN), (PhaseName.EVAL, PhaseState.END)):
        body = PhaseReport(rank=0, step=at, name=name, state=state,
                           val_loss=5.0 if state is PhaseState.END else None)  # fmt: skip
        h.message(h.rank_id(0), Kind.PHASE, body, 0)
    count = h.samples(at, PhaseName.EVAL, ranks=range(3))
    begin = PhaseReport(rank=0, step=at, name=PhaseName.CHECKPOINT, state=PhaseState.BEGIN)
    h.message(h.rank_id(0), Kind.PHASE, begin, 0)
    assert h.types()[-1] == "phase" and h.published()[-1].name == PhaseName.EVAL
    h.samples(at, PhaseName.EVAL, ranks=range(3, 4))
    assert h.types()[-count - 3 :] == ["phase", *["ranks"] * count, "eval", "phase"]
    assert h.published()[-1].name == PhaseName.CHECKPOINT


def test_messages_of_an_earlier_attempt_or_unknown_senders_are_dropped() -> None:
    h = Harness()
    h.start()
    stale = Message(Kind.READY, RUN, 5, 0, RankOnly(rank=0))
    h.feed(Received(h.rank_id(0), stale, h.now, h.wall))
    h.message(b"stranger", Kind.READY, RankOnly(rank=2), 2)
    h.feed(Malformed())
    assert h.machine.dropped == 3


@pytest.mark.parametrize("phase", ["rendezvous", "first_barrier", "training", "phase"])
def test_a_failure_in_every_phase_restarts_from_the_checkpoint(phase: str) -> None:
    h = Harness()
    h.join_agents()
    if phase != "rendezvous":
        h.join_ranks()
    if phase in ("training", "phase"):
        h.ready()
        h.step(1)
    if phase == "phase":
        h.message(
            h.rank_id(0),
            Kind.PHASE,
            PhaseReport(rank=0, step=1, name=PhaseName.EVAL, state=PhaseState.BEGIN),
            0,
        )
    h.message(b"agent0", Kind.AGENT_EXIT, AgentExit(rank=1, pid=201, exitcode=-9), AGENT_SRC)
    assert h.machine.phase is Phase.RESTARTING
    failure = h.published()[-1]
    assert failure.TYPE == "failure" and failure.signal == "SIGKILL" and failure.numel == 5
    h.feed(DisplayStatus(True, h.machine.published))  # the display showed the failure
    h.tick()
    assert len(h.sent(Kind.KILL)) == 1
    h.exit_all()
    h.tick()
    assert h.machine.phase is Phase.RENDEZVOUS and h.machine.attempt == 1
    restart = h.published()[-1]
    assert restart.TYPE == "restart" and restart.resume_step == 1
    assert 0 <= restart.lost_s < 1e4  # never an epoch time
    assert any(isinstance(a, NewAttempt) and a.attempt == 1 for a in h.actions)
    spawns = [s for s in h.sent(Kind.SPAWN) if s.body.attempt == 1]
    assert sorted(s.identities for s in spawns) == [(b"agent0",), (b"agent1",)]  # own nonces
    h.start()  # the new attempt completes its rendezvous
    assert h.machine.phase is Phase.TRAINING


def test_the_kill_waits_for_the_display_but_not_forever() -> None:
    h = Harness()
    h.start()
    h.feed(DisplayStatus(True, h.machine.published))
    h.message(h.rank_id(3), Kind.FAILURE, Failure(rank=3, reason="watchdog", exitcode=1), 3)
    h.tick()
    assert h.sent(Kind.KILL) == []  # the failure is not on screen yet
    h.tick(1.5)
    assert len(h.sent(Kind.KILL)) == 1


def _finished_behind(h: Harness, behind: int) -> int:
    """Six steps, the display ``behind`` records, every rank done: the end waits."""
    h.start()
    for step in range(1, 7):
        h.step(step)
    h.feed(DisplayStatus(True, h.machine.published - behind))
    for rank in range(4):
        h.message(h.rank_id(rank), Kind.DONE, Done(rank=rank, step=6), rank)
    assert h.types()[-1] == "summary"
    return h.machine.published - behind


def _rank0_beats(h: Harness, seconds: float) -> list[object]:
    """Rank 0's main thread keeps answering while time passes (a beat a second)."""
    out: list[object] = []
    for _ in range(round(seconds)):
        out += h.tick(1.0)
        out += h.message(h.rank_id(0), Kind.HEARTBEAT, Heartbeat(t=h.now), 0)
    return out


def test_the_end_waits_while_the_display_is_still_showing_and_shows_what_it_never_did() -> None:
    """A loaded machine or a far rank 0: the run ends only after the display has shown all,
    however slowly; once rank 0 is gone, what it never showed the coordinator shows."""
    h = Harness()
    shown = _finished_behind(h, 5)
    for _ in range(4):  # it shows one more record every 8 s: slow, but showing
        _rank0_beats(h, 8)
        assert h.sent(Kind.EXIT) == []
        shown += 1
        h.feed(DisplayStatus(True, shown))
    h.message(b"agent0", Kind.AGENT_EXIT, AgentExit(rank=0, pid=200, exitcode=-9), AGENT_SRC)
    h.tick()
    h.tick(10.5)  # then nothing more, and rank 0 is gone
    exits = h.sent(Kind.EXIT)
    assert exits and any(isinstance(a, ShowUnshown) for a in h.actions)


def test_a_display_held_up_by_its_reader_is_never_written_around() -> None:
    """``llmcluster --format jsonl | slow-shipper``: rank 0's display is blocked on a full
    pipe, mid-line, and rank 0 still answers. The coordinator says so once and waits; it
    does not print the records itself (they would cut into the line being written)."""
    h = Harness()
    _finished_behind(h, 5)
    out = _rank0_beats(h, 40)
    says = [a.text for a in out if isinstance(a, Say) and "waiting for the reader" in a.text]
    assert len(says) == 1
    assert h.sent(Kind.EXIT) == [] and not any(isinstance(a, ShowUnshown) for a in h.actions)
    h.feed(DisplayStatus(True, h.machine.published))  # the reader caught up
    h.tick()
    assert h.sent(Kind.EXIT) and not any(isinstance(a, ShowUnshown) for a in h.actions)


def test_a_held_display_whose_rank_falls_silent_is_shown_by_the_coordinator() -> None:
    h = Harness()
    _finished_behind(h, 5)
    _rank0_beats(h, 12)
    assert h.sent(Kind.EXIT) == []
    h.tick(h.config.silence_tolerance_s + 1)  # rank 0's host is cut off
    h.tick()
    assert h.sent(Kind.EXIT) and any(isinstance(a, ShowUnshown) for a in h.actions)


def test_a_display_that_showed_everything_ends_the_run_at_once() -> None:
    h = Harness()
    h.start()
    for step in range(1, 7):
        h.step(step)
    for rank in range(4):
        h.message(h.rank_id(rank), Kind.DONE, Done(rank=rank, step=6), rank)
    h.feed(DisplayStatus(True, h.machine.published))
    h.tick()
    assert h.sent(Kind.EXIT) and not any(isinstance(a, ShowUnshown) for a in h.actions)


def test_the_restart_limit_aborts_and_shows_what_the_display_never_did() -> None:
    h = Harness(max_restarts=0)
    h.start()
    h.step(1)
    h.message(b"agent1", Kind.AGENT_EXIT, AgentExit(rank=2, pid=202, exitcode=-9), AGENT_SRC)
    assert h.machine.phase is Phase.ABORTING and h.machine.exit_code == 1
    h.tick(2.0)
    h.exit_all()
    h.tick()
    assert h.machine.over and h.types()[-2:] == ["failure", "summary"]
    assert any(isinstance(a, ShowUnshown) for a in h.actions)
    assert h.published()[-1].exit == "failed"


def test_a_lost_node_is_replaced_on_restart() -> None:
    h = Harness()
    h.start()
    h.feed(AgentLost(1, "node agent 1 (pid 101) exited with -9", -9, h.now))
    assert h.published()[-1].node == 1
    h.tick(2.0)
    h.exit_all()
    h.tick()
    assert [a.node for a in h.actions if isinstance(a, ReplaceAgent)] == [1]
    assert 1 not in h.machine.agents


def test_a_silent_rank_fails_the_step() -> None:
    h = Harness()
    h.start()
    h.step(1)
    h.tick(1.0)
    for rank in (0, 1, 2):  # everyone but rank 3 keeps talking
        h.message(h.rank_id(rank), Kind.HEARTBEAT, Heartbeat(t=1.0), rank)
    for agent in (0, 1):
        h.message(f"agent{agent}".encode(), Kind.HEARTBEAT, Heartbeat(t=1.0), AGENT_SRC)
    h.tick(2.5)
    failure = h.published()[-1]
    assert failure.TYPE == "failure" and failure.rank == 3 and "stopped answering" in failure.reason


def test_silence_is_judged_against_what_has_been_read_not_the_clock() -> None:
    """Messages queued behind a burst (read CONTROL_BATCH at a time) are not silence: while
    the coordinator has read only what was sent by t, a rank heard at t - 1 is not lost."""
    h = Harness()
    h.start()
    h.step(1)
    heard = h.now
    h.now += 10.0  # far past the 3 s tolerance on the clock
    h.feed(Tick(h.now, h.wall, read_up_to=heard + 1.0))  # but read only up to 1 s after
    assert h.machine.phase is Phase.TRAINING
    assert not [r for r in h.published() if r.TYPE == "failure"]  # type: ignore[attr-defined]
    h.feed(Tick(h.now, h.wall, read_up_to=h.now))  # the backlog is read: nobody spoke
    failure = h.published()[-1]
    assert failure.TYPE == "failure"  # type: ignore[attr-defined]
    assert failure.reason == "node 0 (host0) silent for 10.0s"  # type: ignore[attr-defined]


def test_interrupt_stops_at_the_next_boundary_and_waits_for_the_display() -> None:
    h = Harness()
    h.start()
    h.feed(Interrupted("SIGINT", 130, h.now))
    assert h.machine.phase is Phase.STOPPING and len(h.sent(Kind.STOP)) == 1
    h.step(1)
    for rank in range(4):
        h.message(h.rank_id(rank), Kind.DONE, Done(rank=rank, step=1), rank)
    assert h.machine.phase is Phase.FINISHING and h.types()[-1] == "summary"
    h.feed(DisplayStatus(True, 0))
    h.tick()
    assert not h.machine.over  # the summary is not on screen yet
    h.feed(DisplayStatus(True, h.machine.published))
    h.tick()
    assert h.machine.over and h.machine.exit_code == 130
    assert len(h.sent(Kind.EXIT)) == 2  # ranks and agents


def test_interrupt_during_rendezvous_aborts() -> None:
    h = Harness()
    h.join_agents()
    h.feed(Interrupted("SIGTERM", 143, h.now))
    assert h.machine.phase is Phase.ABORTING
    h.tick(1.5)
    h.tick(3.5)
    assert h.machine.over and h.machine.exit_code == 143


def test_rendezvous_timeout_names_the_missing_node() -> None:
    h = Harness()
    h.message(b"agent0", Kind.AGENT_JOIN, AgentJoin(node=0, host="h0", pid=1), AGENT_SRC)
    h.tick(61.0)
    says = [a.text for a in h.actions if getattr(a, "warn", False)]
    assert any("missing node(s) 1" in text for text in says)
    assert h.machine.phase is Phase.ABORTING and h.machine.exit_code == 1


def _refusals(actions: list[object]) -> list[str]:
    return [a.body.reason for a in actions if isinstance(a, Send) and a.kind is Kind.REFUSED]


def _codes(actions: list[object]) -> list[str]:
    return [a.body.code for a in actions if isinstance(a, Send) and a.kind is Kind.REFUSED]


def test_refused_nodes_are_told_why() -> None:
    h = Harness()
    h.message(b"a0", Kind.AGENT_JOIN, AgentJoin(node=0, host="h", pid=1), AGENT_SRC)
    cases = [
        (AgentJoin(node=0, host="h", pid=2), "node rank 0 is taken"),
        (AgentJoin(node=7, host="h", pid=3), "node rank 7 is out of range"),
        (AgentJoin(node=1, host="h", pid=4, nnodes=3), "--nnodes 3 (the coordinator's is 2)"),
        (AgentJoin(node=1, host="h", pid=5, nproc_per_node=8), "--nproc-per-node 8 (the coord"),
    ]
    codes = []
    for index, (body, why) in enumerate(cases):
        out = h.message(f"x{index}".encode(), Kind.AGENT_JOIN, body, AGENT_SRC)
        assert len(_refusals(out)) == 1 and why in _refusals(out)[0], (why, _refusals(out))
        codes += _codes(out)
    assert codes == ["taken", "node_rank", "shape", "shape"]
    out = h.feed(ForeignJoin(b"old", 1))
    assert "protocol version 1" in _refusals(out)[0] and _codes(out) == ["version"]
    assert h.machine.refused == 5 and list(h.machine.agents) == [0]
    h.message(b"a1", Kind.AGENT_JOIN, AgentJoin(node=-1, host="h", pid=6), AGENT_SRC)
    out = h.message(b"a2", Kind.AGENT_JOIN, AgentJoin(node=-1, host="h", pid=7), AGENT_SRC)
    assert _refusals(out) == ["every node rank is taken"] and _codes(out) == ["full"]


def test_a_replacement_for_a_node_gone_quiet_waits_for_the_verdict_instead_of_a_refusal() -> None:
    """The cut node's own side may give up, and a scheduler start its replacement, before
    the coordinator has judged the silence: the replacement's join is not refused while its
    holder misses beats, and its retry is admitted once the holder is declared lost."""
    h = Harness()
    h.start()
    h.step(1)
    replacement = AgentJoin(node=1, host="spare", pid=9)
    out = h.message(b"spare", Kind.AGENT_JOIN, replacement, AGENT_SRC)
    assert _refusals(out) == ["node rank 1 is taken"]  # node 1 beats: a second one is refused
    h.tick(1.0)
    h.message(b"agent0", Kind.HEARTBEAT, Heartbeat(t=1.0), AGENT_SRC)  # node 1 falls quiet
    h.tick(1.5)
    out = h.message(b"spare", Kind.AGENT_JOIN, replacement, AGENT_SRC)
    assert _refusals(out) == [] and not [a for a in out if isinstance(a, Send)]
    assert any("waits: its holder (host1) has been silent for 2.5s" in a.text
               for a in out if isinstance(a, Say))  # fmt: skip
    h.message(b"agent0", Kind.HEARTBEAT, Heartbeat(t=2.0), AGENT_SRC)
    h.tick(1.0)  # node 1 silent for 3.5 s: lost, the group restarts
    assert h.published()[-1].reason == "node 1 (host1) silent for 3.5s"  # type: ignore[attr-defined]
    assert 1 not in h.machine.agents
    out = h.message(b"spare", Kind.AGENT_JOIN, replacement, AGENT_SRC)  # the retry
    assert [a.kind for a in out if isinstance(a, Send)] == [Kind.AGENT_WELCOME, Kind.SPAWN]
    assert h.machine.agents[1].host == "spare"


def test_a_quiet_holder_that_speaks_again_keeps_its_node_rank() -> None:
    h = Harness()
    h.start()
    h.tick(2.5)
    h.message(b"agent0", Kind.HEARTBEAT, Heartbeat(t=2.5), AGENT_SRC)
    joiner = AgentJoin(node=1, host="spare", pid=9)
    assert _refusals(h.message(b"spare", Kind.AGENT_JOIN, joiner, AGENT_SRC)) == []  # held
    h.message(b"agent1", Kind.HEARTBEAT, Heartbeat(t=2.6), AGENT_SRC)  # it was only slow
    out = h.message(b"spare", Kind.AGENT_JOIN, joiner, AGENT_SRC)
    assert _refusals(out) == ["node rank 1 is taken"] and h.machine.agents[1].host == "host1"


def test_each_node_gets_its_own_nonce_and_a_join_needs_its_rank_proof() -> None:
    h = Harness()
    h.join_agents()
    spawns = {a.identities: a.body.nonce for a in h.actions if isinstance(a, Send)
              and a.kind is Kind.SPAWN}  # fmt: skip
    assert len(set(spawns.values())) == 2
    forged = Join(rank=1, local_rank=1, node=0, pid=9, endpoints=("tcp://evil:1",), host="evil",
                  env={}, proof=h.machine.rank_proof(0))  # another rank's proof  # fmt: skip
    h.message(b"evil", Kind.JOIN, forged, 1)
    assert 1 not in h.machine.ranks and h.machine.dropped == 1
    h.join_ranks()
    assert h.machine.book_complete() and h.machine.ranks[1].identity == h.rank_id(1)
    before = h.machine.rank_proof(0)
    h.machine.attempt += 1  # a new attempt: every proof changes
    assert h.machine.rank_proof(0) != before


def test_agents_and_ranks_may_send_only_their_own_kinds() -> None:
    h = Harness()
    h.start()
    dropped = h.machine.dropped
    h.message(b"agent0", Kind.DONE, Done(rank=3, step=1), AGENT_SRC)  # an agent's "done"
    h.message(b"agent0", Kind.AGENT_EXIT, AgentExit(rank=3, pid=1, exitcode=0), AGENT_SRC)
    h.message(h.rank_id(1), Kind.AGENT_EXIT, AgentExit(rank=1, pid=1, exitcode=0), 1)
    h.message(h.rank_id(1), Kind.PHASE, PhaseReport(rank=1, step=0, name=PhaseName.EVAL,
                                                    state=PhaseState.BEGIN), 1)  # fmt: skip
    assert h.machine.dropped == dropped + 4 and h.machine.phase is Phase.TRAINING
    assert not any(p.done or p.exited for p in h.machine.ranks.values())


def test_reports_about_steps_the_run_cannot_be_at_are_dropped() -> None:
    h = Harness()
    h.start()
    h.step(1)
    dropped, pending = h.machine.dropped, len(h.machine.reports.pending)
    h.step(500)  # far ahead: would wait forever for a merge
    h.step(0)  # behind the merged step
    assert h.machine.dropped == dropped + 2 * h.config.ranks
    assert len(h.machine.reports.pending) == pending
    h.step(2)
    assert [r.step for r in h.published() if r.TYPE == "step"] == [1, 2]


def test_the_ranks_records_of_a_new_attempt_name_the_hosts_its_ranks_joined_from() -> None:
    """The rank infos every merged record carries are kept per attempt, not rebuilt per
    message: a restart whose ranks join from other hosts (spares) must show those."""
    h = Harness()
    h.start()
    h.step(1)
    h.message(b"agent0", Kind.AGENT_EXIT, AgentExit(rank=1, pid=201, exitcode=-9), AGENT_SRC)
    h.feed(DisplayStatus(True, h.machine.published))
    h.tick()
    h.exit_all()
    h.tick()
    assert h.machine.attempt == 1
    h.host_prefix = "spare"
    h.start()
    h.step(2)
    ranks = [r for r in h.published() if r.TYPE == "ranks"]  # type: ignore[attr-defined]
    assert [s.host for s in ranks[0].ranks] == ["host0", "host0", "host1", "host1"]
    assert [s.host for s in ranks[-1].ranks] == ["spare0", "spare0", "spare1", "spare1"]
