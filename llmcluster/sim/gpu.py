"""Per-GPU telemetry: utilisation, power, temperature, SM clock and memory.

Each GPU has a persistent personality drawn from the seed: silicon speed
(MAMF varies 5 % and more within a node), thermal resistance and inlet
temperature (some run hotter), power draw and memory overhead. Temperature is
first order: it relaxes toward inlet + R x power with a heatsink time constant;
power is idle + activity x (TDP - idle), lower while waiting in communication,
evaluation or checkpointing. The boost clock falls as temperature rises and
drops sharply past the slowdown threshold (physics.md section 3), and a slower
clock makes that rank compute slower: a real straggler the allreduce waits for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from llmcluster.sim.catalog import GpuSpec
from llmcluster.sim.plan import RunPlan
from llmcluster.sim.rng import Stream, generator

HEATSINK_TAU_S = 45.0
LOADED_TEMP_C = (60.0, 74.0)  # "70-75 C excellent, < 80 good" under load (ml-engineering)
CLOCK_DROP_MHZ_PER_C = 2.5  # boost falls continuously above ~55 C
THROTTLE_CLOCK_FACTOR = 0.72
COMM_ACTIVITY = 0.35  # NCCL kernels keep the SMs busy but draw far less power
PHASE_ACTIVITY = {"train": 1.0, "eval": 0.75, "checkpoint": 0.08, "export": 0.05, "idle": 0.0}


@dataclass(frozen=True)
class RankState:
    """One GPU's persistent personality and its current thermal state."""

    rank: int
    speed_factor: float
    thermal_r: float  # C per W
    inlet_c: float
    power_factor: float
    mem_offset: float
    temp_c: float
    clock_mhz: float
    throttled: bool

    def clock_factor(self, gpu: GpuSpec) -> float:
        """Compute-time stretch from the current clock (1.0 at full boost)."""
        return gpu.max_clock_mhz / max(1.0, self.clock_mhz)


def init_rank_state(plan: RunPlan, rank: int) -> RankState:
    """The GPU's personality, idling at the start of the run."""
    gpu = plan.gpu
    node = rank // plan.nproc_per_node
    node_rng = generator(plan.seed, Stream.PERSONALITY, node, 1)
    rng = generator(plan.seed, Stream.PERSONALITY, rank)
    inlet = float(node_rng.uniform(24.0, 30.0))
    loaded = float(rng.uniform(*LOADED_TEMP_C))
    thermal_r = (loaded - inlet) / gpu.tdp_w
    mem_offset = float(rng.uniform(0.0, plan.mem_spread))
    state = RankState(
        rank=rank,
        speed_factor=1.0 + float(rng.uniform(0.0, 0.05)),
        thermal_r=thermal_r,
        inlet_c=inlet,
        power_factor=float(rng.uniform(0.93, 1.0)),
        mem_offset=mem_offset,
        temp_c=inlet + thermal_r * gpu.idle_w,
        clock_mhz=float(gpu.max_clock_mhz),
        throttled=False,
    )
    return state


@dataclass(frozen=True)
class GpuSample:
    """What nvidia-smi would show for this GPU after a step."""

    util_pct: float
    temp_c: float
    power_w: float
    mem_used_gb: float
    mem_total_gb: float
    sm_clock_mhz: int
    throttled: bool


def thermal_resistance(plan: RunPlan, state: RankState, step: int) -> float:
    """The rank's thermal resistance at ``step`` (raised while its cooling is degraded)."""
    for event in plan.events:
        if event.kind == "thermal" and event.rank == state.rank and event.active(step):
            # degraded enough to cross the slowdown threshold at ~90 % of TDP
            crossing = (plan.gpu.slowdown_c + 4.0 - state.inlet_c) / (0.9 * plan.gpu.tdp_w)
            return max(state.thermal_r * event.magnitude, crossing)
    return state.thermal_r


def clock_at(gpu: GpuSpec, temp_c: float) -> tuple[float, bool]:
    """SM clock at ``temp_c`` and whether the GPU is thermally throttling."""
    clock = gpu.max_clock_mhz - CLOCK_DROP_MHZ_PER_C * max(0.0, temp_c - 55.0)
    clock = max(float(gpu.base_clock_mhz), clock)
    if temp_c >= gpu.slowdown_c:
        return clock * THROTTLE_CLOCK_FACTOR, True
    return clock, False


def rank_telemetry(
    plan: RunPlan,
    state: RankState,
    step: int,
    *,
    compute_s: float,
    step_time_s: float,
    phase: str = "train",
) -> tuple[RankState, GpuSample]:
    """Advance the GPU over ``step_time_s`` simulated seconds and sample it."""
    gpu = plan.gpu
    busy = min(1.0, compute_s / step_time_s) if step_time_s > 0 else 0.0
    activity = PHASE_ACTIVITY.get(phase, 1.0)
    load = activity * (busy + COMM_ACTIVITY * (1.0 - busy))
    rng = generator(plan.seed, Stream.TELEMETRY, step, state.rank, len(phase))
    power = gpu.idle_w + load * (gpu.tdp_w - gpu.idle_w) * state.power_factor
    power = min(gpu.tdp_w, max(gpu.idle_w, power * (1.0 + 0.01 * float(rng.standard_normal()))))
    steady = state.inlet_c + thermal_resistance(plan, state, step) * power
    decay = math.exp(-step_time_s / HEATSINK_TAU_S)
    temp = steady + (state.temp_c - steady) * decay
    clock, throttled = clock_at(gpu, temp)
    util = 100.0 * activity * (busy + 0.9 * (1.0 - busy)) if activity else 0.0
    util = min(100.0, max(0.0, util - abs(float(rng.normal(0.0, 0.8)))))
    capacity = gpu.memory_mib / 1024.0
    used = plan.memory.total_gb * (1.0 + state.mem_offset) + 0.05 * float(rng.random())
    new_state = replace(state, temp_c=temp, clock_mhz=clock, throttled=throttled)
    return new_state, GpuSample(
        util_pct=round(util, 1),
        temp_c=round(temp, 1),
        power_w=round(power, 1),
        mem_used_gb=round(min(used, capacity * 0.99), 2),
        mem_total_gb=round(capacity, 2),
        sm_clock_mhz=int(round(clock / 15.0) * 15),
        throttled=throttled,
    )
