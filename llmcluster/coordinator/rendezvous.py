"""Rendezvous, the pure part: agents join as nodes, ranks join, the address book goes out.

The base of the coordinator's state machine (``machine.Coordinator``): it keeps the peers
of the current attempt and decides joins, like c10d's rendezvous handler: a node asks for
a node rank (or ``auto``), is admitted or refused with a reason, and receives the run's
configuration and the current attempt; once every rank of the world has joined, each one
gets the address book.
"""

from __future__ import annotations

import hmac

from llmcluster import sim
from llmcluster.config import RunConfig
from llmcluster.control.env import env_mismatches
from llmcluster.control.procs import signal_name
from llmcluster.coordinator.describe import run_record
from llmcluster.coordinator.state import Action, AgentPeer, RankPeer, Say, Settings
from llmcluster.telemetry.merge import RankInfo
from llmcluster.wire import Kind, Message
from llmcluster.wire.messages import (
    STEP_REDUCTION_VALUES,
    AgentJoin,
    AgentWelcome,
    Book,
    Join,
    Spawn,
)
from llmcluster.wire.records import FailureRecord, RunRecord


class Rendezvous:
    """Peers and joins; subclassed by the coordinator's machine."""

    out: list[Action]

    def __init__(
        self, config: RunConfig, plan: sim.RunPlan, settings: Settings, now: float
    ) -> None:
        self.config, self.plan, self.settings = config, plan, settings
        self.attempt = 0
        self.agents: dict[int, AgentPeer] = {}
        self.ranks: dict[int, RankPeer] = {}
        self.lost_nodes: set[int] = set()
        self.dropped = 0
        self.refused = 0
        self.rendezvous_wall = settings.launch_wall
        self.join_deadline = now + settings.join_timeout_s if settings.join_timeout_s else None
        self.now = now  # the latest clock reading an event brought

    # provided by the machine
    def send(self, identities: list[bytes], kind: Kind, body: object) -> None: ...
    def publish(self, record: object) -> None: ...
    def log(self, level: str, text: str) -> None: ...
    def spawn_body(self) -> Spawn: ...

    def agent_join(self, identity: bytes, msg: Message, now: float) -> None:
        """An agent asks to join as a node; admit it (welcome + spawn) or refuse it."""
        body = msg.body
        assert isinstance(body, AgentJoin)
        if not self._token_ok(body.token):
            self._refuse(f"refused a join from {body.host!r} (wrong or missing token)")
            return
        if any(agent.identity == identity for agent in self.agents.values()):
            return  # a retried join whose welcome is already on its way
        node = body.node
        if node < 0:
            node = next(n for n in range(self.config.nnodes + 1) if n not in self.agents)
        if node >= self.config.nnodes or node in self.agents:
            self._refuse(f"refused {body.host!r} as node {node} (taken or out of range)")
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
        self.send([identity], Kind.SPAWN, self.spawn_body())

    def _token_ok(self, offered: str) -> bool:
        """Constant-time comparison of UTF-8 bytes (any Unicode token works)."""
        token = self.settings.token.encode()
        return not token or hmac.compare_digest(offered.encode("utf-8", "surrogatepass"), token)

    def _refuse(self, text: str) -> None:
        self.refused += 1
        self.dropped += 1
        self.out.append(Say(text, warn=True))

    def rank_join(self, identity: bytes, msg: Message, now: float) -> int | None:
        """A rank of this attempt joined; returns its rank, or None if refused.

        A rank identity is claimed once per attempt: a second JOIN for a rank that has
        already joined from another connection is dropped (no takeover)."""
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
        host = self.plan.node_names[body.node] if self.settings.simulated_hosts else body.host
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
        """The address book to every rank (encoded once), and the run record."""
        order = [self.ranks[r] for r in range(self.config.ranks)]
        book = Book(
            endpoints=tuple(p.endpoints for p in order),
            nodes=tuple(self.config.node_of(r) for r in range(self.config.ranks)),
        )
        self.send([p.identity for p in order], Kind.BOOK, book)
        self.publish(self.run_record())

    def infos(self) -> list[RankInfo]:
        """Every rank's join info, in rank order."""
        return [self.ranks[r].info for r in range(self.config.ranks)]  # type: ignore[misc]

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
        self.rendezvous_wall = wall
        if self.settings.join_timeout_s:  # lost nodes get the join timeout again to come back
            self.join_deadline = self.now + self.settings.join_timeout_s
