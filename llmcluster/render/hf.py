"""The HF Trainer's log (``--style hf``): the ``***** Running training *****`` block, tqdm's
progress bar, a dict per logging step, eval dicts and ``save_pretrained``'s lines
(``real-logs.md`` 2e).

The main process prints all of it. Every process (``log_level_replica`` is ``warning``)
prints the example script's ``Process rank: ...`` warning at start and, with gradient
checkpointing (full recompute), the model's ``use_cache=True`` warning and torch's
``use_reentrant`` UserWarning on its stderr at the first step; the RANK view writes them for
its rank, the merged view only the main process's lines.

Like the Trainer, the renderer counts epochs in samples (``step x global batch`` over the
dataset's examples), and like tqdm it measures elapsed time on the run's clock since
training started (evaluations and saves included) and shows an exponentially smoothed
rate, so the final bar agrees with ``train_runtime``.
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

from llmcluster.render.base import Style, View, event_lines
from llmcluster.render.fmt import clock, duration, finite
from llmcluster.wire.records import (
    CheckpointRecord,
    EvalRecord,
    ExportRecord,
    PhaseName,
    PhaseRecord,
    Record,
    RunRecord,
    StepRecord,
    SummaryRecord,
)

TQDM_SMOOTHING = 0.3  # tqdm's default exponential moving average weight
GRACEFUL_EXITS = ("completed", "exit-after-time")  # the training loop returned: train() reports
MIN_BAR = 10
USE_CACHE = (
    "`use_cache=True` is incompatible with gradient checkpointing. Setting `use_cache=False`."
)
REENTRANT = (  # torch 2.4's warning, raised through torch/_dynamo/eval_frame.py
    "/usr/local/lib/python3.11/dist-packages/torch/_dynamo/eval_frame.py:745: UserWarning: "
    "torch.utils.checkpoint: the use_reentrant parameter should be passed explicitly. In "
    "version 2.5 we will raise an exception if use_reentrant is not passed. "
    "use_reentrant=False is recommended, but if you need to preserve the current default "
    "behavior, you can pass use_reentrant=True. Refer to docs for more details on the "
    "differences between the two variants.",
    "  return fn(*args, **kwargs)",
)


def steps_per_epoch(run: RunRecord) -> int:
    """Optimizer steps in one pass over the dataset's examples (at least 1)."""
    return max(1, examples(run) // run.plan.global_batch)


def examples(run: RunRecord) -> int:
    """``len(train_dataset)``: the packed sequences of one epoch (documents if unknown)."""
    return run.plan.samples_per_epoch or run.dataset.documents


def epoch_of(run: RunRecord, step: int) -> float:
    """The Trainer's fractional ``epoch`` after ``step`` optimizer steps, rounded to 2."""
    return round(step / steps_per_epoch(run), 2)


def export_lines(rec: ExportRecord) -> list[str]:
    """``save_pretrained``: the config, then one file or a sharded checkpoint with its index."""
    path = rec.path
    lines = [f"Configuration saved in {path}/config.json"]
    if len(rec.files) > 1:
        lines.append(
            f"The model is bigger than the maximum size per checkpoint (5GB) and is going to "
            f"be split in {len(rec.files)} checkpoint shards. You can find where each parameters "
            f"has been saved in the index located at {path}/model.safetensors.index.json."
        )
    else:
        lines.append(f"Model weights saved in {path}/model.safetensors")
    return lines


def _rate(seconds_per_it: float) -> str:
    """tqdm's rate: ``2.10it/s`` when faster than one per second, else ``24.31s/it``."""
    if not math.isfinite(seconds_per_it) or seconds_per_it <= 0:
        return "?it/s"
    if seconds_per_it < 1:
        return f"{1 / seconds_per_it:5.2f}it/s"
    return f"{seconds_per_it:5.2f}s/it"


def _loss(value: float) -> float:
    return round(value, 4) if finite(value) else float("nan")


class HfStyle(Style):
    """The HF Trainer: a dict per logging step, tqdm progress, eval dicts."""

    name: ClassVar[str] = "hf"
    example: ClassVar[str] = (
        "{'loss': 3.4121, 'grad_norm': 0.8421, 'learning_rate': 0.000285, 'epoch': 0.03}"
    )

    def __init__(self, *, width: int = 120, ascii_only: bool = False,
                 view: View = View.MERGED, rank: int = 0) -> None:  # fmt: skip
        super().__init__(width=width, ascii_only=ascii_only, view=view, rank=rank)
        self.start_attempt()

    def start_attempt(self) -> None:
        self.train_start: float | None = None  # the simulated time training (re)started
        self.train_end = 0.0  # the last step, evaluation or save of the training loop
        self.last: tuple[int, float] | None = None  # tqdm's last update (n, time)
        self.ema_s = float("nan")  # smoothed seconds per iteration
        self.ema_weight = 0.0

    def _update(self, n: int, t: float) -> None:
        """tqdm's smoothed rate: an EMA of time per iteration, bias-corrected."""
        if self.last is not None and n > self.last[0]:
            per_it = (t - self.last[1]) / (n - self.last[0])
            old = 0.0 if not self.ema_weight else self.ema_s * self.ema_weight
            self.ema_weight = TQDM_SMOOTHING + (1 - TQDM_SMOOTHING) * self.ema_weight
            self.ema_s = (TQDM_SMOOTHING * per_it + (1 - TQDM_SMOOTHING) * old) / self.ema_weight
        self.last = (n, t)

    def _bar(self, n: int, total: int, elapsed: float) -> str:
        remaining = (total - n) * self.ema_s if n < total else 0.0
        meta = f"| {n}/{total} [{duration(elapsed)}<{duration(remaining)}, {_rate(self.ema_s)}]"
        percent = f"{100 * n // total:3d}%|"
        width = max(MIN_BAR, self.width - len(percent) - len(meta) - 1)
        filled = width * n // total
        return f"{percent}{'█' * filled}{' ' * (width - filled)}{meta}"

    def _process_line(self, run: RunRecord) -> list[str]:
        """run_clm's ``logger.warning`` on every process (its basicConfig format, stdout)."""
        if self.view is not View.RANK:
            return []
        local = self.rank % run.nproc_per_node
        stamp = time.strftime("%m/%d/%Y %H:%M:%S", clock(run.start_time))
        return [
            f"{stamp} - WARNING - __main__ - Process rank: {local}, device: cuda:{local}, "
            f"n_gpu: 1, distributed training: {run.world_size > 1}, 16-bits training: "
            f"{run.plan.precision == 'fp16'}"
        ]

    def warnings(self, run: RunRecord) -> list[str]:
        """Gradient checkpointing's warnings, once per process at its first step."""
        return [USE_CACHE, *REENTRANT] if run.plan.recompute == "full" else []

    def lines(self, record: Record) -> list[str]:
        """Only the main process prints the Trainer's lines (every process its warning)."""
        lines = super().lines(record)
        if self.shows(0) or not lines:
            return lines
        return self._process_line(self.run) if isinstance(record, RunRecord) and self.run else []

    def preamble(self, run: RunRecord) -> list[str]:
        plan = run.plan
        epochs = math.ceil(plan.total_steps / steps_per_epoch(run))
        return [
            *self._process_line(run),
            "***** Running training *****",
            f"  Num examples = {examples(run):,}",
            f"  Num Epochs = {epochs:,}",
            f"  Instantaneous batch size per device = {plan.micro_batch}",
            f"  Total train batch size (w. parallel, distributed & accumulation) = "
            f"{plan.global_batch:,}",
            f"  Gradient Accumulation steps = {plan.grad_accum}",
            f"  Total optimization steps = {plan.total_steps:,}",
            f"  Number of trainable parameters = {run.model.params:,}",
        ]

    def step_line(self, run: RunRecord, step: StepRecord) -> list[str]:
        n = step.step
        if self.train_start is None:
            self.train_start = step.time - step.step_time_s
            self.last = (n - 1, self.train_start)
        self._update(n, step.time)
        self.train_end = step.time
        record = {
            "loss": _loss(step.loss),
            "grad_norm": step.grad_norm,
            "learning_rate": step.lr,
            "epoch": epoch_of(run, n),
        }
        progress = self._bar(n, step.total_steps, step.time - self.train_start)
        return [*event_lines(step), progress, str(record)]

    def eval_lines(self, run: RunRecord, rec: EvalRecord) -> list[str]:
        plan = run.plan
        self.train_end = max(self.train_end, rec.time)
        record = {
            "eval_loss": _loss(rec.val_loss),
            "eval_runtime": round(rec.eval_s, 4),
            "eval_samples_per_second": round(plan.eval_iters * plan.global_batch / rec.eval_s, 3),
            "eval_steps_per_second": round(plan.eval_iters / rec.eval_s, 3),
            "epoch": epoch_of(run, rec.step),
        }
        return [str(record)]

    def checkpoint_lines(self, run: RunRecord, rec: CheckpointRecord) -> list[str]:
        self.train_end = max(self.train_end, rec.time)
        path = f"{run.plan.checkpoint_dir}/checkpoint-{rec.step}"
        return [f"Configuration saved in {path}/config.json",
                f"Model weights saved in {path}/model.safetensors"]  # fmt: skip

    def export_lines(self, run: RunRecord, rec: ExportRecord) -> list[str]:
        return export_lines(rec)

    def phase_lines(self, run: RunRecord, rec: PhaseRecord) -> list[str]:
        plan = run.plan
        if rec.name is PhaseName.EVAL:
            return [
                "***** Running Evaluation *****",
                f"  Num examples = {plan.eval_iters * plan.global_batch:,}",
                f"  Batch size = {plan.micro_batch}",
            ]
        if rec.name is PhaseName.CHECKPOINT:
            return [f"Saving model checkpoint to {plan.checkpoint_dir}/checkpoint-{rec.step}"]
        if rec.name is PhaseName.RESTORE:
            return [
                "  Continuing training from checkpoint, will skip to saved global_step",
                f"  Continuing training from epoch {rec.step // steps_per_epoch(run)}",
                f"  Continuing training from global step {rec.step}",
            ]
        return []  # init and export: the Trainer prints nothing until the step / save lines

    def final_lines(self, run: RunRecord, rec: SummaryRecord) -> list[str]:
        """``train_runtime`` from training's start to its last step, evaluation or save (as
        the Trainer measures it), then tqdm's closing bar with the same elapsed time."""
        if rec.exit not in GRACEFUL_EXITS:
            return []
        start = self.train_start
        runtime = max(self.train_end - start, 1e-9) if start is not None else rec.sim_seconds
        steps, loss = rec.steps, rec.final_loss
        record = {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(steps * run.plan.global_batch / runtime, 3),
            "train_steps_per_second": round(steps / runtime, 3),
            "train_loss": loss if finite(loss) else float("nan"),
            "epoch": epoch_of(run, steps),
        }
        return [str(record), self._bar(steps, max(steps, run.plan.total_steps), runtime)]
