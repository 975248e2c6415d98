"""Rendezvous, the pure part: agents join as nodes, ranks join, the address book goes out.

The base of the coordinator's state machine (``machine.Coordinator``): it keeps the peers
of the current attempt and decides joins, like c10d's rendezvous handler: a node asks for
a node rank (or ``auto``), is admitted or refused with a reason, and receives the run's
configuration and the current attempt, with the nonce its ranks prove themselves with
(``control.security``); a refused node is told why. A rank joins once per attempt, with the
proof its agent handed it at fork; once every rank of the world has joined, each node's ranks
get their node's address book (the endpoints they send to).
"""

from __future__ import annotations

from llmcluster import sim
from llmcluster.comm.topology import Topology, node_book_ranks
from llmcluster.config import RunConfig
from llmcluster.control.env import env_mismatches
from llmcluster.control.procs import signal_name
from llmcluster.control.security import attempt_nonce, proof_ok, rank_proof
from llmcluster.coordinator.reports import Reports
from llmcluster.coordinator.state import Action, AgentPeer, RankPeer, Say, Settings
from llmcluster.telemetry.describe import run_record
from llmcluster.telemetry.merge import RankInfo
from llmcluster.wire import AGENT_SRC, HEARTBEAT_S, PROTOCOL_VERSION, Kind, Message
from llmcluster.wire.messages import (
    STEP_REDUCTION_VALUES,
    AgentExit,
    AgentJoin,
    AgentWelcome,
    Book,
    Join,
    Phase,
    Refused,
    RefusedFor,
    Spawn,
    Stats,
)
from llmcluster.wire.records import FailureRecord, RunRecord

STATS_WINDOW = 16  # steps beyond the last merged one a rank's report may be (lock-step: ~2)
AGENT_KINDS = frozenset({Kind.AGENT_EXIT, Kind.HEARTBEAT})  # what an agent may send us
RANK_KINDS = frozenset({Kind.READY, Kind.STATS, Kind.PHASE, Kind.DONE, Kind.FAILURE,
                        Kind.HEARTBEAT})  # fmt: skip
REFUSALS_SAID = 10  # refusals said one by one; after that, one line per thousand
HOLDER_DYING_S = 2 * HEARTBEAT_S  # an agent this long unheard has missed two beats
HANDSHAKE_NOTE_S = 5.0  # failed handshakes are reported at most this often (a flood is one line)


def shape_mismatch(config: RunConfig, join: AgentJoin) -> str:
    """Why a node expecting another cluster shape (its --nnodes, --nproc-per-node; 0: any)
    cannot join this run, or "" when it can."""
    expected = (
        ("--nnodes", join.nnodes, config.nnodes),
        ("--nproc-per-node", join.nproc_per_node, config.nproc_per_node),
    )
    wrong = [f"{flag} {said} (the coordinator's is {have})"
             for flag, said, have in expected if said and said != have]  # fmt: skip
    if not wrong:
        return ""
    return (f"this node's {' and '.join(wrong)} does not match the run of {config.nnodes} "
            f"node(s) x {config.nproc_per_node} rank(s): start every node with the same "
            "--nnodes and --nproc-per-node")  # fmt: skip


class Rendezvous:
    """Peers and joins; subclassed by the coordinator's machine."""

    out: list[Action]
    reports: Reports  # the machine's

    def __init__(
        self, config: RunConfig, plan: sim.RunPlan, settings: Settings, now: float
    ) -> None:
        self.config, self.plan, self.settings = config, plan, settings
        self.attempt = 0
        self.agents: dict[int, AgentPeer] = {}
        self.ranks: dict[int, RankPeer] = {}
        self._infos: tuple[RankInfo, ...] | None = None  # built once per attempt's book
        self.lost_nodes: set[int] = set()
        self.dropped = 0
        self.refused = 0
        self.held = 0  # joins for a node rank whose holder had gone quiet (see _hold)
        self.handshakes_failed = 0
        self._next_handshake_note = 0.0
        self.rendezvous_wall = settings.launch_wall
        self.join_deadline = now + settings.join_timeout_s if settings.join_timeout_s else None
        self.now = now  # the latest clock reading an event brought

    # provided by the machine
    def send(self, identities: list[bytes], kind: Kind, body: object) -> None: ...
    def publish(self, record: object) -> None: ...
    def log(self, level: str, text: str) -> None: ...
    def spawn_body(self, node: int) -> Spawn: ...

    def agent_join(self, identity: bytes, msg: Message, now: float) -> None:
        """An agent asks to join as a node; admit it (welcome + spawn) or refuse it."""
        body = msg.body
        assert isinstance(body, AgentJoin)
        if any(agent.identity == identity for agent in self.agents.values()):
            return  # a retried join whose welcome is already on its way
        config, node = self.config, body.node
        mismatch = shape_mismatch(config, body)
        if mismatch:
            self.refuse(identity, mismatch, body.host, RefusedFor.SHAPE)
            return
        if node < 0:
            node = next(n for n in range(config.nnodes + 1) if n not in self.agents)
        if node >= config.nnodes:
            if body.node < 0:
                self.refuse(identity, "every node rank is taken", body.host, RefusedFor.FULL)
            else:
                why = f"node rank {node} is out of range (the run has {config.nnodes} node(s))"
                self.refuse(identity, why, body.host, RefusedFor.NODE_RANK)
            return
        holder = self.agents.get(node)
        if holder is not None and now - holder.last_seen > HOLDER_DYING_S:
            self._hold(node, holder, body.host, now)  # the joiner retries after the verdict
            return
        if holder is not None:
            self.refuse(identity, f"node rank {node} is taken", body.host, RefusedFor.TAKEN)
            return
        self.agents[node] = AgentPeer(identity, now, body.host, body.pid)
        if self.settings.standalone:
            self.out.append(
                Say(
                    f"node {node} joined from {body.host} "
                    f"({len(self.agents)}/{self.config.nnodes} nodes)"
                )
            )
        welcome = AgentWelcome(
            node=node, config=self.config.to_wire(), publish=self.settings.publish_endpoint
        )
        self.send([identity], Kind.AGENT_WELCOME, welcome)
        self.send([identity], Kind.SPAWN, self.spawn_body(node))

    def refuse(self, identity: bytes, reason: str, host: str, code: RefusedFor) -> None:
        """Tell a node why it is not admitted (it exits 2 with the reason), and say it here."""
        self.refused += 1
        self.dropped += 1
        self.send([identity], Kind.REFUSED, Refused(reason=reason, code=code.value))
        if self.refused <= REFUSALS_SAID or self.refused % 1000 == 0:  # a flood: a few lines
            origin = f" from {host!r}" if host else ""
            self.out.append(Say(f"refused a join{origin} ({self.refused} so far): {reason}", True))

    def _hold(self, node: int, holder: AgentPeer, host: str, now: float) -> None:
        """A join for a node rank whose holder has stopped beating: a replacement may come
        before the holder's silence is judged (the holder's own side gives up on us as
        soon). It gets no answer; its retry is admitted once the holder is declared lost,
        or refused if the holder speaks again."""
        self.held += 1
        if self.held <= REFUSALS_SAID or self.held % 1000 == 0:
            origin = f" from {host!r}" if host else ""
            self.out.append(Say(f"a join{origin} for node rank {node} waits: its holder "
                                f"({holder.host}) has been silent for "
                                f"{now - holder.last_seen:.1f}s"))  # fmt: skip

    def foreign_join(self, identity: bytes, version: int) -> None:
        """A node of another protocol version asked to join."""
        self.refuse(identity, f"protocol version {version}; this coordinator speaks "
                    f"{PROTOCOL_VERSION} (run the same llmcluster on every host)", "",
                    RefusedFor.VERSION)  # fmt: skip

    def handshake_failed(self, endpoint: str, now: float) -> None:
        """A connection failed the CurveZMQ handshake; say so, once per few seconds."""
        self.handshakes_failed += 1
        if now >= self._next_handshake_note:
            self._next_handshake_note = now + HANDSHAKE_NOTE_S
            self.out.append(Say(
                f"refused a connection on {endpoint}: it failed the CurveZMQ handshake (wrong "
                f"or missing token, or not llmcluster; {self.handshakes_failed} so far)", True,
            ))  # fmt: skip

    def nonce(self, node: int) -> str:
        """The nonce of ``node``'s ranks in this attempt (its agent's alone)."""
        return attempt_nonce(self.settings.secret, self.attempt, node)

    def rank_proof(self, rank: int) -> str:
        """What ``rank`` of this attempt must show (in JOIN; rank 0 to claim the display)."""
        return rank_proof(self.nonce(self.config.node_of(rank)), rank)

    def sender(self, identity: bytes, msg: Message) -> object | None:
        """The peer a message claims to come from, if it really does and may send it: an
        agent its exits (of its own node's ranks) and heartbeats, a rank its own reports."""
        body = msg.body
        if msg.src == AGENT_SRC:
            node, agent = next(
                ((n, a) for n, a in self.agents.items() if a.identity == identity), (-1, None)
            )
            if agent is None or msg.kind not in AGENT_KINDS:
                return None
            if isinstance(body, AgentExit) and self.config.node_of(body.rank) != node:
                return None
            return agent
        peer = self.ranks.get(msg.src)
        if peer is None or peer.identity != identity or msg.kind not in RANK_KINDS:
            return None
        if getattr(body, "rank", msg.src) != msg.src:
            return None
        if isinstance(body, Stats | Phase) and not self._timely(body):
            return None
        return peer

    def _timely(self, body: Stats | Phase) -> bool:
        """A report about a step the run can be at (anything else would be kept forever);
        phases are rank 0's to report."""
        merged = self.reports.merged_step
        if isinstance(body, Phase) and body.rank != 0:
            return False
        return merged <= body.step <= merged + STATS_WINDOW

    def rank_join(self, identity: bytes, msg: Message, now: float) -> int | None:
        """A rank of this attempt joined; returns its rank, or None if refused.

        A rank identity is claimed once per attempt, by the process its agent spawned: a JOIN
        without that rank's proof is dropped, and so is a second JOIN for a rank that has
        already joined from another connection (no takeover)."""
        body = msg.body
        assert isinstance(body, Join)
        if msg.src != body.rank or body.node not in self.agents:
            self.dropped += 1
            return None
        if body.node != self.config.node_of(body.rank):
            self.dropped += 1
            return None
        peer = self.ranks.get(body.rank)
        if peer is not None and peer.identity != identity:
            self.dropped += 1
            return None
        if not proof_ok(body.proof, self.rank_proof(body.rank)):
            self.dropped += 1
            return None
        host = self.plan.node_names[body.node] if self.settings.simulated_hosts else body.host
        self._infos = None
        self.ranks[body.rank] = RankPeer(
            identity,
            now,
            info=RankInfo(body.rank, body.local_rank, body.node, host, body.pid),
            endpoints=body.endpoints,
            env=dict(body.env),
        )
        self._check_env(body.rank)
        return body.rank

    def _check_env(self, rank: int) -> None:
        peer = self.ranks[rank]
        assert peer.info is not None
        wrong = env_mismatches(
            peer.env,
            rank=rank,
            local_rank=peer.info.local_rank,
            node=peer.info.node,
            world_size=self.config.ranks,
        )
        if wrong:
            self.log("ERROR", f"rank {rank} sees wrong {', '.join(wrong)}")

    def book_complete(self) -> bool:
        """Every rank of the world has joined this attempt."""
        return len(self.ranks) == self.config.ranks

    def send_book(self) -> None:
        """Each node's address book to its ranks (encoded once per node: the endpoints its
        ranks send to, not the world's), and the run record."""
        config = self.config
        topology = Topology(tuple(config.node_of(r) for r in range(config.ranks)))
        for node in range(config.nnodes):
            wanted = node_book_ranks(topology, node)
            book = Book(ranks=wanted, endpoints=tuple(self.ranks[r].endpoints for r in wanted))
            members = [self.ranks[r].identity for r in topology.node_members(node)]
            self.send(members, Kind.BOOK, book)
        self.publish(self.run_record())

    def infos(self) -> tuple[RankInfo, ...]:
        """Every rank's join info, in rank order (kept: every stats message of every rank
        needs it, and rebuilt per message it made each step cost the world squared)."""
        if self._infos is None:
            self._infos = tuple(self.ranks[r].info for r in range(self.config.ranks))  # type: ignore[misc]
        return self._infos

    def run_record(self) -> RunRecord:
        config, infos = self.config, self.infos()
        real = [self.agents[n].host if n in self.agents else "" for n in range(config.nnodes)]
        hosts = [
            self.plan.node_names[n] if self.settings.simulated_hosts else real[n]
            for n in range(config.nnodes)
        ]
        return run_record(
            config,
            self.plan,
            run_id=self.settings.run_id,
            speed=self.settings.speed,
            start_time=self.settings.start_time,
            attempt=self.attempt,
            hosts=hosts,
            real_hosts=real,
            pids=[i.pid for i in infos],
            env=[self.ranks[r].env for r in range(config.ranks)],
            agent_pid=self.settings.agent_pid,
        )

    def failure_record(self, rank: int, exitcode: int, reason: str, *, step: int, time: float,
                       seq: int, error_file: str = "") -> FailureRecord:  # fmt: skip
        """The root cause, as torchrun's ChildFailedError names it (the rank's own join
        info where it joined, else where torchrun's mapping puts it)."""
        peer = self.ranks.get(rank)
        info = peer.info if peer is not None else None
        return FailureRecord(
            time=time,
            rank=rank,
            local_rank=info.local_rank if info else self.config.local_rank_of(rank),
            node=info.node if info else self.config.node_of(rank),
            host=info.host if info else "",
            pid=info.pid if info else 0,
            exitcode=exitcode,
            signal=signal_name(exitcode),
            reason=reason,
            seq=seq,
            op="ALLREDUCE",
            numel=STEP_REDUCTION_VALUES,
            timeout_ms=int(self.config.collective_timeout_s * 1000),
            step=step,
            attempt=self.attempt,
            max_restarts=self.config.max_restarts,
            error_file=error_file,
        )

    def node_lost(self, node: int) -> None:
        """A node's agent is gone: its ranks died with it (PDEATHSIG)."""
        self.agents.pop(node, None)
        self.lost_nodes.add(node)
        for rank in self.config.node_ranks(node):
            if rank in self.ranks:
                self.ranks[rank].exited = True

    def new_attempt_state(self, wall: float) -> None:
        """Forget the last attempt's ranks."""
        self.ranks.clear()
        self._infos = None
        self.rendezvous_wall = wall
        if self.settings.join_timeout_s:  # lost nodes get the join timeout again to come back
            self.join_deadline = self.now + self.settings.join_timeout_s
