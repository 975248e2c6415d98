"""Which node each rank lives on, and which ranks each rank's collectives send to.

``Topology`` is torchrun's rank -> node mapping. ``send_targets`` is the exact set of
peers a rank's ``Communicator`` may send to (its node's ranks, its partners in the
world-wide binomial tree and ring, and, on a node leader, its partners among the leaders
and the fused star's root; the root sends to every leader). The coordinator sends each
node an address book of the union over its ranks (``node_book_ranks``) instead of the whole
world's, so a book grows with the node and the world's log, not with the world.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    """Which node each global rank lives on (index = global rank)."""

    node_of: tuple[int, ...]

    @classmethod
    @functools.cache
    def uniform(cls, world_size: int, nproc_per_node: int) -> Topology:
        """torchrun's mapping: rank r lives on node r // nproc_per_node (one object per
        shape: an agent builds it once and the ranks it forks inherit it)."""
        return cls(tuple(r // nproc_per_node for r in range(world_size)))

    @functools.cached_property
    def _members(self) -> dict[int, list[int]]:
        members: dict[int, list[int]] = {}
        for rank, node in enumerate(self.node_of):
            members.setdefault(node, []).append(rank)
        return members

    def node_members(self, node: int) -> list[int]:
        """Global ranks on ``node``, ascending (the first one leads the node)."""
        return self._members.get(node, [])

    @functools.cached_property
    def _leaders(self) -> list[int]:
        return [self._members[node][0] for node in sorted(self._members)]

    def leaders(self) -> list[int]:
        """The lowest rank of every node, in node order."""
        return list(self._leaders)

    @functools.cached_property
    def _send_targets(self) -> dict[int, frozenset[int]]:
        return {}  # filled by send_targets (an agent's, for its ranks, before it forks them)


def tree_targets(members: Sequence[int], idx: int) -> set[int]:
    """Whom ``members[idx]`` sends to in a binomial reduce to members[0] (its parent) and
    the binomial broadcast from it (its children)."""
    n = len(members)
    low = idx & -idx
    out = {members[idx - low]} if idx else set()
    mask = 1
    while mask < n and (idx == 0 or mask < low):
        if idx + mask < n:
            out.add(members[idx + mask])
        mask <<= 1
    return out


def send_targets(topology: Topology, rank: int) -> frozenset[int]:
    """Every rank that ``rank``'s collectives may send to (``broadcast`` and ``gather`` from
    root 0; another root needs every rank's endpoint). Kept on ``topology``: a forked rank
    finds its own there."""
    known = topology._send_targets.get(rank)
    if known is None:
        known = topology._send_targets[rank] = _send_targets(topology, rank)
    return known


def _send_targets(topology: Topology, rank: int) -> frozenset[int]:
    world = range(len(topology.node_of))
    local = topology.node_members(topology.node_of[rank])
    out = set(local) | tree_targets(world, rank) | {0}
    if len(world) > 1:
        out.add((rank + 1) % len(world))  # the world ring's right neighbour
    leaders = topology._leaders
    if rank == local[0]:
        idx = leaders.index(rank)
        out |= tree_targets(leaders, idx) | {leaders[0], leaders[(idx + 1) % len(leaders)]}
        if idx == 0:  # the fused star's root answers every leader
            out |= set(leaders)
    out.discard(rank)
    return frozenset(out)


def node_book_ranks(topology: Topology, node: int) -> tuple[int, ...]:
    """The ranks whose endpoints ``node``'s address book holds: what its ranks send to."""
    wanted: set[int] = set()
    for rank in topology.node_members(node):
        wanted |= send_targets(topology, rank)
    return tuple(sorted(wanted))
