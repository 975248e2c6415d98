"""How a node agent starts its ranks: what each is started with, and who forks it.

``rank_launches``: for one attempt, every local rank's ``RankSpec``, torchrun's environment
and its log streams (``RankLaunch``), the same whoever forks it. ``LocalStarter``: the agent
forks every rank itself (a local run, ``llmcluster node``, ``launch`` with one task per node).
``slots.SlotStarter`` (a Slurm step of one task per rank) has the same face: ``allocate`` the
node's shared memory, ``start_all`` of an attempt's ranks, the ranks that ``exited`` (pid ->
torch's exit code, minus the signal), ``stop`` them, the descriptors that wake the agent when
one reports.
"""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llmcluster.comm.shm import anonymous
from llmcluster.comm.topology import Topology, send_targets
from llmcluster.config import RunConfig
from llmcluster.control.env import environment, shared_items, torchrun_env
from llmcluster.control.link import Beacon
from llmcluster.control.procs import fork_child, reap, terminate_all
from llmcluster.control.security import CurveKeys, rank_proof
from llmcluster.setup import build_setup
from llmcluster.wire import codec
from llmcluster.wire.messages import Spawn
from llmcluster.worker import logspec
from llmcluster.worker.errors import ERROR_FILE_VAR
from llmcluster.worker.rank import Rank, RankSpec


@dataclass(frozen=True)
class RankLaunch:
    """One rank process to start: its spec, its environment and where its streams go."""

    spec: RankSpec
    env: dict[str, str]
    stdout: str = ""  # a file, or "" to keep the starter's stream
    stderr: str = ""


@dataclass(frozen=True)
class NodePlace:
    """What an agent knows of its node when it starts an attempt's ranks."""

    node: int
    host: str
    control: str
    publish: str
    run_dir: str  # the ranks' ipc inboxes
    tcp_host: str | None
    curve: CurveKeys | None
    shm: Any
    board: Any
    beacon: Beacon


def rank_launches(
    config: RunConfig,
    place: NodePlace,
    spawn: Spawn,
    run_id: str,
    rank_logs: Mapping[int, logspec.RankLogs],
) -> list[RankLaunch]:
    """Every local rank of ``place.node`` for ``spawn``'s attempt, in local rank order."""
    local = config.node_ranks(place.node)
    launches = []
    for local_rank, rank in enumerate(local):
        inbox = [f"ipc://{place.run_dir}/r{rank}"]
        if place.tcp_host:
            inbox.append(f"tcp://{place.tcp_host}:0")
        spec = RankSpec(
            config=config, run_id=run_id, rank=rank, local_rank=local_rank, node=place.node,
            host=place.host, attempt=spawn.attempt, start_step=spawn.start_step,
            sim_time=spawn.sim_time, control=place.control, publish=place.publish, inbox=inbox,
            speed=spawn.speed, proof=rank_proof(spawn.nonce, rank), curve=place.curve,
            shm=place.shm, board=place.board, beacon=place.beacon,
            plan_host=place.tcp_host is None,  # one machine: the plan's host names
        )  # fmt: skip
        env = torchrun_env(
            rank=rank, local_rank=local_rank, world_size=config.ranks,
            local_world_size=len(local), group_rank=place.node,
            master_addr=config.master_addr, master_port=config.master_port, run_id=run_id,
            restart_count=spawn.attempt, max_restarts=config.max_restarts, role=config.role,
        )  # fmt: skip
        logs = rank_logs[rank]
        if logs.error_file:
            env[ERROR_FILE_VAR] = logs.error_file
        launches.append(RankLaunch(spec, env, logs.stdout, logs.stderr))
    return launches


def prepare_forks(config: RunConfig, local: Iterable[int]) -> None:
    """Compute before forking what every local rank would otherwise compute for itself on
    its way to the first barrier: the run's setup, the message checkers, the topology and
    each rank's send targets. A forked rank inherits them; computing them itself, it would
    also copy every page the work writes (a thousand ranks on two cores feel both)."""
    if config.bench is None:
        build_setup(config)
    codec.prepare()
    topology = Topology.uniform(config.ranks, config.nproc_per_node)
    for rank in local:
        send_targets(topology, rank)
        topology.node_members(topology.node_of[rank])


def fork_rank(launch: RankLaunch) -> int:
    """Fork the rank process of ``launch``; its pid."""
    spec = launch.spec
    return fork_child(lambda: Rank(spec).run(), name=f"llmc-rank{spec.rank}", env=launch.env,
                      stdout=launch.stdout, stderr=launch.stderr)  # fmt: skip


def _own_env(launch: RankLaunch, shared: dict[str, str]) -> RankLaunch:
    """``launch`` with only the variables not in ``shared``."""
    own = {name: value for name, value in launch.env.items() if name not in shared}
    return dataclasses.replace(launch, env=own)


class LocalStarter:
    """Every rank a child of the agent: inherited shared memory, exits seen by waitpid."""

    def allocate(self, size: int) -> mmap.mmap:
        return anonymous(size)

    def start_all(
        self, launches: Sequence[RankLaunch], started: Callable[[int, RankLaunch], None]
    ) -> None:
        """Fork every rank of ``launches``, telling ``started`` each pid at once. The variables
        all of them share (the world, the master, the run id...) are set once here around the
        forks, so each rank inherits them and sets only its own: every variable a child sets
        copies ~5 of its pages (glibc's setenv, the environ dict), a hundred for torchrun's
        fifteen."""
        shared = shared_items([launch.env for launch in launches])
        with environment(shared):
            for launch in launches:
                started(fork_rank(_own_env(launch, shared)), launch)

    def exited(self, pids: Iterable[int]) -> dict[int, int]:
        return reap(pids)

    def stop(self, pids: Iterable[int]) -> dict[int, int]:
        return terminate_all(pids)

    def fds(self) -> list[int]:
        return []

    def close(self, code: int) -> None:
        """Nothing to let go of (the mappings go with the process)."""
