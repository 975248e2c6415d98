"""Megatron-LM's log (``--style megatron``): ``training_log``'s iteration line, the validation
block, the memory report and the checkpoint lines (``real-logs.md`` 2d).

Megatron prints the iteration line and the validation block through ``print_rank_last``
(the last global rank: ``[default7]:`` when tee'd), its set-up and checkpoint lines through
``print_rank_0``, and ``report_memory`` on every rank whose data-parallel rank is 0 (each
``[Rank N]``, after the first log interval and around the first three checkpoint saves).
The merged view shows rank 0's memory report only; the RANK view writes exactly what its rank
prints. Megatron has no exit line of its own at the end of a run (``exiting program at
iteration N`` belongs to ``--exit-interval``).
"""

from __future__ import annotations

from typing import ClassVar

from llmcluster.render.base import Style, View, event_lines, memory_gib, prefixed
from llmcluster.render.fmt import finite, iso, num
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

MEMORY_REPORT_STEP = 10  # "(after 10 iterations)": once, after the first log interval
MAX_CHECKPOINTS_MEMORY_REPORTED = 3  # training.py's MAX_NUM_CHECKPOINTS_MEMORY_REPORTED


def dp_rank(run: RunRecord, rank: int) -> int:
    """A global rank's data-parallel rank in Megatron's default order (tp fastest, then dp,
    then pp)."""
    return (rank // run.plan.tp) % run.plan.dp


class MegatronStyle(Style):
    """Megatron-LM (``training_log``, ``evaluate_and_print_results``, checkpointing)."""

    name: ClassVar[str] = "megatron"
    example: ClassVar[str] = (
        "[2026-11-22 14:03:07] iteration      120/     300 | consumed samples:        61440 | "
        "elapsed time per iteration (ms): 4870.3 | throughput per GPU (TFLOP/s/GPU): 426.3 | "
        "learning rate: 2.850000E-04 | global batch size:   512 | lm loss: 3.412100E+00 | "
        "loss scale: 1.0 | grad norm: 0.842 | number of skipped iterations:   0 | "
        "number of nan iterations:   0 |"
    )
    tee: ClassVar[bool] = True

    def start_attempt(self) -> None:
        self.checkpoints_reported = 0  # a (re)started process counts its reports afresh

    def prefix(self, run: RunRecord) -> str:
        return self.tee_prefix((run.world_size - 1) % run.nproc_per_node)

    def _last(self, run: RunRecord) -> bool:
        """print_rank_last prints on this view."""
        return self.shows(run.world_size - 1)

    def _memory(self, run: RunRecord, when: str) -> list[str]:
        """``report_memory``: rank 0's line (tee'd as local rank 0) when merged, this rank's
        when it is a data-parallel rank 0 in the RANK view."""
        rank = self.rank if self.view is View.RANK else 0
        if self.view is View.RANK and dp_rank(run, rank) != 0:
            return []
        allocated, peak, reserved = (1024 * gib for gib in memory_gib(run))
        return [
            f"{self.tee_prefix(0)}[Rank {rank}] {when} memory (MB) | allocated: {allocated:.2f} "
            f"| max allocated: {peak:.2f} | reserved: {reserved:.2f} | max reserved: "
            f"{reserved:.2f}"
        ]

    def preamble(self, run: RunRecord) -> list[str]:
        if not self.shows(0):
            return []
        plan, model, t = run.plan, run.model, run.start_time
        divisor = 128 * plan.tp
        padded = -(-model.vocab // divisor) * divisor
        local_params = int(model.params / (plan.tp * plan.pp))
        gb = plan.global_batch
        evals = plan.total_steps // plan.eval_interval + 1
        init_t = iso(t + plan.init_s)
        lines = [
            f"using world size: {run.world_size}, data-parallel size: {plan.dp}, "
            "context-parallel size: 1, hierarchical context-parallel sizes: None, "
            f"tensor-model-parallel size: {plan.tp}, pipeline-model-parallel size: {plan.pp}",
            f"> padded vocab (size: {model.vocab}) with {padded - model.vocab} dummy tokens "
            f"(new size: {padded})",
            "> initializing torch distributed ...",
            f"> initialized tensor model parallel with size {plan.tp}",
            f"> initialized pipeline model parallel with size {plan.pp}",
            f"> setting random seeds to {run.seed} ...",
            "> compiling dataset index builder ...",
            ">>> done with dataset index builder. Compilation time: 4.812 seconds",
            "> compiling and loading fused kernels ...",
            f"time to initialize megatron (seconds): {plan.init_s:.3f}",
            f"[after megatron is initialized] datetime: {init_t} ",
            "building GPT model ...",
            f" > number of parameters on (tensor, pipeline) model parallel rank (0, 0): "
            f"{local_params}",
            f"[after model, optimizer, and learning rate scheduler are built] datetime: {init_t} ",
            "> building train, validation, and test datasets ...",
            " > datasets target sizes (minimum size):",
            f"    train:      {plan.total_steps * gb}",
            f"    validation: {evals * plan.eval_iters * gb}",
            f"    test:       {plan.eval_iters * gb}",
            f"[after dataloaders are built] datetime: {init_t} ",
            "done with setup ...",
            "training ...",
            f"setting number of micro-batches to constant {plan.grad_accum}",
            f"[before the start of training step] datetime: {init_t} ",
        ]
        return prefixed(self.prefix(run), lines)

    def step_line(self, run: RunRecord, step: StepRecord) -> list[str]:
        plan = run.plan
        skipped = 1 if step.skipped else 0
        grad = "" if skipped else f"grad norm: {num(step.grad_norm, '.3f')} | "
        line = (
            f"[{iso(step.time)}] iteration {step.step:8d}/{step.total_steps:8d} | "
            f"consumed samples: {step.step * plan.global_batch:12d} | "
            f"elapsed time per iteration (ms): {1000 * step.step_time_s:.1f} | "
            f"throughput per GPU (TFLOP/s/GPU): {step.tflops_per_gpu:.1f} | "
            f"learning rate: {step.lr:.6E} | global batch size: {plan.global_batch:5d} | "
            f"lm loss: {num(step.loss, '.6E')} | loss scale: {step.loss_scale:.1f} | "
            f"{grad}number of skipped iterations: {skipped:3d} | "
            f"number of nan iterations: {0 if finite(step.loss) else 1:3d} |"
        )
        lines = prefixed(self.prefix(run), [*event_lines(step), line]) if self._last(run) else []
        if step.step == MEMORY_REPORT_STEP:
            lines += self._memory(run, f"(after {MEMORY_REPORT_STEP} iterations)")
        return lines

    def eval_lines(self, run: RunRecord, rec: EvalRecord) -> list[str]:
        if not self._last(run):
            return []
        text = (
            f" validation loss at iteration {rec.step} | lm loss value: "
            f"{num(rec.val_loss, '.6E')} | lm loss PPL: {num(rec.val_ppl, '.6E')} | "
        )
        rule = "-" * (len(text) + 1)
        return prefixed(self.prefix(run), [rule, text, rule])

    def checkpoint_lines(self, run: RunRecord, rec: CheckpointRecord) -> list[str]:
        plan = run.plan
        lines = [
            f"  [{iso(rec.time)}] successfully saved checkpoint from iteration "
            f"{rec.step:7d} to {plan.checkpoint_dir} [ t 1/{plan.tp}, p 1/{plan.pp} ]",
        ]
        lines = prefixed(self.prefix(run), lines) if self.shows(0) else []
        if self.view is View.RANK and self.checkpoints_reported < MAX_CHECKPOINTS_MEMORY_REPORTED:
            self.checkpoints_reported += 1
            lines += self._memory(run, f"(after save_checkpoint for iteration {rec.step})")
        return lines

    def export_lines(self, run: RunRecord, rec: ExportRecord) -> list[str]:
        return []  # the HF conversion is a separate tool; Megatron prints nothing for it

    def phase_lines(self, run: RunRecord, rec: PhaseRecord) -> list[str]:
        plan, step, t = run.plan, rec.step, iso(rec.time)
        if rec.name is PhaseName.EVAL:
            lines = [
                f"Evaluating on {plan.eval_iters * plan.global_batch} samples",
                f"Evaluating iter 1/{plan.eval_iters}",
            ]
        elif rec.name is PhaseName.CHECKPOINT:
            lines = [
                f"[{t}] saving checkpoint at iteration {step:7d} to {plan.checkpoint_dir} "
                "in torch_dist format"
            ]
        elif rec.name is PhaseName.RESTORE:
            lines = [
                f" loading checkpoint from {plan.checkpoint_dir} at iteration {step}",
                f"  successfully loaded checkpoint from {plan.checkpoint_dir} "
                f"[ t 1/{plan.tp}, p 1/{plan.pp} ] at iteration {step}",
            ]
        elif rec.name is PhaseName.EXPORT:
            lines = [f"[after training is done] datetime: {t} "]
        else:
            return []  # init: the preamble already shows Megatron's initialisation
        lines = prefixed(self.prefix(run), lines) if self.shows(0) else []
        if (
            rec.name is PhaseName.CHECKPOINT
            and self.view is View.RANK
            and self.checkpoints_reported < MAX_CHECKPOINTS_MEMORY_REPORTED
        ):
            lines = self._memory(run, f"(before save_checkpoint for iteration {step})") + lines
        return lines

    def final_lines(self, run: RunRecord, rec: SummaryRecord) -> list[str]:
        return []
