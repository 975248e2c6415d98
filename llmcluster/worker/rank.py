"""A rank: one process playing one GPU.

Life of a rank: join the coordinator, receive the address book, pass the first
barrier, then run the training loop in lock-step with every other rank. Each
step it computes its local loss from the simulation, sleeps the scaled compute
time, and reduces (loss x tokens, tokens, grad-norm^2 by sum; step time and the
stop flag by max) in one fused collective, so that every rank holds the
bit-identical global loss; with ``--grad-bucket`` it also allreduces a real
gradient buffer with the chosen algorithm. It reports its per-step stats to the
coordinator. Rank 0 also hosts the display thread that renders the records.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from llmcluster import sim
from llmcluster.comm import CollectiveTimeout, Communicator, PeerMesh
from llmcluster.comm.board import NodeBoard
from llmcluster.comm.collectives import Topology
from llmcluster.comm.shm import ShmArena
from llmcluster.config import RunConfig
from llmcluster.control.env import TORCHRUN_VARS
from llmcluster.sim.faults import Fault, build_setup
from llmcluster.wire import Kind, Message
from llmcluster.worker.bench import print_bench, rank_bench
from llmcluster.worker.display import DisplayThread
from llmcluster.worker.link import ControlLink, CoordinatorLost

RENDEZVOUS_TIMEOUT_S = 60.0


def shm_capacity(config: RunConfig) -> int:
    """The largest payload this run allreduces through shared memory (bench sizes or the
    gradient bucket)."""
    bench = config.extra.get("bench")
    return int(bench["max_bytes"]) if bench else config.grad_bucket_bytes


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
    control: str  # coordinator's control endpoint
    publish: str  # coordinator's record endpoint (rank 0 subscribes)
    inbox: list[str]  # addresses this rank's peer inbox binds (ipc://..., tcp://host:0)
    speed: float  # simulated seconds per wall second
    shm: Any = None  # the node's shared region (an inherited mmap) for large collectives
    board: Any = None  # the node's board (an inherited mmap) for the step's tiny reductions


class Rank:
    """The rank's main thread: owns the control link and the peer mesh."""

    def __init__(self, spec: RankSpec) -> None:
        self.spec = spec
        self.stop_requested = False
        self.ctx = zmq.Context()
        self.link = ControlLink(
            self.ctx,
            endpoint=spec.control,
            identity=f"r{spec.rank}-{secrets.token_hex(6)}".encode(),  # unguessable: no hijack
            run_id=spec.run_id,
            src=spec.rank,
            timeout_s=spec.config.silence_tolerance_s,
        )
        self.link.attempt = spec.attempt
        self.mesh = PeerMesh(
            self.ctx,
            rank=spec.rank,
            run_id=spec.run_id,
            bind=spec.inbox,
            node=spec.node,
            timeout_s=spec.config.collective_timeout_s,
            service=self._service,
        )
        self.mesh.reset(spec.attempt)
        self.display: DisplayThread | None = None
        self.faults: tuple[Fault, ...] = ()
        size = spec.config.grad_bucket_bytes // 4
        self.bucket = np.full(size, spec.rank % 7 + 1, dtype=np.float32) if size else None
        # --speed auto paces phases like a real run; an explicit --speed gets the physics alone
        self.pacing = spec.speed if spec.config.speed is None else 0.0

    # ---- control --------------------------------------------------------------------------
    def _handle(self, messages: list[Message]) -> None:
        for msg in messages:
            if msg.kind is Kind.STOP:
                self.stop_requested = True
            elif msg.kind is Kind.EXIT:
                raise RankExit(int(msg.body["code"]))

    def _service(self) -> None:
        self._handle(self.link.receive_ready())
        self.link.tick()

    def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of wall time, serving control; a stop request cuts it short."""
        deadline = time.monotonic() + seconds
        while not self.stop_requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._handle(self.link.wait(remaining))

    def _await(self, kind: Kind, timeout_s: float) -> Message:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for msg in self.link.wait(deadline - time.monotonic()):
                if msg.kind is kind:
                    return msg
                self._handle([msg])
        raise CoordinatorLost(f"no {kind.value} from the coordinator in {timeout_s:.0f}s")

    # ---- life -----------------------------------------------------------------------------
    def run(self) -> int:
        """Run the rank to completion; returns the process exit code."""
        spec = self.spec
        try:
            bench = spec.config.extra.get("bench")
            if spec.rank == 0 and not bench:
                self.display = DisplayThread(self.ctx, spec.config, spec.publish, spec.run_id)
                self.display.start()
                self.display.subscribed.wait(10)
            self.link.send(
                Kind.JOIN,
                rank=spec.rank,
                local_rank=spec.local_rank,
                node=spec.node,
                pid=os.getpid(),
                endpoints=self.mesh.endpoints,
                host=spec.host,
                env={name: os.environ.get(name, "") for name in TORCHRUN_VARS},
            )
            book = self._await(Kind.BOOK, RENDEZVOUS_TIMEOUT_S)
            nodes = [int(n) for n in book.body["nodes"]]
            self.mesh.set_peers([[str(a) for a in e] for e in book.body["endpoints"]], nodes)
            topology = Topology(tuple(nodes))
            local = topology.node_members(spec.node)
            arena = None
            if spec.shm is not None:
                arena = ShmArena(spec.shm, len(local), shm_capacity(spec.config))
            board = NodeBoard(spec.board, len(local)) if spec.board is not None else None
            comm = Communicator(
                self.mesh, rank=spec.rank, topology=topology, shm=arena, board=board
            )
            if self.bucket is not None:  # registered in the arena: allreduced without copy-in
                shared = comm.shared_buffer(self.bucket.size)
                shared[:] = self.bucket
                self.bucket = shared
            comm.barrier()
            self.link.send(Kind.READY, rank=spec.rank)
            if bench:
                rows = rank_bench(comm, bench, spec.config.algorithm)
                self.link.send(Kind.DONE, rank=spec.rank, step=0)
                if spec.rank == 0:
                    print_bench(
                        rows,
                        world_size=spec.config.ranks,
                        algorithm=spec.config.algorithm,
                        settings=bench,
                    )
                    self.link.send(Kind.RENDERED, rank=spec.rank)
            else:
                setup = build_setup(spec.config)
                self.faults = setup.process_faults
                last = self._train(setup.plan, comm)
                self.link.send(Kind.DONE, rank=spec.rank, step=last)
                if self.display is not None:
                    self._finish_display()
            self._await(Kind.EXIT, 3600)
            return 0
        except RankExit as leave:
            return leave.code
        except CollectiveTimeout as timeout:
            self._report_failure(f"watchdog: {timeout}", 1)
            return 1
        except CoordinatorLost as lost:
            print(f"[rank{spec.rank}]: llmcluster: {lost}; exiting", file=sys.stderr, flush=True)
            return 1
        finally:
            self._close()

    def _train(self, plan: sim.RunPlan, comm: Communicator) -> int:
        spec, config = self.spec, self.spec.config
        state = sim.init_rank_state(plan, spec.rank)
        if spec.start_step == 1:
            self._phase(comm, "init", 0, sim.init_time_s(plan, self.pacing), {})
        else:  # restarted: load the last checkpoint first
            resumed = spec.start_step - 1
            restore_s = sim.paced_s(
                sim.checkpoint_info(plan, resumed).save_s, "restore", self.pacing
            )
            self._phase(comm, "restore", resumed, restore_s, {})
        cost = sim.comm_cost(plan, config.algorithm)
        step = spec.start_step - 1
        for step in range(spec.start_step, plan.total_steps + 1):
            self._carry_out_faults(step)
            work = sim.rank_step(plan, state, step, attempt=spec.attempt)
            self._sleep(work.compute_s / spec.speed)
            arrive = time.time()
            # one latency-optimised round for the step's small reductions (as NCCL's tuner
            # picks for tiny messages); --algorithm is the modelled gradient allreduce
            totals, agreed = comm.allreduce_fused(
                [
                    (np.array([work.local_loss * work.local_tokens, work.local_tokens,
                               work.grad_sq]), "sum"),
                    (np.array([work.compute_s, 1.0 if self.stop_requested else 0.0]), "max"),
                ]
            )  # fmt: skip
            if self.bucket is not None:  # a real gradient bucket over the chosen algorithm
                comm.allreduce(self.bucket, "sum", algorithm=config.algorithm)
            done = time.time()
            # the exposed part of the modelled allreduce completes the simulated step
            self._sleep(cost.exposed_s / spec.speed - (done - arrive))
            loss = float(totals[0] / totals[1])
            step_time_s = float(agreed[0]) + cost.exposed_s
            state, sample = sim.rank_telemetry(
                plan, state, step, compute_s=work.compute_s, step_time_s=step_time_s
            )
            self.link.send(
                Kind.STATS,
                rank=spec.rank,
                step=step,
                stats={
                    "loss": loss,
                    "local_loss": work.local_loss,
                    "tokens": int(totals[1]),
                    "grad_norm": math.sqrt(float(totals[2])),
                    "compute_s": work.compute_s,
                    "step_time_s": step_time_s,
                    "comm_s": cost.total_s,
                    "exposed_comm_s": cost.exposed_s,
                    "arrive": arrive,
                    "wait_ms": (done - arrive) * 1000.0,
                    "util": sample.util_pct,
                    "temp_c": sample.temp_c,
                    "power_w": sample.power_w,
                    "mem_used_gb": sample.mem_used_gb,
                    "mem_total_gb": sample.mem_total_gb,
                    "sm_clock_mhz": sample.sm_clock_mhz,
                    "throttled": sample.throttled,
                    "seq": comm.seq,
                    "dropped": self.mesh.dropped + self.link.dropped,
                },
            )
            if agreed[1] > 0:
                break
            state = self._between_steps(plan, comm, state, step)
        else:
            if step == plan.total_steps:
                info = sim.export_info(plan, self.pacing)
                self._phase(comm, "export", step, info.export_s, {})
        return step

    def _carry_out_faults(self, step: int) -> None:
        """Injected process faults, for real: the i-th fires in restart attempt i."""
        spec = self.spec
        if spec.attempt >= len(self.faults):
            return
        fault = self.faults[spec.attempt]
        if fault.rank != spec.rank or step < fault.step:
            return
        if fault.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        while True:  # hang: alive, silent, deaf to the coordinator (like a stuck CUDA kernel)
            time.sleep(3600)

    def _between_steps(
        self, plan: sim.RunPlan, comm: Communicator, state: sim.RankState, step: int
    ) -> sim.RankState:
        """Validation and checkpointing after ``step``; the GPUs cool while they run."""
        if sim.is_eval_step(plan, step):
            eval_s = sim.eval_time_s(plan, self.pacing)
            local = sim.local_val_loss(plan, step, self.spec.rank)
            val = self._phase(comm, "eval", step, eval_s, {}, value=local)
            if self.spec.rank == 0:
                self._phase_end("eval", step, {"val_loss": val, "eval_s": eval_s})
            state, _ = sim.rank_telemetry(
                plan, state, step, compute_s=eval_s, step_time_s=eval_s, phase="eval"
            )
        if sim.is_checkpoint_step(plan, step):
            save_s = sim.checkpoint_info(plan, step, self.pacing).save_s
            self._phase(comm, "checkpoint", step, save_s, {})
            state, _ = sim.rank_telemetry(
                plan, state, step, compute_s=0.0, step_time_s=save_s, phase="checkpoint"
            )
        return state

    def _phase(
        self,
        comm: Communicator,
        name: str,
        step: int,
        sim_s: float,
        data: dict[str, float],
        *,
        value: float | None = None,
    ) -> float:
        """Run a phase on every rank: sleep its scaled duration, then meet in an allreduce.

        Returns the mean of ``value`` over ranks (the validation loss), or 0.
        """
        spec = self.spec
        if spec.rank == 0:
            self.link.send(
                Kind.PHASE, rank=0, step=step, name=name, state="begin",
                data={"expected_s": sim_s, **data},
            )  # fmt: skip
        self._sleep(sim_s / spec.speed)
        mean = comm.allreduce(
            np.array([0.0 if value is None else value]), "mean", algorithm=spec.config.algorithm
        )
        if spec.rank == 0 and name != "eval":
            self._phase_end(name, step, {"elapsed_s": sim_s})
        return float(mean[0])

    def _phase_end(self, name: str, step: int, data: dict[str, float]) -> None:
        self.link.send(Kind.PHASE, rank=0, step=step, name=name, state="end", data=data)

    def _finish_display(self) -> None:
        display = self.display
        if display is None:
            return
        while display.is_alive():
            display.join(0.1)
            self._handle(self.link.receive_ready())
            self.link.tick()
        self.link.send(Kind.RENDERED, rank=self.spec.rank)

    def _report_failure(self, reason: str, exitcode: int) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.link.send(Kind.FAILURE, rank=self.spec.rank, reason=reason, exitcode=exitcode)

    def _close(self) -> None:
        if self.display is not None:
            self.display.stop()
        self.mesh.close()
        self.link.close()
        self.ctx.term()
