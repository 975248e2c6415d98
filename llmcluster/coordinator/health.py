"""Who has gone silent: pure checks on the last time each peer was heard from.

Every node agent and every rank heartbeats once a second; one silent for longer than the
run's silence tolerance is lost. Local or remote makes no difference here (a local
agent's death is usually seen earlier, by ``waitpid``).
"""

from __future__ import annotations

from collections.abc import Mapping

from llmcluster.coordinator.state import AgentPeer, RankPeer


def silent_node(agents: Mapping[int, AgentPeer], now: float, tolerance_s: float) -> int | None:
    """The first node whose agent has been silent for longer than ``tolerance_s``."""
    return next((n for n, a in agents.items() if now - a.last_seen > tolerance_s), None)


def silent_rank(ranks: Mapping[int, RankPeer], now: float, tolerance_s: float) -> int | None:
    """The first live, unfinished rank silent for longer than ``tolerance_s``."""
    return next(
        (
            r
            for r, p in ranks.items()
            if not p.exited and not p.done and now - p.last_seen > tolerance_s
        ),
        None,
    )


def answering(peer: RankPeer | None, now: float, tolerance_s: float) -> bool:
    """``peer`` lives and was heard from within ``tolerance_s``."""
    return peer is not None and not peer.exited and now - peer.last_seen < tolerance_s
