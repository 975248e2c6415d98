"""DeepSpeed's log (``--style deepspeed``): the engine's set-up and configuration dump,
``log_dist``'s step lines, the throughput timer and the checkpoint engine (``real-logs.md``
2e; the configuration dump and the checkpoint sequence as DeepSpeed 0.16 prints them).

The renderer keeps what the engine keeps: the running average of the throughput timer
(which, like DeepSpeed's ``ThroughputTimer``, skips the first step of a worker group) and
the last timestamp printed, so no line is ever stamped before an earlier one.

Who prints what (DeepSpeed 0.16.4): ``log_dist(..., ranks=[0])`` lines (``[Rank 0] ...``:
the engine's set-up, steps, timers) and ``Initializing TorchBackend`` on rank 0 only; plain
``logger.info`` lines on every rank: the accelerator and ``cdb=None`` at import and
``init_distributed``, each rank's own ZeRO shard save (``[Torch] Saving/Saved``, ``zero
checkpoint saved``), ``Checkpoint ... is ready now!`` (``commit`` runs on every rank), and at
a restore the model states and the rank's own shard loaded, ``successfully read N ZeRO
state_dicts`` and ``loading N zero partition checkpoints for rank R``. The model states are
saved by the data-parallel rank 0s (``save_non_zero_checkpoint``), and ``Saving model
checkpoint`` is logged with ``ranks=[0, 1]``. The merged view shows rank 0's lines; the RANK
view exactly its rank's.
"""

from __future__ import annotations

import json
from typing import ClassVar

from llmcluster.render.base import Style, View, event_lines, memory_gib, prefixed
from llmcluster.render.fmt import deepspeed_ts, num
from llmcluster.render.hf import export_lines, steps_per_epoch
from llmcluster.wire.records import (
    CheckpointRecord,
    EvalRecord,
    ExportRecord,
    PhaseName,
    PhaseRecord,
    RunRecord,
    StepRecord,
    SummaryRecord,
)

VERSION = "0.16.4"
LOG_DIST = "logging.py:128:log_dist"
CONFIG_PRINT = "config.py:1003:print"
CKPT = "torch_checkpoint_engine.py"
SAVE, SAVED, LOAD, LOADED, COMMIT = (f"{CKPT}:21:save", f"{CKPT}:23:save", f"{CKPT}:27:load",
                                     f"{CKPT}:29:load", f"{CKPT}:33:commit")  # fmt: skip
SAVE_ZERO = "engine.py:3645:_save_zero_checkpoint"
READ_ZERO = "engine.py:3185:_get_all_zero_checkpoint_state_dicts"
LOAD_ZERO = "engine.py:3135:_load_zero_checkpoint"
OPTIMIZER_SHARE = 0.02  # of a step shown as the optimizer step in DeepSpeed's timer line
DOTS_TO = 29  # DeepSpeedConfig.print: "  {name} {'.' * (29 - len(name))} {value}"


def _config_dump(run: RunRecord) -> list[tuple[str, str]]:
    """``DeepSpeedEngine configuration:`` entries (name, printed value), sorted by name."""
    plan = run.plan
    cosine = plan.schedule == "cosine"
    scheduler = (
        {"total_num_steps": plan.total_steps, "warmup_num_steps": plan.warmup_steps,
         "cos_min_ratio": round(plan.min_lr / plan.peak_lr, 6)}
        if cosine
        else {"total_num_steps": plan.total_steps, "warmup_min_lr": 0,
              "warmup_max_lr": plan.peak_lr, "warmup_num_steps": plan.warmup_steps}
    )  # fmt: skip
    optimizer = {"lr": plan.peak_lr, "betas": [plan.adam_beta1, plan.adam_beta2],
                 "eps": plan.adam_eps, "weight_decay": plan.weight_decay}  # fmt: skip
    checkpointing = {
        "partition_activations": False,
        "contiguous_memory_optimization": False,
        "cpu_checkpointing": False,
        "number_checkpoints": None,
        "synchronize_checkpoint_boundary": False,
        "profile": False,
    }
    stage = plan.zero_stage
    entries = {
        "activation_checkpointing_config": json.dumps(checkpointing, indent=4),
        "aio_config": "{'block_size': 1048576, 'queue_depth': 8, 'thread_count': 1, "
        "'single_submit': False, 'overlap_events': True, 'use_gds': False}",
        "amp_enabled": "False",
        "bfloat16_enabled": str(plan.precision == "bf16"),
        "checkpoint_parallel_write_pipeline": "False",
        "checkpoint_tag_validation_enabled": "True",
        "communication_data_type": "None",
        "dump_state": "False",
        "fp16_enabled": str(plan.precision == "fp16"),
        "global_rank": "0",
        "gradient_accumulation_steps": str(plan.grad_accum),
        "gradient_clipping": str(float(plan.grad_clip)),
        "gradient_predivide_factor": "1.0",
        "optimizer_name": "adamw",
        "optimizer_params": str(optimizer),
        "prescale_gradients": "False",
        "scheduler_name": "WarmupCosineLR" if cosine else "WarmupDecayLR",
        "scheduler_params": str(scheduler),
        "steps_per_print": "1",
        "train_batch_size": str(plan.global_batch),
        "train_micro_batch_size_per_gpu": str(plan.micro_batch),
        "wall_clock_breakdown": "True",
        "world_size": str(plan.dp),
        "zero_config": f"stage={stage} contiguous_gradients=True reduce_scatter=True "
        "reduce_bucket_size=500000000 allgather_partitions=True "
        "allgather_bucket_size=500000000 overlap_comm=True offload_param=None "
        "offload_optimizer=None",
        "zero_enabled": str(stage > 0),
        "zero_optimization_stage": str(stage),
    }
    return sorted(entries.items())


def model_states(run: RunRecord, rank: int) -> str:
    """The model states file a data-parallel rank 0 saves (its model-parallel rank's)."""
    return f"mp_rank_{rank % run.plan.tp:02d}_model_states.pt"


def optim_states(run: RunRecord, rank: int) -> str:
    """This rank's ZeRO shard (``_get_zero_ckpt_prefix``: ``bf16_`` with bf16 enabled)."""
    plan = run.plan
    bf16 = "bf16_" if plan.precision == "bf16" else ""
    dp_rank, mp_rank = (rank // plan.tp) % plan.dp, rank % plan.tp
    return f"{bf16}zero_pp_rank_{dp_rank}_mp_rank_{mp_rank:02d}_optim_states.pt"


def _user_config(run: RunRecord) -> str:
    """The ``json = {...}`` user configuration DeepSpeed prints after the dump."""
    plan = run.plan
    config = {
        "train_batch_size": plan.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.grad_accum,
        "gradient_clipping": plan.grad_clip,
        plan.precision if plan.precision in ("bf16", "fp16") else "bf16": {"enabled": True},
        "zero_optimization": {"stage": plan.zero_stage},
        "steps_per_print": 1,
        "wall_clock_breakdown": True,
    }
    return json.dumps(config, indent=4)


class DeepSpeedStyle(Style):
    """DeepSpeed's engine, ``log_dist`` lines (``[Rank 0] step=...``) and throughput timer."""

    name: ClassVar[str] = "deepspeed"
    example: ClassVar[str] = (
        "[2026-11-22 14:03:07,123] [INFO] [logging.py:128:log_dist] [Rank 0] step=120, "
        "skipped=0, lr=[0.000285], mom=[(0.9, 0.95)]"
    )
    tee: ClassVar[bool] = True

    def __init__(self, *, width: int = 120, ascii_only: bool = False,
                 view: View = View.MERGED, rank: int = 0) -> None:  # fmt: skip
        super().__init__(width=width, ascii_only=ascii_only, view=view, rank=rank)
        self.last_t = 0.0  # never stamp a line before the previous one
        self.start_attempt()

    def start_attempt(self) -> None:
        self.engine_shown = False
        self.timed_samples = 0
        self.timed_s = 0.0
        self.first_step: int | None = None
        self.skipped = 0

    def _info(self, t: float, where: str, text: str, level: str = "INFO") -> str:
        self.last_t = max(self.last_t, t)
        return f"[{deepspeed_ts(self.last_t)}] [{level}] [{where}] {text}"

    def _dump(self, t: float, text: str) -> list[str]:
        """One logger call; a multi-line value continues on lines of its own (no stamp)."""
        first, *rest = text.split("\n")
        return [self._info(t, CONFIG_PRINT, first), *rest]

    def _rank(self) -> int:
        """The rank whose lines this view writes (rank 0's when merged)."""
        return self.rank if self.view is View.RANK else 0

    def _saves_model(self, run: RunRecord) -> bool:
        """``save_non_zero_checkpoint``: this view's rank is a data-parallel rank 0."""
        return (self._rank() // run.plan.tp) % run.plan.dp == 0

    def preamble(self, run: RunRecord) -> list[str]:
        t = run.start_time
        lines = [
            self._info(t, "real_accelerator.py:219:get_accelerator",
                       "Setting ds_accelerator to cuda (auto detect)"),
            self._info(t, "comm.py:658:init_distributed", "cdb=None"),
        ]  # fmt: skip
        if self.shows(0):
            lines.append(
                self._info(
                    t,
                    "comm.py:689:init_distributed",
                    "Initializing TorchBackend in DeepSpeed with backend nccl",
                )
            )
        return prefixed(self.prefix(run), lines)

    def _engine_lines(self, run: RunRecord, t: float) -> list[str]:
        """``deepspeed.initialize``: the optimizer, the scheduler and the configuration dump."""
        self.engine_shown = True
        if not self.shows(0):
            return []
        plan = run.plan
        optimizer = "DeepSpeedZeroOptimizer" if plan.zero_stage else "FusedAdam"
        lines = [
            self._info(t, LOG_DIST, f"[Rank 0] DeepSpeed info: version={VERSION}, git-hash="
                       "unknown, git-branch=unknown"),
            self._info(t, LOG_DIST, f"[Rank 0] DeepSpeed Final Optimizer = {optimizer}"),
            self._info(t, LOG_DIST, "[Rank 0] DeepSpeed using configured LR scheduler = "
                       f"{'WarmupCosineLR' if plan.schedule == 'cosine' else 'WarmupDecayLR'}"),
            self._info(t, LOG_DIST, f"[Rank 0] step=0, skipped=0, lr=[0.0], "
                       f"mom=[({plan.adam_beta1}, {plan.adam_beta2})]"),
            self._info(t, "config.py:999:print", "DeepSpeedEngine configuration:"),
        ]  # fmt: skip
        for key, value in _config_dump(run):
            lines += self._dump(t, f"  {key} {'.' * (DOTS_TO - len(key))} {value}")
        first, *rest = f"  json = {_user_config(run)}".split("\n")
        lines += [self._info(t, "config.py:989:print_user_config", first), *rest]
        return prefixed(self.prefix(run), lines)

    def phase_lines(self, run: RunRecord, rec: PhaseRecord) -> list[str]:
        t, tag = rec.time, f"global_step{rec.step}"
        if rec.name is PhaseName.INIT:
            return self._engine_lines(run, rec.time + rec.expected_s)
        rank, folder = self._rank(), f"{run.plan.checkpoint_dir}/{tag}"
        if rec.name is PhaseName.CHECKPOINT:
            states = f"{folder}/{model_states(run, rank)}"
            lines = []
            if self.shows(0):
                lines.append(
                    self._info(
                        t, LOG_DIST, f"[Rank 0] [Torch] Checkpoint {tag} is about to be saved!"
                    )
                )
            if self._saves_model(run):
                if rank in (0, 1):  # log_dist(..., ranks=[0, 1])
                    lines.append(
                        self._info(t, LOG_DIST, f"[Rank {rank}] Saving model checkpoint: {states}")
                    )
                lines.append(self._info(t, SAVE, f"[Torch] Saving {states}..."))
            return prefixed(self.prefix(run), lines)
        if rec.name is PhaseName.RESTORE:  # deepspeed.initialize, then engine.load_checkpoint
            done = t + rec.expected_s
            paths = [f"{folder}/{model_states(run, rank)}"]
            if run.plan.zero_stage:
                paths.append(f"{folder}/{optim_states(run, rank)}")
            engine = [] if self.engine_shown else self._engine_lines(run, t)
            lines = []
            for path in paths:
                lines += [
                    self._info(t, LOAD, f"[Torch] Loading checkpoint from {path}..."),
                    self._info(done, LOADED, f"[Torch] Loaded checkpoint from {path}."),
                ]
            if run.plan.zero_stage and self.view is View.RANK:
                dp = run.plan.dp
                lines += [
                    self._info(done, READ_ZERO,
                               f"successfully read {dp} ZeRO state_dicts for rank {rank}"),
                    self._info(done, LOAD_ZERO,
                               f"loading {dp} zero partition checkpoints for rank {rank}"),
                ]  # fmt: skip
            return [*engine, *prefixed(self.prefix(run), lines)]
        return []

    def step_line(self, run: RunRecord, step: StepRecord) -> list[str]:
        plan, t, n = run.plan, step.time, step.step
        lines = [] if self.engine_shown else self._engine_lines(run, t - step.step_time_s)
        if not self.shows(0):
            return lines
        if self.first_step is None:
            self.first_step = n
        elif step.step_time_s > 0:  # ThroughputTimer skips a worker group's first step
            self.timed_samples += plan.global_batch
            self.timed_s += step.step_time_s
        running = self.timed_samples / self.timed_s if self.timed_s else step.samples_per_s
        allocated, peak, _ = memory_gib(run)
        step_ms = 1000 * step.step_time_s
        # rank 0 waits in the exposed allreduce for as long as the step ran over the model
        allreduce = step.collective.exposed_ms * step.step_time_s / plan.step_time_model_s
        optimizer = OPTIMIZER_SHARE * step_ms
        compute = step_ms - allreduce - optimizer
        epoch = (n - 1) // steps_per_epoch(run)
        text = event_lines(step)
        if step.skipped:
            self.skipped += 1
            if plan.precision == "fp16":
                text.append(self._info(t, LOG_DIST,
                                       f"[Rank 0] Overflow detected. Skipping step. Attempted "
                                       f"loss scale: {2 * step.loss_scale:.1f}, reducing to "
                                       f"{step.loss_scale:.1f}"))  # fmt: skip
        text += [
            self._info(t, LOG_DIST,
                       f"[Rank 0] step={n}, skipped={self.skipped}, lr=[{step.lr!r}], "
                       f"mom=[({plan.adam_beta1}, {plan.adam_beta2})]"),
            self._info(t, "timer.py:264:stop",
                       f"epoch={epoch}/micro_step={n * plan.grad_accum}/global_step={n}, "
                       f"RunningAvgSamplesPerSec={running!r}, "
                       f"CurrSamplesPerSec={step.samples_per_s!r}, "
                       f"MemAllocated={allocated:.2f}GB, MaxMemAllocated={peak:.2f}GB"),
            self._info(t, LOG_DIST,
                       f"[Rank 0] time (ms) | fwd: {compute / 3:.2f} | bwd: "
                       f"{2 * compute / 3 + allreduce:.2f} | bwd_inner: {2 * compute / 3:.2f} | "
                       f"bwd_allreduce: {allreduce:.2f} | step: {optimizer:.2f}"),
            f"epoch {epoch} | step {n}/{step.total_steps} | loss {num(step.loss, '.4f')} | "
            f"ppl {num(step.ppl, '.2f')} | grad_norm {num(step.grad_norm, '.3f')} | "
            f"TFLOPs {step.tflops_per_gpu:.1f}",
        ]  # fmt: skip
        return [*lines, *prefixed(self.prefix(run), text)]

    def eval_lines(self, run: RunRecord, rec: EvalRecord) -> list[str]:
        if not self.shows(0):
            return []
        line = (
            f"epoch {(rec.step - 1) // steps_per_epoch(run)} | eval at step {rec.step} | "
            f"val_loss {num(rec.val_loss, '.4f')} | val_ppl {num(rec.val_ppl, '.2f')}"
        )
        return prefixed(self.prefix(run), [line])

    def checkpoint_lines(self, run: RunRecord, rec: CheckpointRecord) -> list[str]:
        """The checkpoint engine's save sequence, stamped from the save's start to its end."""
        t1, tag, plan, rank = rec.time, f"global_step{rec.step}", run.plan, self._rank()
        t0 = t1 - rec.save_s
        folder = f"{plan.checkpoint_dir}/{tag}"
        mem = plan.memory
        states = mem.weights_gb + mem.optimizer_gb
        t_model = t0 + rec.save_s * (mem.weights_gb / states if states else 0.5)
        lines = []
        if self._saves_model(run):
            lines.append(
                self._info(t_model, SAVED, f"[Torch] Saved {folder}/{model_states(run, rank)}.")
            )
        if plan.zero_stage:
            shard = f"{folder}/{optim_states(run, rank)}"
            lines += [
                self._info(t_model, SAVE, f"[Torch] Saving {shard}..."),
                self._info(t1, SAVED, f"[Torch] Saved {shard}."),
                self._info(t1, SAVE_ZERO, f"zero checkpoint saved {shard}"),
            ]
        lines.append(self._info(t1, COMMIT, f"[Torch] Checkpoint {tag} is ready now!"))
        return prefixed(self.prefix(run), lines)

    def export_lines(self, run: RunRecord, rec: ExportRecord) -> list[str]:
        if not self.shows(0):
            return []
        return prefixed(self.prefix(run), export_lines(rec))  # the script's save_pretrained

    def final_lines(self, run: RunRecord, rec: SummaryRecord) -> list[str]:
        return []
