"""What an ML-systems engineer checks, re-derived over seeds, models, GPUs, datasets and speeds.

Each test states a relation real runs obey (issue 16) and recomputes it from the
simulation's pure functions, independently of how the simulation computes it:
one timeline per seed at any speed, GPU thermals and power, OOM as a rank death,
BLOOM-shaped rare loss spikes, the dataset's floor and overfitting, recipe batch
sizes, sensible default picks and Hugging Face's export layout.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

import numpy as np
import pytest
from conftest import records, run_cli

from llmcluster import sim
from llmcluster.sim import data, faults, gpu, layout, phases, picks, training
from llmcluster.sim.events import SPIKE_MIN_LR_SHARE
from llmcluster.sim.runplan import Event

CATALOG = sim.load_catalog()
SEEDS = range(0, 40, 3)
SPEEDS = (1.0, 37.5, 1000.0, 2e5)


def plan(seed: int = 0, world: int = 16, steps: int = 250, **names: str) -> sim.RunPlan:
    return sim.make_plan(CATALOG, seed=seed, world_size=world, nproc_per_node=8, steps=steps,
                         **names)  # fmt: skip


def quiet(p: sim.RunPlan, *events: Event) -> sim.RunPlan:
    return dataclasses.replace(p, events=tuple(events))


# ---- one simulated timeline per seed, at any speed -----------------------------------------
def _durations(p: sim.RunPlan) -> dict[str, float]:
    return {
        "init": sim.init_time_s(p),
        "eval": sim.eval_time_s(p),
        "checkpoint": sim.checkpoint_info(p, p.checkpoint_interval).save_s,
        "export": sim.export_info(p).export_s,
        "restore": sim.restore_time_s(p, p.checkpoint_interval),
        "restart": sim.restart_overhead_s(p),
        "rendezvous": sim.rendezvous_time_s(p),
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_simulated_durations_come_from_the_models_alone(seed: int) -> None:
    p = plan(seed)
    d = _durations(p)
    forward = p.flops_per_step / (p.world_size * p.peak_flops * p.mfu_target) / 3.0
    assert d["eval"] == pytest.approx(p.eval_iters * forward, rel=1e-12)
    evals = [sim.eval_time_s(p, s) for s in (100, 200, 250)]
    assert len(set(evals)) == 3 and all(abs(e / d["eval"] - 1) < 0.1 for e in evals)
    ckpt = sim.checkpoint_info(p, p.checkpoint_interval)
    written = 14 * p.model.params / (ckpt.bandwidth_gbs * 1e9)
    assert d["checkpoint"] == pytest.approx(phases.CHECKPOINT_FIXED_S + written, rel=1e-12)
    nominal = phases.STORAGE_GBS_PER_NODE * p.nnodes
    assert 0.75 * nominal < ckpt.bandwidth_gbs <= 1.25 * nominal
    assert d["restore"] == d["checkpoint"]  # read back at the bandwidth it was written with
    assert d["restart"] > d["init"] == p.init_s
    assert d["export"] > sim.export_info(p).weights_bytes / 1.2e9
    assert _durations(plan(seed)) == d  # the same seed, the same timeline


@pytest.mark.parametrize("seed", SEEDS)
def test_pacing_changes_wall_time_only(seed: int) -> None:
    p = plan(seed)
    for phase, sim_s in _durations(p).items():
        walls = []
        for speed in SPEEDS:
            explicit = sim.wall_seconds(phase, sim_s, speed, auto=False)
            assert explicit == pytest.approx(sim_s / speed)
            auto = sim.wall_seconds(phase, sim_s, speed, auto=True)
            assert 0.0 < auto <= sim_s + 1e-9  # never slower than real time
            band = sim.pacing.WATCHABLE_WALL_S.get(phase)
            if band is not None and sim_s >= band[0]:
                assert band[0] <= auto <= band[1]
            walls.append(explicit)
        assert walls == sorted(walls, reverse=True)  # faster speed, less wall time
    assert sim.wall_seconds("eval", 0.0, 10.0, auto=True) == 0.0


# ---- thermals and power --------------------------------------------------------------------
def _telemetry(p: sim.RunPlan, rank: int, steps: int) -> list[tuple[float, sim.GpuSample]]:
    """(step time, sample) of ``rank`` at the plan's modelled step time, step by step."""
    state = sim.init_rank_state(p, rank)
    out = []
    for step in range(1, steps + 1):
        work = sim.rank_step(p, state, step)
        step_s = max(work.compute_s, sim.step_time_model_s(p)) + 0.05
        state, sample = sim.rank_telemetry(p, state, step, compute_s=work.compute_s,
                                           step_time_s=step_s)  # fmt: skip
        out.append((step_s, sample))
    return out


@pytest.mark.parametrize(
    ("gpu_name", "model", "world"),
    [("H100-SXM", "Llama-3-8B", 8), ("A100-SXM-80GB", "Llama-2-7B", 16),
     ("B200", "Llama-3-8B", 8), ("MI300X", "Mistral-7B-v0.1", 8),
     ("V100-SXM2-32GB", "GPT-2", 8)],
)  # fmt: skip
@pytest.mark.parametrize("excess", [15.0, 40.0])
def test_a_cooling_fault_throttles_like_a_real_gpu(
    gpu_name: str, model: str, world: int, excess: float
) -> None:
    p = plan(4, world, steps=400, model=model, gpu=gpu_name)
    card = p.gpu
    start, span = 30, 120
    hot = quiet(p, Event("thermal", start, 1, float(span), excess))
    samples = _telemetry(hot, 1, 260)
    temps = [s.temp_c for _, s in samples]
    assert max(temps) <= card.slowdown_c < card.shutdown_c  # never near shutdown
    throttled = [s for _, s in samples if s.throttled]
    assert throttled and all(s.temp_c >= card.slowdown_c - 2.0 for s in throttled)
    before = [s for _, s in samples[start - 10 : start - 1]]
    # throttling lowers the clock and, with it (f·V²), the power
    assert max(s.sm_clock_mhz for s in throttled) < min(s.sm_clock_mhz for s in before)
    assert max(s.power_w for s in throttled) < min(s.power_w for s in before)
    # first order: no sample moves more than the heatsink allows over its interval
    for (dt, a), (_, b) in itertools.pairwise(samples):
        bound = (card.shutdown_c - 20.0) * (1.0 - math.exp(-dt / gpu.HEATSINK_TAU_S)) + 1.5
        assert abs(b.temp_c - a.temp_c) <= bound, (a, b)
    # after the fault it cools back, gradually, and the clock returns
    end = start + span
    after = samples[end + 60 :]
    assert max(s.temp_c for _, s in after) < card.max_operating_c
    assert not any(s.throttled for _, s in after)


@pytest.mark.parametrize("seed", SEEDS)
def test_healthy_gpus_stay_in_the_normal_band(seed: int) -> None:
    p = quiet(plan(seed, 8, steps=120))
    for rank in range(p.world_size):
        for _, s in _telemetry(p, rank, 60)[20:]:
            assert 45.0 <= s.temp_c < p.gpu.max_operating_c and not s.throttled
            assert p.gpu.idle_w <= s.power_w <= p.gpu.tdp_w


def test_power_rises_with_the_clock_roughly_cubically() -> None:
    card = CATALOG.gpu("H100-SXM")
    shares = [gpu.dynamic_share(card, f * card.max_clock_mhz) for f in (0.5, 0.7, 0.85, 1.0)]
    assert shares == sorted(shares) and shares[-1] == pytest.approx(1.0)
    exponent = math.log(shares[1]) / math.log(0.7)
    assert 2.0 <= exponent <= 3.0


# ---- OOM ----------------------------------------------------------------------------------
def test_an_oom_is_a_death_with_torchs_message() -> None:
    p = plan(1, 8, model="Llama-3-8B", gpu="H100-SXM")
    p = quiet(p, Event("oom", 40, 3))
    event = sim.fatal_event(p, 3, 40)
    assert event is not None and sim.fatal_event(p, 3, 41) is None
    assert sim.fatal_event(p, 2, 40) is None
    assert not sim.global_step(p, 40).events  # announced by the failure, not a step event
    (oom,) = faults.process_faults(p, ())
    assert (oom.kind, oom.rank, oom.step) == ("oom", 3, 40)
    lines = sim.oom_traceback(p, event)
    assert lines[0] == "Traceback (most recent call last):"
    text = lines[-1]
    size = r"([\d.]+ (?:GiB|MiB|KiB|bytes))"
    pattern = (
        rf"torch\.(?:cuda\.)?OutOfMemoryError: CUDA out of memory\. Tried to allocate {size}\. "
        rf"GPU 3 has a total capacity of {size} of which {size} is free\. Including non-PyTorch "
        rf"memory, this process has {size} memory in use\. Of the allocated memory {size} is "
        rf"allocated by PyTorch, and {size} is reserved by PyTorch but unallocated\. If reserved "
        r"but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments"
        r":True to avoid fragmentation\.  See documentation for Memory Management  \(https://"
        r"pytorch\.org/docs/stable/notes/cuda\.html#environment-variables\)$"
    )
    match = re.match(pattern, text)
    assert match, text
    scale = {"GiB": 1.0, "MiB": 1 / 1024, "KiB": 1 / 1024**2, "bytes": 1 / 1024**3}
    values = [float(g.split()[0]) * scale[g.split()[1]] for g in match.groups()]
    gib = dict(zip(("tried", "total", "free", "use", "alloc", "frag"), values, strict=True))
    assert gib["total"] == pytest.approx(79.11, abs=0.01)  # torch's figure for an 80GB H100
    assert gib["use"] == pytest.approx(gib["total"] - gib["free"], abs=0.01)
    shown = sim.init_rank_state(p, 3).mem_offset
    assert gib["use"] == pytest.approx(p.memory.total_gb * (1 + shown), abs=0.01)  # as smi showed
    assert gib["alloc"] + gib["frag"] < gib["use"]
    assert gib["tried"] > gib["free"] + gib["frag"]  # it could not fit, even defragmented


def test_natural_ooms_need_a_plan_that_fills_the_card() -> None:
    seen = 0
    for seed in range(150):
        p = plan(seed, 16)
        for e in p.events:
            assert e.kind in ("spike", "nan_skip", "straggler", "thermal", "oom")
            if e.kind == "oom":
                seen += 1
                used = p.memory.total_gb * (1 + p.mem_spread) / (p.gpu.memory_mib / 1024)
                assert used >= 0.85
    assert seen < 30  # rare


def test_an_oom_kills_the_rank_and_torchrun_restarts_the_group(clean_table: None) -> None:
    done = run_cli(
        "--ranks", "4", "--steps", "12", "--format", "jsonl", "--speed", "2000",
        "--model", "GPT-2", "--gpu", "H100-SXM", "--inject", "oom:rank=2,step=6", timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "[rank2]: Traceback (most recent call last):" in done.stderr
    assert re.search(
        r"\[rank2\]: torch(\.cuda)?\.OutOfMemoryError: CUDA out of memory\. Tried to "
        r"allocate",
        done.stderr,
    )  # torch 2.5 moved it out of torch.cuda
    assert "retried" not in done.stdout + done.stderr
    recs = records(done.stdout)
    (failure,) = [r for r in recs if r["type"] == "failure"]
    assert failure["rank"] == 2 and failure["exitcode"] == 1
    assert len([r for r in recs if r["type"] == "restart"]) == 1
    assert recs[-1]["type"] == "summary" and recs[-1]["exit"] == "completed"


# ---- loss spikes ---------------------------------------------------------------------------
def test_spikes_are_rare_at_high_lr_and_never_in_the_last_tenth() -> None:
    counts = []
    for seed in range(200):
        p = plan(seed, 16, steps=250)
        spikes = [e for e in p.events if e.kind == "spike"]
        counts.append(len(spikes))
        for e in spikes:
            assert e.step <= 0.9 * p.total_steps and e.step + e.duration <= p.total_steps
            assert training.lr_at(p, e.step) >= SPIKE_MIN_LR_SHARE * p.peak_lr
            assert e.step > p.warmup_steps
    runs = np.array(counts)
    assert np.mean(runs == 0) > 0.6  # most runs have none
    assert np.mean(runs >= 1) > 0.03 and np.mean(runs >= 2) < 0.05


def test_an_injected_spike_fires_even_late() -> None:
    p = plan(2, 8, steps=250)
    (event,) = faults.fault_events(p, (faults.parse_fault("spike:step=240"),))
    late = quiet(p, event)
    assert sim.global_step(late, 240).spike
    assert training.expected_loss(late, 240) > training.expected_loss(quiet(p), 240) + 0.5


@pytest.mark.parametrize("seed", [0, 5, 9, 13])
@pytest.mark.parametrize("model", ["Llama-3-8B", "GPT-2", "Mixtral-8x7B"])
def test_spike_shape_is_bloom_s(seed: int, model: str) -> None:
    base = quiet(plan(seed, 32, steps=400, model=model, gpu="H100-SXM"))
    peak = 150
    p = quiet(base, Event("spike", peak, -1, 30.0, 1.0))
    (shape,) = training.spike_shapes(p)
    norm = [training.grad_norm_at(p, s) / training.grad_norm_at(base, s) for s in range(1, 401)]
    loss = [training.expected_loss(p, s) - training.expected_loss(base, s) for s in range(1, 401)]
    onset = peak - shape.precursor_steps
    climb = norm[onset - 1 : peak]
    assert shape.precursor_steps >= 4
    assert climb == sorted(climb) and 100.0 <= climb[-1] <= 1000.0  # 100-1000x, over steps
    assert norm[onset - 3] == pytest.approx(1.0)  # nothing before it starts
    assert max(range(400), key=lambda i: loss[i]) == peak - 1  # the loss peaks after the norm
    assert max(loss[: onset - 1]) == 0.0 and loss[peak - 2] < 0.2 * loss[peak - 1]
    assert loss[peak + 4] > 0.1 * loss[peak - 1]  # not back after a few steps ...
    assert loss[peak + 40] < 0.05  # ... but within ~30
    assert norm[peak + 40] < 3.0


# ---- the dataset -------------------------------------------------------------------------
def test_tinystories_models_reach_its_low_floor() -> None:
    for model, steps in (("GPT-2", 250), ("GPT-2", 1000), ("Pythia-160M", 500)):
        p = quiet(plan(1, 8, steps=steps, model=model, dataset="TinyStories", gpu="H100-SXM"))
        final = training.expected_loss(p, steps)
        assert 1.1 <= final <= 1.6, (model, steps, final)


def test_the_kind_of_data_orders_the_final_loss() -> None:
    order = ("TinyStories", "The-Stack-v2", "FineWeb", "CulturaX")  # stories < code < web < multi
    finals = []
    for name in order:
        p = quiet(plan(3, 16, model="Llama-3-8B", gpu="H100-SXM", dataset=name))
        assert training.expected_loss(p, 1) == pytest.approx(math.log(p.model.vocab) + 0.1, 0.02)
        finals.append(training.expected_loss(p, p.total_steps))
    assert finals == sorted(finals) and finals[2] - finals[1] > 0.8


@pytest.mark.parametrize("dataset", ["Dad-Jokes-Dedup", "Conference-Wifi-Passwords"])
def test_a_small_dataset_trained_for_many_epochs_overfits(dataset: str) -> None:
    p = quiet(plan(2, 16, steps=250, model="Llama-2-13B", gpu="H100-SXM", dataset=dataset))
    assert data.epoch_at(p, p.total_steps) > 20
    evals = [s for s in range(1, p.total_steps + 1) if sim.is_eval_step(p, s)]
    gaps = [np.mean([sim.local_val_loss(p, s, r) for r in range(16)])
            - training.expected_loss(p, s) for s in evals]  # fmt: skip
    assert gaps[-1] > gaps[0] + 0.3 and gaps[-1] > 1.0  # val - train grows with the epochs
    vals = [training.expected_val_loss(p, s) for s in range(1, 251)]
    assert any(vals[s + 50] > vals[s] for s in range(50, 200))  # validation turns up


def test_a_large_corpus_does_not_overfit() -> None:
    p = quiet(plan(2, 16, model="Llama-2-13B", gpu="H100-SXM", dataset="FineWeb"))
    gap = np.mean([sim.local_val_loss(p, 250, r) for r in range(16)])
    assert 0.0 < gap - training.expected_loss(p, 250) < 0.1


@pytest.mark.parametrize("seed", SEEDS)
def test_epochs_count_samples(seed: int) -> None:
    p = plan(seed)
    per_epoch = sim.samples_per_epoch(p)
    assert per_epoch == p.dataset.tokens // p.seq_len
    for step in (1, 17, p.total_steps):
        assert sim.epoch_at(p, step) * per_epoch == pytest.approx(step * p.global_batch)
    starts = [s for s in range(2, 2000) if int(sim.epoch_at(p, s)) > int(sim.epoch_at(p, s - 1))]
    for s in starts:  # an epoch boundary is where the consumed samples cross a multiple
        assert (s - 1) * p.global_batch < int(sim.epoch_at(p, s)) * per_epoch <= s * p.global_batch


# ---- batch sizes and schedule as recipes give them ------------------------------------------
def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@pytest.mark.parametrize("world", [1, 8, 16, 64, 128, 24, 48])
def test_batches_are_recipe_batches(world: int) -> None:
    eval_iters = set()
    for seed in range(12):
        try:
            p = plan(seed, world)
        except sim.PlanError:
            continue
        layout = p.layout
        assert _power_of_two(layout.grad_accum) and layout.grad_accum <= 32
        assert _power_of_two(layout.micro_batch)
        odd = layout.dp
        while odd % 2 == 0:
            odd //= 2
        rest = p.global_batch // odd
        assert p.global_batch % odd == 0 and _power_of_two(rest)  # 2^k, or 3 x 2^k on 24 GPUs
        assert p.warmup_steps >= 10
        assert p.eval_iters / 3 <= 0.2 * p.eval_interval
        eval_iters.add(p.eval_iters)
    assert len(eval_iters) > 1  # not always the same


def test_sixteen_ranks_train_1024_not_992() -> None:
    target = 4e6 / 4096  # Llama 2: 4M tokens of 4K sequences
    assert 16 * 2 * layout.recipe_accum(target, 16, 2) == 1024  # rounding would give 992
    assert 24 * 2 * layout.recipe_accum(target, 24, 2) == 768  # 3 x 2^k on 24 data replicas
    for seed in SEEDS:
        p = plan(seed, 16)
        wanted = layout.target_batch_tokens(p.model) / p.seq_len
        if p.layout.grad_accum < 32:  # not held back by the accumulation cap
            assert wanted / 2**0.5 <= p.global_batch <= wanted * 2**0.5 or p.global_batch < 16


# ---- the default pick ----------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 8, 16, 64, 256])
def test_default_picks_are_sensible_and_vary(world: int) -> None:
    combos = set()
    for seed in range(40):
        p = plan(seed, world)
        model, ds = p.model, p.dataset
        assert picks.sensible(model, ds), (seed, model.name, ds.name)
        if not model.humorous:
            assert not ds.humorous and ds.kind != "chat"
            assert (model.domain == "code") == (ds.kind == "code")
            assert ds.kind != "stories" or model.params <= 200e6
        rebuilt = plan(seed, world, model=model.name, gpu=p.gpu.name, dataset=ds.name)
        assert rebuilt == p
        combos.add((model.name, p.gpu.name, ds.name))
    assert len(combos) > 15


def test_a_given_dataset_gets_a_model_that_suits_it() -> None:
    for seed in range(10):
        p = plan(seed, 8, dataset="TinyStories")
        assert p.model.params <= 200e6 or p.model.humorous
        code = plan(seed, 32, dataset="The-Stack-v2")
        assert code.model.domain == "code" or code.model.humorous


# ---- the Hugging Face export ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "shards"), [("Llama-3-70B", 30), ("Llama-3-8B", 4), ("Mixtral-8x7B", 19),
                          ("GPT-2", 1)],
)  # fmt: skip
def test_export_layout_is_save_pretrained_s(model: str, shards: int) -> None:
    p = plan(0, 128, model=model, gpu="H100-SXM")
    export = sim.export_info(p)
    names = [n for n, _ in export.files]
    weights = [(n, b) for n, b in export.files if n.endswith(".safetensors")]
    assert len(weights) == shards and "config.json" in names
    assert ("model.safetensors.index.json" in names) == (shards > 1)
    assert names == sorted(names)  # as ls lists them
    if shards > 1:
        assert weights[0][0] == f"model-00001-of-{shards:05d}.safetensors"
        sizes = [b for _, b in weights]
        assert max(sizes) <= 5_000_000_000 + 1_000_000  # data below 5 GB, plus the header
        assert min(sizes[:-1]) > 3e9 and sizes[-1] < max(sizes)  # filled, small last shard
    assert sum(b for _, b in weights) > export.weights_bytes == 2 * p.model.params
    assert sum(b for _, b in export.files) == export.bytes_total


# ---- end to end: the same run at two speeds -------------------------------------------------
WALL_FIELDS = {"agent_pid", "pids", "run_id", "speed", "start_time", "ready_s", "wall_ms",
               "arrive_ms", "wait_ms", "wall_seconds"}  # fmt: skip


def _simulated(recs: list[dict]) -> list[dict]:
    """The records without their wall-clock fields, times relative to the run's start."""

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in WALL_FIELDS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    start = recs[0]["start_time"]
    out = []
    for rec in recs:
        rec = dict(rec)
        if "time" in rec:
            rec["time"] = round(rec["time"] - start, 6)
        out.append(strip(rec))
    return out


def test_one_seed_is_one_timeline_at_any_speed(clean_table: None) -> None:
    args = ("--ranks", "2", "--steps", "3", "--seed", "11", "--format", "jsonl",
            "--model", "GPT-2", "--gpu", "H100-SXM")  # fmt: skip
    fast = run_cli(*args, "--speed", "1000", timeout=100)
    auto = run_cli(*args, timeout=200)  # --speed auto paces the phases for watching
    assert fast.returncode == 0 and auto.returncode == 0, fast.stderr + auto.stderr
    fast_recs, auto_recs = records(fast.stdout), records(auto.stdout)
    assert fast_recs[0]["speed"] != auto_recs[0]["speed"]
    fast_sim, auto_sim = _simulated(fast_recs), _simulated(auto_recs)
    differing = [(a["type"], sorted(k for k in a if a.get(k) != b.get(k)))
                 for a, b in zip(fast_sim, auto_sim, strict=False) if a != b]  # fmt: skip
    assert fast_sim == auto_sim, differing[:3]


@pytest.mark.parametrize("gpu_name", [g.name for g in CATALOG.gpus])
def test_node_names_never_name_another_gpu(gpu_name: str) -> None:
    """A pattern that names GPUs (p4d, a3-mega, mi300x...) is used only for those GPUs."""
    tagged = [p for p in CATALOG.hostname_patterns if p.gpus]
    foreign = {p.pattern.split("{")[0] for p in tagged if not p.fits(gpu_name)}
    own = {p.pattern.split("{")[0] for p in tagged if p.fits(gpu_name)}
    seen = set()
    for seed in range(60):
        host = plan(seed=seed, gpu=gpu_name).node_names[0]
        assert not any(host.startswith(stem) for stem in foreign - own), (seed, host)
        seen.add(host)
    assert len(seen) > 5  # still a variety of clusters
