"""A rank: one process playing one GPU.

Life of a rank: join the coordinator, receive its node's address book, pass the first barrier,
say READY and wait for GO (every rank is ready: init_process_group's store barrier), then
build and run its workload (``training.Training`` or ``bench.rank_bench``) in lock-step with
every other rank, and wait to be told to leave. Rank 0 of a training run also hosts the display
thread, the telemetry plane's reliable subscriber. It joins with the proof its agent handed
it at fork; across hosts its TCP sockets use the run's CurveZMQ keys, its inbox behind the
token's ZAP handler. A malformed address book is dropped (counted) like any bad message.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import time
import traceback
from dataclasses import dataclass
from typing import Any

import zmq

from llmcluster.comm import CollectiveTimeout, Communicator, PeerMesh
from llmcluster.comm.board import NodeBoard
from llmcluster.comm.shm import ShmArena
from llmcluster.comm.topology import Topology, send_targets
from llmcluster.config import RunConfig
from llmcluster.control.env import TORCHRUN_VARS
from llmcluster.control.link import ControlLink, CoordinatorLost
from llmcluster.control.security import Gatekeeper
from llmcluster.render.nccl import NcclRank
from llmcluster.render.wholeline import write_line
from llmcluster.setup import RunSetup, build_setup
from llmcluster.sim import RunPlan
from llmcluster.wire import HEARTBEAT_S, Kind, Message
from llmcluster.wire.messages import Book, Done, Exit, Failure, Join, RankOnly
from llmcluster.worker.bench import print_bench, rank_bench
from llmcluster.worker.display import DisplayThread
from llmcluster.worker.errors import record_error, record_exception
from llmcluster.worker.framework_log import FrameworkLog, writes_own_lines
from llmcluster.worker.nccl_log import NcclLog
from llmcluster.worker.training import RankDied, Training, carry_out_faults

RENDEZVOUS_TIMEOUT_S = 60.0
RUN_SHOWN_WAIT_S = 5.0
YIELD_TO_CONTROL_RANKS = 256  # above this many ranks, ranks run below the control plane:
RANK_NICE = 10  # at nice 10 (a tenth of the coordinator's weight; at 19, a 68th, a 2048-rank
# step took 1.2-2.2 s instead of 0.17: the release of each fused round crawled)


def shm_capacity(config: RunConfig) -> int:
    """The largest payload this run allreduces through shared memory (bench sizes or the
    gradient bucket)."""
    return config.bench.max_bytes if config.bench else config.grad_bucket_bytes


class RankExit(Exception):
    """The coordinator told this rank to leave (code) or the run is over."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class RankSpec:
    """Everything a rank process is told by its node agent."""

    config: RunConfig
    run_id: str
    rank: int
    local_rank: int
    node: int
    host: str
    attempt: int
    start_step: int
    sim_time: float  # the simulated clock when this attempt starts
    control: str  # coordinator's control endpoint
    publish: str  # coordinator's record hub (rank 0's display subscribes)
    inbox: list[str]  # addresses this rank's peer inbox binds (ipc://..., tcp://host:0)
    speed: float  # simulated seconds per wall second
    proof: str = ""  # shown in JOIN: this process is the one its agent spawned for ``rank``
    curve: Any = None  # the run's CurveKeys across hosts (a token), else None
    shm: Any = None  # the node's shared region (an inherited mmap) for large collectives
    board: Any = None  # the node's board (an inherited mmap) for the step's tiny reductions
    beacon: Any = None  # the node agent's Beacon: the coordinator is alive while it hears it
    plan_host: bool = False  # every node on one machine: NCCL names the plan's host, not ours


class Rank:
    """The rank's main thread: owns the control link and the peer mesh."""

    def __init__(self, spec: RankSpec) -> None:
        self.spec = spec
        # hundreds of ranks on a few cores: the coordinator and agents must still be heard
        # (heartbeats); rank 0 (the display, the fused star's root) keeps up
        if spec.config.ranks > YIELD_TO_CONTROL_RANKS and spec.rank != 0:
            os.nice(RANK_NICE)
        self.stop_requested = False
        self.ctx = zmq.Context()
        tcp_inbox = any(address.startswith("tcp://") for address in spec.inbox)
        self.gatekeeper = Gatekeeper(self.ctx, spec.curve) if spec.curve and tcp_inbox else None
        self.link = ControlLink(
            self.ctx,
            endpoint=spec.control,
            identity=f"r{spec.rank}-{secrets.token_hex(6)}".encode(),  # unguessable: no hijack
            run_id=spec.run_id,
            src=spec.rank,
            timeout_s=spec.config.silence_tolerance_s,
            curve=spec.curve,
            beacon=spec.beacon,
            beat_s=max(HEARTBEAT_S, spec.config.silence_tolerance_s / 4),  # 2048: 512/s in all
        )
        self.link.attempt = spec.attempt
        self.mesh = PeerMesh(
            self.ctx,
            rank=spec.rank,
            run_id=spec.run_id,
            bind=spec.inbox,
            node=spec.node,
            timeout_s=spec.config.collective_timeout_s,
            service=self.serve,
            curve=spec.curve,
            service_s=self.link.check_s,  # a large world's ranks wake less often while idle
        )
        self.mesh.reset(spec.attempt)
        self.display: DisplayThread | None = None
        self.nccl: NcclLog | None = None
        self.framework: FrameworkLog | None = None
        self.started = time.monotonic()

    # ---- control --------------------------------------------------------------------------
    def handle(self, messages: list[Message]) -> None:
        """STOP marks the next step boundary as the last; EXIT leaves at once."""
        for msg in messages:
            if msg.kind is Kind.STOP:
                self.stop_requested = True
            elif isinstance(msg.body, Exit):
                raise RankExit(msg.body.code)

    def serve(self) -> None:
        """Serve the control socket now (collectives call this while they wait)."""
        self.handle(self.link.receive_ready())
        self.link.tick()

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of wall time, serving control; a stop request cuts it short."""
        deadline = time.monotonic() + seconds
        while not self.stop_requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.handle(self.link.wait(remaining))

    def _await(self, kind: Kind, timeout_s: float) -> Message:
        msg = self.link.await_kind(kind, timeout_s, self.handle)
        if msg is not None:
            return msg
        raise CoordinatorLost(f"no {kind.value} from the coordinator in {timeout_s:.0f}s")

    # ---- life -----------------------------------------------------------------------------
    def run(self) -> int:
        """Run the rank to completion; returns the process exit code."""
        spec = self.spec
        try:
            if spec.rank == 0 and spec.config.bench is None:
                self.display = DisplayThread(self.ctx, spec.config, spec.publish, spec.run_id,
                                             spec.attempt, proof=spec.proof,
                                             curve=spec.curve)  # fmt: skip
                self.display.start()
            setup = build_setup(spec.config) if spec.config.bench is None else None
            comm = self._rendezvous(setup)
            if setup is None:
                rows = rank_bench(comm, spec.config.bench, spec.config.algorithm)
                if spec.rank == 0:
                    print_bench(
                        rows,
                        world_size=spec.config.ranks,
                        algorithm=spec.config.algorithm,
                        settings=spec.config.bench,
                    )
                self.link.send(Kind.DONE, Done(rank=spec.rank, step=0))
            else:  # the model is built once the process group is up, as a training script does
                training = Training(self)
                last = training.run(comm)
                if self.framework is not None:
                    self.framework.finish(last)
                self.link.send(Kind.DONE, Done(rank=spec.rank, step=last))
                self._finish_display()
            self._await(Kind.EXIT, 3600)
            return 0
        except RankExit as leave:
            return leave.code
        except RankDied as death:  # its traceback is on stderr already
            error_file = record_error(death.reason, death.callstack)
            self.report_failure(death.reason, death.exitcode, error_file)
            return death.exitcode
        except CollectiveTimeout as timeout:
            error_file = self._record_error(timeout)
            self.report_failure(f"watchdog: {timeout}", 1, error_file)
            return 1
        except CoordinatorLost as lost:
            write_line(f"[rank{spec.rank}]: llmcluster: {lost}; exiting")
            return 1
        except Exception as exc:  # the agent reports the exit, naming the error file
            self._record_error(exc)
            return 1
        finally:
            self._close()

    def _record_error(self, exc: BaseException) -> str:
        """The rank's own traceback on its stderr (``[rankN]: `` per line, as torch prints it)
        and its error.json (torch's ``@record``); returns the file's path or ""."""
        lines = traceback.format_exc().rstrip("\n").split("\n")
        write_line("\n".join(f"[rank{self.spec.rank}]: {line}" for line in lines))
        return record_exception(exc)

    def _rendezvous(self, setup: RunSetup | None) -> Communicator:
        """Join, get the address book, pass the first barrier (a fault injected at step 0
        strikes just before it), say READY and wait for every rank's; then, off the start's
        critical path, this rank's NCCL init lines and its framework's first lines."""
        spec = self.spec
        self.link.send(
            Kind.JOIN,
            Join(
                rank=spec.rank,
                local_rank=spec.local_rank,
                node=spec.node,
                pid=os.getpid(),
                endpoints=tuple(self.mesh.endpoints),
                host=spec.host,
                env={name: os.environ.get(name, "") for name in TORCHRUN_VARS},
                proof=spec.proof,
            ),
        )
        config = spec.config
        topology = Topology.uniform(config.ranks, config.nproc_per_node)
        book = self._book(send_targets(topology, spec.rank))
        self.mesh.set_peers(dict(zip(book.ranks, book.endpoints, strict=True)), topology.node_of)
        local = topology.node_members(spec.node)
        arena = None
        if spec.shm is not None:
            arena = ShmArena(spec.shm, len(local), shm_capacity(spec.config))
        board = NodeBoard(spec.board, len(local)) if spec.board is not None else None
        comm = Communicator(self.mesh, rank=spec.rank, topology=topology, shm=arena, board=board)
        booked = time.monotonic()
        if setup is not None:
            carry_out_faults(spec, setup.plan, setup.process_faults, 0)
        comm.barrier()
        up = time.monotonic()
        self.link.send(Kind.READY, RankOnly(rank=spec.rank))
        # init_process_group's store-based barrier: asleep until every rank is ready, so
        # that the coordinator hears a thousand READYs on two cores before any rank works
        self._await(Kind.GO, RENDEZVOUS_TIMEOUT_S * config.start_scale)
        if setup is not None:
            self._nccl_init(setup.plan, booked - self.started, up - self.started)
            if writes_own_lines(spec.config):
                lock = self.display.lock if self.display is not None else None
                self.framework = FrameworkLog(spec, setup.plan, lock)
                self._await_run_shown()
                self.framework.ready()
        return comm

    def _await_run_shown(self) -> None:
        """Rank 0 writes its framework lines after the launch lines its display shows (serving
        the control link meanwhile; at most RUN_SHOWN_WAIT_S)."""
        deadline = time.monotonic() + RUN_SHOWN_WAIT_S
        display = self.display
        while display is not None and not display.run_shown.wait(0.02):
            if time.monotonic() > deadline:
                return
            self.serve()

    def _nccl_init(self, plan: RunPlan, bootstrap_s: float, total_s: float) -> None:
        """The communicator is up: this rank's NCCL init lines, as NCCL_DEBUG asks."""
        spec = self.spec
        me = NcclRank(
            rank=spec.rank,
            local_rank=spec.local_rank,
            node=spec.node,
            host=plan.node_names[spec.node] if spec.plan_host else spec.host,
            pid=os.getpid(),
            world_size=spec.config.ranks,
            nproc_per_node=spec.config.nproc_per_node,
            nnodes=spec.config.nnodes,
            intra_node_link=plan.gpu.intra_node_link,
            nccl=plan.versions["nccl"],
            cuda=plan.versions["cuda"],
            comm_seed=f"{spec.run_id}/{spec.attempt}",
        )
        self.nccl = NcclLog(me, os.environ)
        self.nccl.init(bootstrap_s=bootstrap_s, total_s=total_s)

    def _book(self, needed: set[int]) -> Book:
        """This node's address book: ascending ranks of the world, one non-empty endpoint
        list each, among them every rank in ``needed`` (anything else is dropped and
        counted; the wait goes on)."""
        deadline = time.monotonic() + RENDEZVOUS_TIMEOUT_S * self.spec.config.start_scale
        world = self.spec.config.ranks
        while True:
            book = self._await(Kind.BOOK, deadline - time.monotonic()).body
            if (
                isinstance(book, Book)
                and len(book.endpoints) == len(book.ranks)
                and all(book.endpoints)
                and all(0 <= a < b < world for a, b in itertools.pairwise(book.ranks))
                and (not book.ranks or 0 <= book.ranks[0] < world)
                and needed <= set(book.ranks)
            ):
                return book
            self.link.dropped += 1

    def _finish_display(self) -> None:
        """Rank 0 stays until its display has shown the summary (or the run is over)."""
        display = self.display
        while display is not None and display.is_alive():
            display.join(0.1)
            self.serve()

    def report_failure(self, reason: str, exitcode: int, error_file: str = "") -> None:
        """Tell the coordinator the root cause before exiting."""
        failure = Failure(
            rank=self.spec.rank, reason=reason, exitcode=exitcode, error_file=error_file
        )
        with contextlib.suppress(zmq.ZMQError):
            self.link.send(Kind.FAILURE, failure)

    def _close(self) -> None:
        if self.nccl is not None:
            self.nccl.close()
        if self.display is not None:
            self.display.stop()
        self.mesh.close()
        self.link.close()
        if self.gatekeeper is not None:
            self.gatekeeper.stop()
        self.ctx.term()
