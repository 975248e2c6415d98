"""The training workload of one rank: steps, phases between them, injected process faults.

Each step the rank computes its local loss from the simulation, sleeps the scaled compute
time, and reduces (loss x tokens, tokens, grad-norm^2 by sum; step time and the stop flag
by max) in one fused collective, so that every rank holds the bit-identical global loss;
with ``--grad-bucket`` it also allreduces a real gradient buffer with the chosen
algorithm. It reports its per-step stats, and samples its GPU during the phases between
steps (validation, checkpoints, export), where the GPUs idle and cool.
"""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Any, Protocol

import numpy as np

from llmcluster import sim
from llmcluster.comm import Communicator
from llmcluster.control.link import ControlLink
from llmcluster.render.wholeline import write_line
from llmcluster.setup import build_setup
from llmcluster.sim.faults import Fault
from llmcluster.wire import Kind
from llmcluster.wire.messages import Phase, PhaseState, RankStats, Stats
from llmcluster.wire.records import PhaseName
from llmcluster.worker.framework_log import FrameworkLog
from llmcluster.worker.nccl_log import NcclLog


class RankDied(Exception):
    """This rank's process dies of an error a real one would (torch's OOM): report and exit."""

    def __init__(self, reason: str, callstack: str, exitcode: int) -> None:
        super().__init__(reason)
        self.reason, self.callstack, self.exitcode = reason, callstack, exitcode


class RankHost(Protocol):
    """What the workload needs of its rank process."""

    spec: Any
    link: ControlLink
    mesh: Any
    stop_requested: bool
    nccl: NcclLog | None  # the rank's NCCL debug output (a COLL line per collective)
    framework: FrameworkLog | None  # the rank's own framework lines (per-rank log files)

    def sleep(self, seconds: float) -> None: ...


def carry_out_faults(spec: Any, plan: sim.RunPlan, faults: tuple[Fault, ...], step: int) -> None:
    """Injected process faults, for real: the i-th fires in restart attempt i, on its rank,
    from its step on (a kill, a real OOM's traceback and exit, or a hang)."""
    attempt = spec.attempt
    if attempt >= len(faults):
        return
    fault = faults[attempt]
    if fault.rank != spec.rank or step < fault.step:
        return
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    oom = sim.fatal_event(plan, spec.rank, fault.step) if fault.kind == "oom" else None
    if oom is not None:  # torch's traceback, then the uncaught exception's exit code
        callstack = sim.oom_traceback(plan, oom)
        write_line("\n".join(f"[rank{spec.rank}]: {line}" for line in callstack))
        raise RankDied(sim.oom_message(plan, oom), "\n".join(callstack), 1)
    while True:  # hang: alive, silent, deaf to the coordinator (like a stuck CUDA kernel)
        time.sleep(3600)


class Training:
    """One rank's training loop for one attempt."""

    def __init__(self, host: RankHost) -> None:
        self.host, self.spec = host, host.spec
        setup = build_setup(self.spec.config)
        self.plan, self.faults = setup.plan, setup.process_faults
        self.state = sim.init_rank_state(self.plan, self.spec.rank)
        size = self.spec.config.grad_bucket_bytes // 4
        self.bucket = np.full(size, self.spec.rank % 7 + 1, dtype=np.float32) if size else None
        self.last: RankStats | None = None

    def run(self, comm: Communicator) -> int:
        """Train from the attempt's start step to the end (or a stop); returns the last step."""
        spec, plan = self.spec, self.plan
        self.comm = comm
        if self.bucket is not None:  # registered in the arena: allreduced without copy-in
            shared = comm.shared_buffer(self.bucket.size)
            shared[:] = self.bucket
            self.bucket = shared
        if spec.start_step == 1:
            self._phase(PhaseName.INIT, 0)
        else:  # restarted: load the last checkpoint first
            self._phase(PhaseName.RESTORE, spec.start_step - 1)
        cost = sim.comm_cost(plan, spec.config.algorithm)
        step = spec.start_step - 1
        for step in range(spec.start_step, plan.total_steps + 1):
            carry_out_faults(spec, plan, self.faults, step)
            stop = self._step(step, cost)
            if stop:
                break
            self._between_steps(step)
        else:
            if step == plan.total_steps:
                self._phase(PhaseName.EXPORT, step)
        return step

    def _step(self, step: int, cost: sim.CommCost) -> bool:
        spec, host, plan = self.spec, self.host, self.plan
        work = sim.rank_step(plan, self.state, step, attempt=spec.attempt)
        host.sleep(work.compute_s / spec.speed)
        arrive = time.time()
        # one latency-optimised round for the step's small reductions (as NCCL's tuner picks
        # for tiny messages); --algorithm is the modelled gradient allreduce
        totals, agreed = self.comm.allreduce_fused(
            [
                (
                    np.array(
                        [work.local_loss * work.local_tokens, work.local_tokens, work.grad_sq]
                    ),
                    "sum",
                ),
                (np.array([work.compute_s, 1.0 if host.stop_requested else 0.0]), "max"),
            ]
        )
        self._nccl(3, "float64", "sum", "step")
        self._nccl(2, "float64", "max", "step_max")
        if self.bucket is not None:  # a real gradient bucket over the chosen algorithm
            self.comm.allreduce(self.bucket, "sum", algorithm=spec.config.algorithm)
            self._nccl(self.bucket.size, "float32", "sum", "bucket")
        done = time.time()
        # the exposed part of the modelled allreduce completes the simulated step
        host.sleep(cost.exposed_s / spec.speed - (done - arrive))
        step_time_s = float(agreed[0]) + cost.exposed_s
        self.state, sample = sim.rank_telemetry(
            plan, self.state, step, compute_s=work.compute_s, step_time_s=step_time_s
        )
        self.last = RankStats(
            loss=float(totals[0] / totals[1]),
            local_loss=work.local_loss,
            tokens=int(totals[1]),
            grad_norm=math.sqrt(float(totals[2])),
            compute_s=work.compute_s,
            step_time_s=step_time_s,
            comm_s=cost.total_s,
            exposed_comm_s=cost.exposed_s,
            arrive=arrive,
            wait_ms=(done - arrive) * 1000.0,
            util=sample.util_pct,
            temp_c=sample.temp_c,
            power_w=sample.power_w,
            mem_used_gb=sample.mem_used_gb,
            mem_total_gb=sample.mem_total_gb,
            sm_clock_mhz=sample.sm_clock_mhz,
            throttled=sample.throttled,
            seq=self.comm.seq,
            dropped=host.mesh.dropped + host.link.dropped,
        )
        host.link.send(Kind.STATS, Stats(rank=spec.rank, step=step, stats=self.last))
        if host.framework is not None:
            host.framework.step(step, self.last)
        return bool(agreed[1] > 0)

    def _nccl(self, count: int, datatype: str, op: str, buffer: str) -> None:
        """One allreduce done: NCCL's COLL line (when NCCL_DEBUG_SUBSYS asks for it)."""
        if self.host.nccl is not None:
            self.host.nccl.collective(
                name="AllReduce", count=count, datatype=datatype, op=op, buffer=buffer
            )

    def _between_steps(self, step: int) -> None:
        """Validation and checkpointing after ``step``."""
        if sim.is_eval_step(self.plan, step):
            local = sim.local_val_loss(self.plan, step, self.spec.rank)
            self._phase(PhaseName.EVAL, step, value=local)
        if sim.is_checkpoint_step(self.plan, step):
            self._phase(PhaseName.CHECKPOINT, step)

    def _phase(self, name: PhaseName, step: int, *, value: float | None = None) -> None:
        """Run a phase on every rank: its scaled duration in slices, a GPU sample after each,
        then meet in an allreduce (the mean of ``value``: the validation loss)."""
        spec, host, link = self.spec, self.host, self.host.link
        sim_s = sim.phase_seconds(self.plan, name.value, step)
        if host.framework is not None:
            host.framework.phase_begin(name, step)
        if spec.rank == 0:
            link.send(Kind.PHASE, Phase(rank=0, step=step, name=name, state=PhaseState.BEGIN))
        slices = sim.phase_samples(self.plan, name.value, step)
        wall = sim.wall_seconds(name.value, sim_s, spec.speed, auto=spec.config.speed is None)
        for index in range(slices):
            host.sleep(wall / slices)
            self._sample(name, step, index, sim_s / slices, (index + 1) * sim_s / slices)
        # one number: NCCL's tuner takes the latency path for it, not the gradient algorithm
        (mean,) = self.comm.allreduce_fused([(np.array([0.0 if value is None else value]), "mean")])
        self._nccl(1, "float64", "mean", "phase")
        val_loss = float(mean[0]) if value is not None else None
        if host.framework is not None:
            host.framework.phase_end(name, step, val_loss)
        if spec.rank == 0:
            link.send(
                Kind.PHASE,
                Phase(rank=0, step=step, name=name, state=PhaseState.END, val_loss=val_loss),
            )

    def _sample(
        self, name: PhaseName, step: int, index: int, span_s: float, elapsed_s: float
    ) -> None:
        """This GPU during ``span_s`` simulated seconds of a phase (idle, cooling)."""
        busy = span_s if name is PhaseName.EVAL else 0.0  # eval runs forward passes
        activity = (
            name.value
            if name in (PhaseName.EVAL, PhaseName.CHECKPOINT, PhaseName.EXPORT)
            else "idle"
        )
        self.state, gpu = sim.rank_telemetry(
            self.plan, self.state, step, compute_s=busy, step_time_s=span_s, phase=activity
        )
        last = self.last
        stats = RankStats(
            loss=last.loss if last else math.nan,
            local_loss=last.local_loss if last else math.nan,
            tokens=0,
            grad_norm=last.grad_norm if last else math.nan,
            compute_s=busy,
            step_time_s=span_s,
            comm_s=0.0,
            exposed_comm_s=0.0,
            arrive=time.time(),
            wait_ms=0.0,
            util=gpu.util_pct,
            temp_c=gpu.temp_c,
            power_w=gpu.power_w,
            mem_used_gb=gpu.mem_used_gb,
            mem_total_gb=gpu.mem_total_gb,
            sm_clock_mhz=gpu.sm_clock_mhz,
            throttled=gpu.throttled,
            seq=self.comm.seq,
            dropped=self.host.mesh.dropped + self.host.link.dropped,
        )
        self.host.link.send(
            Kind.STATS,
            Stats(
                rank=self.spec.rank,
                step=step,
                stats=stats,
                phase=name,
                sample=index,
                phase_elapsed_s=elapsed_s,
            ),
        )
