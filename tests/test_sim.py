"""Property tests of the simulation: every displayed relation holds, over many seeds and picks."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcluster import sim
from llmcluster.sim import data, hardware, training
from llmcluster.sim.plan import Event

CATALOG = sim.load_catalog()
SEEDS = st.integers(min_value=0, max_value=2**32)
WORLDS = st.sampled_from([1, 2, 8, 16, 64, 128])
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def plan_for(seed: int, world: int, steps: int = 120, **names: str) -> sim.RunPlan:
    return sim.make_plan(CATALOG, seed=seed, world_size=world, nproc_per_node=8, steps=steps,
                         **names)  # fmt: skip


@dataclasses.dataclass
class SimulatedStep:
    loss: float
    local_losses: list[float]
    step_time_s: float
    metrics: sim.StepMetrics
    samples: list[sim.GpuSample]


def run_steps(plan: sim.RunPlan, steps: int, algorithm: str = "ring") -> list[SimulatedStep]:
    """The rank loop's arithmetic for every rank, in one process (no sockets)."""
    states = [sim.init_rank_state(plan, r) for r in range(plan.world_size)]
    cost = sim.comm_cost(plan, algorithm)
    out = []
    for step in range(1, steps + 1):
        works = [sim.rank_step(plan, s, step) for s in states]
        loss_sum = sum(w.local_loss * w.local_tokens for w in works)
        tokens = sum(w.local_tokens for w in works)
        loss = loss_sum / tokens
        step_time = max(w.compute_s for w in works) + cost.exposed_s
        samples = []
        for i, (state, work) in enumerate(zip(states, works, strict=True)):
            states[i], sample = sim.rank_telemetry(
                plan, state, step, compute_s=work.compute_s, step_time_s=step_time
            )
            samples.append(sample)
        metrics = sim.step_metrics(plan, step, loss=loss, step_time_s=step_time,
                                   comm_s=cost.total_s)  # fmt: skip
        out.append(SimulatedStep(loss, [w.local_loss for w in works], step_time, metrics, samples))
    return out


# ---- catalogs ---------------------------------------------------------------------------
def test_catalog_sizes_and_required_entries() -> None:
    real = [m for m in CATALOG.models if not m.humorous]
    joke = [m for m in CATALOG.models if m.humorous]
    assert len(real) >= 25 and len(joke) >= 15
    assert 50 <= len(CATALOG.datasets) <= 200
    for name in ("V100", "A100-40GB", "A100-80GB", "H100-SXM", "H100-PCIe", "H200", "B200",
                 "MI300X", "L40S"):  # fmt: skip
        assert CATALOG.gpu(name).memory_gb > 0  # by name or alias
    for name in ("Llama-3-8B", "Llama-3-70B", "Llama-3.1-405B"):
        assert CATALOG.model(name).name == name


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.name)
def test_model_architecture_is_self_consistent(model: sim.catalog.ModelSpec) -> None:
    h, kv = model.hidden, model.hidden * model.kv_heads // model.heads
    attention = 2 * h * h + 2 * h * kv
    matrices = 3 if model.activation in ("swiglu", "geglu") else 2
    experts = max(1, model.moe_experts)
    ffn = matrices * h * model.ffn * experts
    embeddings = model.vocab * h * (1 if model.tied_embeddings else 2)
    counted = model.layers * (attention + ffn) + embeddings
    tolerance = 0.05 if model.humorous else 0.15
    assert model.hidden % model.heads == 0 and model.heads % model.kv_heads == 0
    assert abs(counted - model.params) / model.params < tolerance
    assert model.active_params <= model.params


def test_unknown_names_are_plan_errors_with_a_hint() -> None:
    with pytest.raises(sim.PlanError, match="unknown model"):
        plan_for(0, 8, model="Llama-9-1T-nope")
    with pytest.raises(sim.PlanError, match="unknown GPU"):
        plan_for(0, 8, gpu="Voodoo2")


def test_a_model_that_cannot_fit_is_refused_with_a_clear_message() -> None:
    with pytest.raises(sim.PlanError, match=r"does not fit.*--ranks"):
        plan_for(0, 8, model="Llama-3.1-405B", gpu="H100-SXM")


@pytest.mark.parametrize("world", [256, 512])
def test_a_405b_model_is_sharded_until_it_fits(world: int) -> None:
    plan = plan_for(1, world, model="Llama-3.1-405B", gpu="H100-SXM")
    assert plan.layout.tp * plan.layout.pp > 1 or plan.layout.zero_stage == 3
    assert plan.memory.total_gb * (1 + plan.mem_spread) <= hardware.capacity_gb(plan.gpu)


# ---- determinism ------------------------------------------------------------------------
@PROPERTY
@given(seed=SEEDS, world=WORLDS)
def test_same_seed_same_plan_and_rebuilding_from_names_is_identical(seed: int, world: int) -> None:
    plan = plan_for(seed, world)
    assert plan == plan_for(seed, world)
    rebuilt = plan_for(seed, world, model=plan.model.name, gpu=plan.gpu.name,
                       dataset=plan.dataset.name)  # fmt: skip
    assert rebuilt == plan


def test_different_seeds_give_different_runs() -> None:
    plans = [plan_for(seed, 16) for seed in range(8)]
    assert len({(p.model.name, p.gpu.name, p.dataset.name) for p in plans}) > 2
    first = [run_steps(p, 3)[-1].loss for p in plans[:2]]
    assert first[0] != first[1]


# ---- consistency of every displayed number ---------------------------------------------
@PROPERTY
@given(seed=SEEDS, world=st.sampled_from([1, 8, 16, 64]))
def test_displayed_numbers_agree(seed: int, world: int) -> None:
    plan = plan_for(seed, world, steps=60)
    quiet = dataclasses.replace(plan, events=())
    for step in run_steps(quiet, 12):
        m = step.metrics
        assert m.ppl == pytest.approx(math.exp(step.loss), rel=1e-12)
        assert m.tokens_per_s * step.step_time_s == pytest.approx(plan.tokens_per_step, rel=1e-9)
        assert m.samples_per_s * step.step_time_s == pytest.approx(plan.global_batch, rel=1e-9)
        assert m.mfu == pytest.approx(m.tflops_per_gpu * 1e12 / plan.peak_flops, rel=1e-9)
        assert 0.35 <= m.mfu <= 0.55, m.mfu
        assert m.busbw_gbs == pytest.approx(m.algbw_gbs * hardware.busbw_factor(plan.dp))
        for sample in step.samples:
            assert sample.mem_used_gb <= sample.mem_total_gb
            assert 0.0 <= sample.util_pct <= 100.0
            assert plan.gpu.idle_w <= sample.power_w <= plan.gpu.tdp_w


def test_global_loss_is_the_token_weighted_mean_of_local_losses() -> None:
    plan = plan_for(3, 16)
    step = run_steps(plan, 1)[0]
    tokens = [sim.throughput.local_tokens(plan, r) for r in range(16)]
    assert sum(tokens) == plan.tokens_per_step
    expected = np.dot(step.local_losses, tokens) / sum(tokens)
    assert step.loss == pytest.approx(expected, rel=1e-12)
    assert len(set(step.local_losses)) > 1  # different micro-batches, different losses


@PROPERTY
@given(seed=SEEDS, world=st.sampled_from([8, 16, 64, 128]))
def test_memory_fits_with_a_persistent_one_to_five_percent_spread(seed: int, world: int) -> None:
    plan = plan_for(seed, world)
    used = [s.mem_used_gb for s in run_steps(dataclasses.replace(plan, events=()), 1)[0].samples]
    assert max(used) <= hardware.capacity_gb(plan.gpu)
    spread = (max(used) - min(used)) / min(used)
    assert 0.005 <= spread <= 0.05, spread


# ---- training dynamics ------------------------------------------------------------------
@PROPERTY
@given(seed=SEEDS, world=WORLDS, steps=st.integers(min_value=20, max_value=5000))
def test_lr_schedule_shape(seed: int, world: int, steps: int) -> None:
    plan = plan_for(seed, world, steps=steps)
    lrs = np.array([training.lr_at(plan, s) for s in range(1, steps + 1)])
    warm = plan.warmup_steps
    assert np.all(np.diff(lrs[:warm]) > 0)
    assert lrs[warm - 1] == pytest.approx(plan.peak_lr)
    assert np.all(np.diff(lrs[warm - 1 :]) <= 1e-18)
    assert lrs[-1] == pytest.approx(plan.min_lr, rel=0.05)
    assert plan.min_lr == pytest.approx(0.1 * plan.peak_lr)
    if plan.schedule == "wsd":
        assert lrs[plan.decay_start - 1] == pytest.approx(plan.peak_lr)


@PROPERTY
@given(seed=SEEDS, world=st.sampled_from([1, 8, 64]))
def test_loss_starts_near_ln_vocab_falls_and_stays_above_the_floor(seed: int, world: int) -> None:
    plan = plan_for(seed, world, steps=300)
    losses = np.array([s.loss for s in run_steps(plan, 300)])
    assert abs(losses[0] - math.log(plan.model.vocab)) < 0.5
    assert losses[-30:].mean() < losses[:30].mean() - 1.0
    assert losses.min() >= training.LOSS_FLOOR
    if data.epoch_at(plan, 300) <= 1.0:  # nothing memorised: never below the data's entropy
        assert losses.min() >= data.kind_law(plan).floor
    residual = losses[100:] - np.array([training.expected_loss(plan, s) for s in range(101, 301)])
    assert residual.std() > 0  # noisy, not a template


def test_spikes_recover_and_lift_the_grad_norm() -> None:
    plan = dataclasses.replace(plan_for(5, 8, steps=300),
                               events=(Event("spike", 150, -1, 15.0, 0.8),))  # fmt: skip
    before, at, later = (training.expected_loss(plan, s) for s in (140, 150, 200))
    assert at > before + 0.7 and later < before + 0.05
    assert training.grad_norm_at(plan, 150) > 50 * training.grad_norm_at(plan, 140)


def test_validation_loss_tracks_training_loss_with_a_small_gap() -> None:
    plan = plan_for(2, 16, steps=300)
    for step in (100, 200, 300):
        vals = [sim.local_val_loss(plan, step, r) for r in range(16)]
        gap = float(np.mean(vals)) - training.expected_loss(plan, step)
        assert 0.0 < gap < 0.1


# ---- hardware ---------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["ring", "tree", "hierarchical"])
def test_comm_time_is_the_alpha_beta_model(algorithm: str) -> None:
    plan = plan_for(7, 64, model="Llama-3-8B", gpu="H100-SXM")
    cost = sim.comm_cost(plan, algorithm)
    expected = hardware.allreduce_time_s(plan.fabric, plan.grad_bucket_bytes, algorithm)
    assert cost.total_s == pytest.approx(expected * plan.comm_volume_factor, rel=0.35)
    assert cost.total_s == sim.comm_time_s(plan, plan.grad_bucket_bytes * plan.comm_volume_factor,
                                           algorithm)  # fmt: skip
    fabric, size = plan.fabric, plan.grad_bucket_bytes
    node_nics = fabric.ranks_per_node * plan.gpu.nic_gbs * 1e9
    crossing = 2 * (fabric.nodes - 1) / fabric.nodes * size  # what each node must ship out
    assert cost.total_s > crossing / node_nics  # cannot beat the wire


def test_ring_bandwidth_term_matches_nccl_tests_busbw() -> None:
    fabric = hardware.Fabric(ranks=8, nodes=1, ranks_per_node=8, nvlink_gbs=300, nic_gbs=25)
    big = 16 * 1024**3
    t = hardware.allreduce_time_s(fabric, big, "ring")
    busbw = big / t / 1e9 * hardware.busbw_factor(8)
    assert busbw == pytest.approx(300 * hardware.LINK_EFFICIENCY, rel=0.01)  # ~235 GB/s measured


def test_thermal_fault_throttles_and_makes_a_straggler() -> None:
    base = plan_for(11, 8, model="Llama-3-8B", gpu="H100-SXM", steps=300)
    plan = dataclasses.replace(base, events=(Event("thermal", 2, 3, 400.0, 25.0),))
    steps = run_steps(plan, 80)
    hot = [s.samples[3] for s in steps]
    others = [max(x.temp_c for i, x in enumerate(s.samples) if i != 3) for s in steps]
    assert plan.gpu.slowdown_c - 1.5 <= max(h.temp_c for h in hot) <= plan.gpu.slowdown_c
    assert max(others) < plan.gpu.max_operating_c
    assert any(h.throttled for h in hot)
    state = sim.init_rank_state(plan, 3)
    throttled = dataclasses.replace(state, clock_mhz=plan.gpu.max_clock_mhz * 0.72)
    assert sim.throughput.slowdown(plan, throttled, 50) > 1.3


def test_fp16_runs_calibrate_the_loss_scale_by_skipping_early_steps() -> None:
    plan = plan_for(0, 8, gpu="V100-SXM2-32GB", model="GPT-2")
    assert plan.precision == "fp16"
    first = sim.global_step(plan, 1)
    assert first.nan_skip and first.loss_scale == 2.0**31
    clean = next(s for s in range(1, 50) if not sim.global_step(plan, s).nan_skip)
    assert sim.global_step(plan, clean).loss_scale < 2.0**31


def test_checkpoint_and_export_sizes_follow_the_parameter_count() -> None:
    plan = plan_for(0, 64, model="Llama-3-8B", gpu="H100-SXM")
    ckpt = sim.checkpoint_info(plan, 100)
    assert ckpt.bytes_total == 14 * plan.model.params
    assert ckpt.bytes_per_rank * 64 <= ckpt.bytes_total
    assert ckpt.save_s > ckpt.bytes_total / (ckpt.bandwidth_gbs * 1e9)
    export = sim.export_info(plan)
    assert sum(b for _, b in export.files) == export.bytes_total > export.weights_bytes
    assert export.weights_bytes == 2 * plan.model.params
    shards = [b for name, b in export.files if name.endswith(".safetensors")]
    assert len(shards) == 4  # as meta-llama/Meta-Llama-3-8B on the Hub
    assert all(b <= 5e9 for b in shards) and shards[-1] < min(shards[:-1])
