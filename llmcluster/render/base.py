"""The default log style, and the base every framework style (``--style``) builds on.

A style is a stateful renderer made once per display (``styles.make_style``): it keeps the
run record and whatever a real tool keeps between its lines (a running average, when
training started, the last timestamp printed) and turns each record into the lines that
tool prints. The default style is llmcluster's own clean, timestamped log with every
headline number, the GPU grid and the summary box; the framework styles print only what
the framework, torchrun, NCCL or nvidia-smi print, each line with its torchrun prefix.
A renderer writes one ``View``: the merged log rank 0 shows, or (with torchrun's log options)
rank 0's torchrun/NCCL lines and each rank's own framework lines (``shows(rank)`` says whether
a line printed by ``rank`` belongs to this view).
Every number comes from a record; nothing is recomputed differently from what JSONL shows.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, ClassVar

from llmcluster.render.fmt import (
    ascii_safe,
    human_bytes,
    human_count,
    iso,
    num,
    plural,
    tee_prefix,
)
from llmcluster.render.grid import grid_lines
from llmcluster.render.launch import gpu_detect_lines, launcher_lines
from llmcluster.render.nccl import merged_init_lines
from llmcluster.render.report import (
    failure_lines,
    interrupt_lines,
    restart_lines,
    summary_lines,
)
from llmcluster.render.smi import smi_lines
from llmcluster.wire.records import (
    CheckpointRecord,
    EvalRecord,
    ExportRecord,
    FailureRecord,
    LogRecord,
    PhaseName,
    PhaseRecord,
    RanksRecord,
    Record,
    RestartRecord,
    RunRecord,
    StepRecord,
    SummaryRecord,
)

GRID_EVERY_STEPS = 10
FRAMEWORK_RECORDS = (StepRecord, PhaseRecord, EvalRecord, CheckpointRecord, ExportRecord)


class View(Enum):
    """Whose lines a renderer writes.

    ``MERGED``: rank 0 shows the whole job's log, each framework line with the torchrun prefix
    of the rank that prints it (no torchrun log option asked: llmcluster's classic view).
    With torchrun's log options every rank writes its own streams: rank 0's display is then
    the ``AGENT`` view (torchrun's, NCCL's and the run's own lines, no framework line) and each
    rank's training thread renders the ``RANK`` view (only what the framework prints on that
    rank, unprefixed: the real tee adds the prefix).
    """

    MERGED = "merged"
    AGENT = "agent"
    RANK = "rank"


def framework_view(style: str, *, makes_files: bool) -> View:
    """The display's view: AGENT when a framework style runs with per-rank log files."""
    return View.AGENT if makes_files and style != "default" else View.MERGED


def prefixed(prefix: str, lines: list[str]) -> list[str]:
    """``lines`` with a tee prefix."""
    return [prefix + line for line in lines]


def event_lines(step: StepRecord) -> list[str]:
    """What began at this step, as warnings."""
    return [f"WARNING: {event.text}" for event in step.events]


def memory_gib(run: RunRecord) -> tuple[float, float, float]:
    """(allocated, max allocated, reserved) GiB per GPU from the plan's memory budget.

    Between steps weights, gradients and optimizer state stay allocated; the peak adds
    the activations; the caching allocator holds the whole budget (overhead included).
    """
    mem = run.plan.memory
    allocated = mem.weights_gb + mem.grads_gb + mem.optimizer_gb
    return allocated, allocated + mem.activations_gb, mem.total_gb


class Style:
    """The base: the default style's formats; subclasses override what their tool prints."""

    name: ClassVar[str] = "default"
    example: ClassVar[str] = (
        "2026-11-22 14:03:07 | step 120/300 | loss 3.4121 | ppl 30.32 | lr 2.850e-04 | "
        "grad_norm 0.842 | tok/s 1.23M | step 4.87s | mfu 43.1%"
    )
    tee: ClassVar[bool] = False  # launched by torchrun --tee 3: worker lines get [defaultN]:
    explains: ClassVar[bool] = False  # adds llmcluster's own ``llmcluster:`` explanations

    def __init__(self, *, width: int = 120, ascii_only: bool = False,
                 view: View = View.MERGED, rank: int = 0) -> None:  # fmt: skip
        self.width, self.ascii_only = width, ascii_only
        self.view, self.rank = view, rank  # rank: whose stream the RANK view writes
        self.smi_every = 0  # node 0's nvidia-smi table every N steps (0: never)
        self.run: RunRecord | None = None
        self.failed_rank = -1  # the last failure's rank (its agent does not stop it again)

    # ---- the entry point -------------------------------------------------------------------
    def lines(self, record: Record) -> list[str]:
        """Everything this style prints for one record (ASCII only with ``ascii_only``)."""
        lines = self._dispatch(record)
        return [ascii_safe(line) for line in lines] if self.ascii_only else lines

    def _dispatch(self, record: Record) -> list[str]:
        view = self.view
        if isinstance(record, RunRecord):
            self.run = record
            self.start_attempt()
            if view is View.RANK:  # a (re)started worker process prints its set-up again
                return self.preamble(record)
            return self.run_lines(record)
        if isinstance(record, SummaryRecord):
            if view is View.AGENT:
                return interrupt_lines(self.run, record) if self.run else []
            if view is View.RANK:
                return self.final_lines(self.run, record) if self.run else []
            return self.summary(self.run, record)
        run = self.run
        if run is None:
            return []
        if view is View.AGENT and isinstance(record, FRAMEWORK_RECORDS):
            return []  # the ranks print them themselves
        if view is View.RANK and not isinstance(record, FRAMEWORK_RECORDS):
            return []  # torchrun's and the run's own lines are the display's
        handlers: dict[type, Callable[[RunRecord, Any], list[str]]] = {
            StepRecord: self.step_line,
            RanksRecord: self.ranks_lines,
            PhaseRecord: self.phase_lines,
            EvalRecord: self.eval_lines,
            CheckpointRecord: self.checkpoint_lines,
            ExportRecord: self.export_lines,
            FailureRecord: self.failure_lines,
            RestartRecord: self.restart_lines,
            LogRecord: self.log_lines,
        }
        handler = handlers.get(type(record))
        return handler(run, record) if handler else []

    # ---- shared by every style ---------------------------------------------------------------
    def tee_prefix(self, local_rank: int) -> str:
        """The prefix torchrun gives a worker's lines in this style's merged view ('' when
        each rank writes its own stream: the real tee adds it)."""
        return tee_prefix(local_rank) if self.tee and self.view is View.MERGED else ""

    def shows(self, rank: int) -> bool:
        """Whether this renderer writes the lines ``rank`` prints (every rank's when merged)."""
        return self.view is not View.RANK or self.rank == rank

    def warnings(self, run: RunRecord) -> list[str]:
        """What this view's rank warns on its stderr as training starts (the RANK view)."""
        return []

    def prefix(self, run: RunRecord) -> str:
        """The prefix of the rank that prints the training log."""
        return self.tee_prefix(0)

    def start_attempt(self) -> None:
        """A (re)started worker group: forget per-process state (subclasses keep some)."""

    def run_lines(self, run: RunRecord) -> list[str]:
        """torchrun's launch, NCCL's init on rank 0, nvidia-smi, then the framework set-up."""
        nccl = prefixed(self.tee_prefix(0), merged_init_lines(run, 0))
        if run.attempt:  # a restarted worker group: the new communicator only
            return nccl
        preamble = self.preamble(run) if self.view is View.MERGED else []
        return [*launcher_lines(run), *nccl, *gpu_detect_lines(run), *preamble]

    def failure_lines(self, run: RunRecord, rec: FailureRecord) -> list[str]:
        """torchrun and NCCL reporting a dead rank."""
        self.failed_rank = rec.rank
        return failure_lines(run, rec, tee=self.tee, explain=self.explains)

    def restart_lines(self, run: RunRecord, rec: RestartRecord) -> list[str]:
        """torchrun restarting the worker group."""
        return restart_lines(run, rec, failed_rank=self.failed_rank, explain=self.explains)

    def log_lines(self, run: RunRecord, rec: LogRecord) -> list[str]:
        """A warning or error from the run."""
        return prefixed(self.prefix(run), [f"{rec.level}: {rec.text}"])

    def summary(self, run: RunRecord | None, rec: SummaryRecord) -> list[str]:
        """The end of the run: the framework's closing lines; the default style adds the box."""
        if run is None:
            return []
        return [*interrupt_lines(run, rec), *self.final_lines(run, rec)]

    # ---- the default style's own lines --------------------------------------------------------
    def preamble(self, run: RunRecord) -> list[str]:
        """Model, tokenizer, data, parallelism and optimizer set-up."""
        model, data, plan, gpu = run.model, run.dataset, run.plan, run.gpu
        t, mem = iso(run.start_time), plan.memory
        lines = [
            f"{t} | world size {run.world_size} ({plural(run.nnodes, 'node')} x "
            f"{run.nproc_per_node} {gpu.name}), master {run.master_addr}:{run.master_port}, "
            f"backend nccl {plan.versions['nccl']}",
            f"{t} | model {model.name} ({human_count(model.params)} params, "
            f"{plural(model.layers, 'layer')}, hidden {model.hidden}, heads {model.heads}/"
            f"{model.kv_heads} kv, context {model.context})",
            f"{t} | tokenizer {model.tokenizer}, vocab {model.vocab}",
            f"{t} | dataset {data.name} ({human_count(data.tokens)} tokens, "
            f"{human_count(data.documents)} documents)",
            f"{t} | parallelism {plan.strategy} (dp {plan.dp}, tp {plan.tp}, pp {plan.pp}), "
            f"{plan.precision}, activation recompute {plan.recompute}",
            f"{t} | batch {plan.global_batch} x {plan.seq_len} = "
            f"{human_count(plan.tokens_per_step)} tokens/step (micro-batch {plan.micro_batch}, "
            f"grad accumulation {plan.grad_accum})",
            f"{t} | optimizer AdamW (b1 {plan.adam_beta1}, b2 {plan.adam_beta2}, wd "
            f"{plan.weight_decay}), lr {plan.peak_lr:.2e} -> {plan.min_lr:.2e} {plan.schedule}, "
            f"warmup {plural(plan.warmup_steps, 'step')}, clip {plan.grad_clip}",
            f"{t} | memory per GPU {mem.total_gb:.1f} GiB of {gpu.memory_mib / 1024:.1f} "
            f"(weights {mem.weights_gb:.1f}, grads {mem.grads_gb:.1f}, optimizer "
            f"{mem.optimizer_gb:.1f}, activations {mem.activations_gb:.1f})",
            f"{t} | training {plural(plan.total_steps, 'step')}, "
            f"{human_count(plan.total_tokens)} tokens; eval every {plan.eval_interval}, "
            f"checkpoint every {plan.checkpoint_interval}; seed {run.seed}",
        ]
        return prefixed(self.prefix(run), lines)

    def step_line(self, run: RunRecord, step: StepRecord) -> list[str]:
        """One step."""
        total = step.total_steps
        line = (
            f"{iso(step.time)} | step {step.step:>{len(str(total))}}/{total} | "
            f"loss {num(step.loss, '.4f')} | ppl {num(step.ppl, '.2f')} | lr {step.lr:.3e} | "
            f"grad_norm {num(step.grad_norm, '.3f')} | tok/s {human_count(step.tokens_per_s)} | "
            f"step {step.step_time_s:.2f}s | mfu {100 * step.mfu:.1f}%"
        )
        return prefixed(self.prefix(run), [*event_lines(step), line])

    def ranks_lines(self, run: RunRecord, rec: RanksRecord) -> list[str]:
        """Per-GPU telemetry: no framework prints it; ``--smi-every N``: rank 0's job shells
        out to ``nvidia-smi`` every N steps (its node's table, in rank 0's stream)."""
        if not self.smi_every or rec.phase is not None or rec.step % self.smi_every:
            return []
        return prefixed(self.tee_prefix(0), smi_lines(run, rec, 0))

    def eval_lines(self, run: RunRecord, rec: EvalRecord) -> list[str]:
        """Validation results."""
        line = (
            f"{iso(rec.time)} | eval  step {rec.step} | val_loss {num(rec.val_loss, '.4f')} | "
            f"val_ppl {num(rec.val_ppl, '.2f')} | {plural(rec.eval_iters, 'iter')} in "
            f"{rec.eval_s:.1f}s"
        )
        return prefixed(self.prefix(run), [line])

    def checkpoint_lines(self, run: RunRecord, rec: CheckpointRecord) -> list[str]:
        """A saved checkpoint."""
        line = (
            f"{iso(rec.time)} | saved checkpoint {rec.path} ({plural(rec.shards, 'shard')}, "
            f"{human_bytes(rec.bytes_total)}, {human_bytes(rec.bytes_per_rank)}/rank) in "
            f"{rec.save_s:.1f}s"
        )
        return prefixed(self.prefix(run), [line])

    def export_lines(self, run: RunRecord, rec: ExportRecord) -> list[str]:
        """The final SafeTensors export."""
        t = iso(rec.time)
        lines = [f"{t} | exporting {plural(len(rec.files), 'SafeTensors shard')} to {rec.path}"]
        lines += [f"{t} |   {f.name}  {human_bytes(f.bytes)}" for f in rec.files]
        lines.append(f"{t} | export done: {human_bytes(rec.bytes_total)} in {rec.export_s:.1f}s")
        return prefixed(self.prefix(run), lines)

    def final_lines(self, run: RunRecord, rec: SummaryRecord) -> list[str]:
        """What the framework prints when training ends."""
        line = (
            f"{iso(rec.time)} | training {rec.exit} after {plural(rec.steps, 'step')}, final "
            f"loss {num(rec.final_loss, '.4f')}"
        )
        return prefixed(self.prefix(run), [line])

    def phase_lines(self, run: RunRecord, rec: PhaseRecord) -> list[str]:
        """A phase begins."""
        plan, step = run.plan, rec.step
        texts = {
            PhaseName.INIT: f"initializing model, optimizer and data loaders "
            f"(~{rec.expected_s:.0f}s)",
            PhaseName.EVAL: f"running validation at step {step} "
            f"({plural(plan.eval_iters, 'iter')})",
            PhaseName.CHECKPOINT: f"saving checkpoint at step {step} to {plan.checkpoint_dir}",
            PhaseName.EXPORT: f"exporting final weights to {plan.export_dir}",
            PhaseName.RESTORE: f"loading checkpoint from step {step} ({plan.checkpoint_dir})",
        }
        return prefixed(self.prefix(run), [f"{iso(rec.time)} | {texts[rec.name]}"])


class DefaultStyle(Style):
    """llmcluster's own log: the base lines, explanations, the GPU grid and the summary box."""

    explains: ClassVar[bool] = True

    def ranks_lines(self, run: RunRecord, rec: RanksRecord) -> list[str]:
        """The GPU grid at step 1 and every ``GRID_EVERY_STEPS`` steps."""
        smi = super().ranks_lines(run, rec)
        if rec.phase is not None or (rec.step % GRID_EVERY_STEPS and rec.step != 1):
            return smi
        return [*grid_lines(run, rec, width=self.width, ascii_only=self.ascii_only), *smi]

    def summary(self, run: RunRecord | None, rec: SummaryRecord) -> list[str]:
        table = summary_lines(run, rec, width=self.width, ascii_only=self.ascii_only)
        return table if run is None else [*super().summary(run, rec), *table]
