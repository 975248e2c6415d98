"""Local node agents: forked and reaped by the launching process (the coordinator's host).

``LocalNodes``: every node of a run on this machine. ``HostedNode``: the one node agent of
``llmcluster launch`` on the host that serves the coordinator (the others are remote).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from llmcluster.control.procs import reap, terminate_all
from llmcluster.coordinator.state import AgentLost

EXIT_GRACE_S = 2.0


class LocalNodes:
    """Node agents this process forked: a dead one is seen at once (waitpid), not by silence."""

    def __init__(self, start_agent: Callable[[int], int], nnodes: int) -> None:
        self._start = start_agent
        self.pids: dict[int, int] = {start_agent(node): node for node in range(nnodes)}

    def lost(self, now: float) -> list[AgentLost]:
        """Agents that exited since the last call."""
        gone = []
        for pid, code in reap(list(self.pids)).items():
            node = self.pids.pop(pid)
            gone.append(
                AgentLost(node, f"node agent {node} (pid {pid}) exited with {code}", code, now)
            )
        return gone

    def replace(self, node: int) -> None:
        """Fork a new agent for ``node`` (it joins and gets SPAWN like the first one)."""
        self.pids[self._start(node)] = node

    def close(self) -> None:
        """Give the agents a moment to leave after EXIT, then terminate what is left."""
        deadline = time.monotonic() + EXIT_GRACE_S
        while self.pids and time.monotonic() < deadline:
            for pid in reap(list(self.pids)):
                self.pids.pop(pid)
            time.sleep(0.01)
        terminate_all(list(self.pids), grace_s=0.5)
        self.pids.clear()


class HostedNode:
    """The agent this process forked for its own node; the remote nodes are left to their
    heartbeats. ``node`` -1 (assigned at the rendezvous): its loss is seen by silence."""

    def __init__(self, start_agent: Callable[[], int], node: int) -> None:
        self._start, self.node = start_agent, node
        self.pids: list[int] = [start_agent()]

    def lost(self, now: float) -> list[AgentLost]:
        """This node's agent, if it exited since the last call."""
        gone = []
        for pid, code in reap(self.pids).items():
            self.pids.remove(pid)
            if self.node >= 0:
                why = f"node agent {self.node} (pid {pid}) exited with {code}"
                gone.append(AgentLost(self.node, why, code, now))
        return gone

    def replace(self, node: int) -> None:
        """Fork a new agent when ``node`` is this host's own (remote nodes come back alone)."""
        if node == self.node and not self.pids:
            self.pids.append(self._start())

    def close(self) -> None:
        """Give the agent a moment to leave after EXIT, then terminate it if it has not."""
        deadline = time.monotonic() + EXIT_GRACE_S
        while self.pids and time.monotonic() < deadline:
            for pid in reap(self.pids):
                self.pids.remove(pid)
            time.sleep(0.01)
        terminate_all(self.pids, grace_s=0.5)
        self.pids.clear()
