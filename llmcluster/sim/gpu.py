"""Per-GPU telemetry: utilisation, power, temperature, SM clock and memory.

Each GPU has a persistent personality drawn from the seed: silicon speed
(MAMF varies 5 % and more within a node), thermal resistance and inlet
temperature (some run hotter), power draw and memory overhead.

Power is idle + activity x dynamic power, and dynamic power scales as f·V²
with the voltage following the clock along the DVFS curve (V ~ 0.35 + 0.65
f/f_max), so about as f^2.2: a clock 30 % down draws ~55 % less. The boost
clock falls slowly as the die warms (physics.md section 3). Temperature is
first order: it relaxes toward inlet + R x power with the heatsink's time
constant (tens of seconds), so a GPU heats and cools gradually. At the slowdown
temperature the driver lowers the clock until the power the cooling can carry
away holds the die there: with degraded cooling the clock steps down, power
falls and the temperature hovers at slowdown, never rising to shutdown. A
slower clock makes that rank compute slower: a real straggler the allreduce
waits for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from llmcluster.sim.catalog import GpuSpec
from llmcluster.sim.rng import Stream, generator
from llmcluster.sim.runplan import RunPlan

HEATSINK_TAU_S = 45.0
LOADED_TEMP_C = (60.0, 74.0)  # "70-75 C excellent, < 80 good" under load (ml-engineering)
CLOCK_DROP_MHZ_PER_C = 2.5  # boost falls continuously above ~55 C
MIN_CLOCK_SHARE = 0.45  # the deepest thermal slowdown, as a share of the maximum clock
VOLTAGE_FLOOR = 0.35  # DVFS: relative voltage at zero clock (1.0 at the maximum clock)
HOLD_BELOW_SLOWDOWN_C = 0.5  # the driver holds the die this far under its slowdown threshold
SENSOR_NOISE_C = 0.3
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
    return RankState(
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
    """The rank's thermal resistance at ``step`` (raised while its cooling is degraded:
    full power would then drive it ``magnitude`` C past its slowdown temperature)."""
    for event in plan.events:
        if event.kind == "thermal" and event.rank == state.rank and event.active(step):
            hot = plan.gpu.slowdown_c + event.magnitude - state.inlet_c
            degraded = max(state.thermal_r, hot / (plan.gpu.tdp_w * state.power_factor))
            # a failing fan or pump degrades over a few steps, not at once
            ramp = min(1.0, (step - event.step + 1) / max(1.0, min(8.0, event.duration / 4)))
            return state.thermal_r + (degraded - state.thermal_r) * ramp
    return state.thermal_r


def boost_clock(gpu: GpuSpec, temp_c: float) -> float:
    """The SM clock the GPU boosts to at ``temp_c`` without a thermal limit."""
    clock = gpu.max_clock_mhz - CLOCK_DROP_MHZ_PER_C * max(0.0, temp_c - 55.0)
    return max(float(gpu.base_clock_mhz), clock)


def dynamic_share(gpu: GpuSpec, clock_mhz: float) -> float:
    """Dynamic power at ``clock_mhz`` relative to the maximum clock (f·V², V on the DVFS line)."""
    f = clock_mhz / gpu.max_clock_mhz
    volts = VOLTAGE_FLOOR + (1.0 - VOLTAGE_FLOOR) * f
    return f * volts * volts


def power_w(gpu: GpuSpec, state: RankState, load: float, clock_mhz: float) -> float:
    """Board power at ``load`` (0-1 of full activity) and ``clock_mhz``."""
    dynamic = load * (gpu.tdp_w - gpu.idle_w) * state.power_factor
    return gpu.idle_w + dynamic * dynamic_share(gpu, clock_mhz)


def _holding_clock(gpu: GpuSpec, state: RankState, load: float, limit_w: float) -> float:
    """The clock whose power is ``limit_w`` at ``load`` (bisection; power rises with clock)."""
    low, high = MIN_CLOCK_SHARE * gpu.max_clock_mhz, float(gpu.max_clock_mhz)
    if power_w(gpu, state, load, low) >= limit_w:
        return low
    for _ in range(30):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if power_w(gpu, state, load, middle) < limit_w else (low, middle)
    return low


def advance(
    gpu: GpuSpec, state: RankState, resistance: float, load: float, seconds: float
) -> tuple[float, float, float, bool]:
    """Temperature, clock, power and the thermal-limit flag after ``seconds`` at ``load``."""
    hold = gpu.slowdown_c - HOLD_BELOW_SLOWDOWN_C
    temp = state.temp_c
    clock = boost_clock(gpu, temp)
    power = power_w(gpu, state, load, clock)
    steady = state.inlet_c + resistance * power
    if steady <= hold or temp < hold:
        reach = math.inf  # seconds until the die reaches the hold temperature at boost
        if steady > hold:
            reach = HEATSINK_TAU_S * math.log((steady - temp) / (steady - hold))
        if reach >= seconds:
            temp = steady + (temp - steady) * math.exp(-seconds / HEATSINK_TAU_S)
            return temp, boost_clock(gpu, temp), power, False
        seconds -= reach
        temp = hold
    # at the limit: the clock that the cooling can carry away holds the die at ``hold``
    carried_w = (hold - state.inlet_c) / resistance
    clock = min(boost_clock(gpu, hold), _holding_clock(gpu, state, load, carried_w))
    power = power_w(gpu, state, load, clock)
    steady = state.inlet_c + resistance * power
    temp = steady + (temp - steady) * math.exp(-seconds / HEATSINK_TAU_S)
    return temp, clock, power, clock < boost_clock(gpu, temp) - 1.0


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
    resistance = thermal_resistance(plan, state, step)
    temp, clock, power, throttled = advance(gpu, state, resistance, load, step_time_s)
    if throttled:  # the driver dithers between neighbouring 15 MHz clock bins
        clock += 15.0 * float(rng.integers(-2, 3))
    power = min(gpu.tdp_w, power * (1.0 + 0.01 * float(rng.standard_normal())))
    shown = temp + SENSOR_NOISE_C * float(rng.standard_normal())
    util = 100.0 * activity * (busy + 0.9 * (1.0 - busy)) if activity else 0.0
    util = min(100.0, max(0.0, util - abs(float(rng.normal(0.0, 0.8)))))
    capacity = gpu.memory_mib / 1024.0
    used = plan.memory.total_gb * (1.0 + state.mem_offset) + 0.05 * float(rng.random())
    new_state = replace(state, temp_c=temp, clock_mhz=clock, throttled=throttled)
    return new_state, GpuSample(
        util_pct=round(util, 1),
        temp_c=round(min(shown, gpu.slowdown_c), 1),
        power_w=round(max(gpu.idle_w, power), 1),
        mem_used_gb=round(min(used, capacity * 0.99), 2),
        mem_total_gb=round(capacity, 2),
        sm_clock_mhz=int(round(clock / 15.0) * 15),
        throttled=throttled,
    )
