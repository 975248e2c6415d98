"""Log styles (``--style``): the same records in the formats real trainers print.

- ``default``: a clean, timestamped trainer log with every headline number;
- ``megatron``: Megatron-LM's iteration line, validation block, memory report and
  checkpoint lines, printed (as Megatron does) by the last pipeline rank, tee'd
  by torchrun as ``[defaultN]:``;
- ``deepspeed``: DeepSpeed's ``log_dist`` step and throughput-timer lines;
- ``hf``: the HF Trainer's dict lines and tqdm progress.

Formats from ``shared/reference/real-logs.md`` sections 2d and 2e. Every number is
taken from a record; nothing is recomputed differently from what JSONL shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmcluster.render.fmt import (
    deepspeed_ts,
    duration,
    finite,
    human_bytes,
    human_count,
    iso,
    num,
)

OPTIMIZER_SHARE = 0.02  # of a step shown as the optimizer step in DeepSpeed's timer line


def rank_prefix(style: str, local_rank: int) -> str:
    """torchrun ``--tee 3`` prefix for a worker's lines (none for the default style)."""
    return "" if style == "default" else f"[default{local_rank}]:"


def _last_local_rank(run: dict[str, Any]) -> int:
    return (run["world_size"] - 1) % run["nproc_per_node"]


def _prefixed(prefix: str, lines: list[str]) -> list[str]:
    return [prefix + line for line in lines]


def _events(step: dict[str, Any]) -> list[str]:
    return [f"WARNING: {event['text']}" for event in step.get("events", [])]


def memory_gib(run: dict[str, Any]) -> tuple[float, float, float]:
    """(allocated, max allocated, reserved) GiB per GPU from the plan's memory budget.

    Between steps weights, gradients and optimizer state stay allocated; the peak adds
    the activations; the caching allocator holds the whole budget (overhead included).
    """
    mem = run["plan"]["memory"]
    allocated = mem["weights_gb"] + mem["grads_gb"] + mem["optimizer_gb"]
    return allocated, allocated + mem["activations_gb"], mem["total_gb"]


@dataclass(frozen=True)
class Style:
    """Base: the default style. Subclasses override what their tool prints differently."""

    name: str = "default"
    example: str = (
        "2026-11-22 14:03:07 | step 120/300 | loss 3.4121 | ppl 30.32 | lr 2.850e-04 | "
        "grad_norm 0.842 | tok/s 1.23M | step 4.87s | mfu 43.1%"
    )

    def prefix(self, run: dict[str, Any]) -> str:
        """The tee prefix of the rank that prints the training log."""
        return rank_prefix(self.name, 0)

    def preamble(self, run: dict[str, Any]) -> list[str]:
        """Model, tokenizer, data, parallelism and optimizer set-up."""
        model, data, plan, gpu = run["model"], run["dataset"], run["plan"], run["gpu"]
        t = iso(run["start_time"])
        mem = plan["memory"]
        lines = [
            f"{t} | world size {run['world_size']} ({run['nnodes']} nodes x "
            f"{run['nproc_per_node']} {gpu['name']}), master {run['master_addr']}:"
            f"{run['master_port']}, backend nccl {plan['versions']['nccl']}",
            f"{t} | model {model['name']} ({human_count(model['params'])} params, "
            f"{model['layers']} layers, hidden {model['hidden']}, heads {model['heads']}/"
            f"{model['kv_heads']} kv, context {model['context']})",
            f"{t} | tokenizer {model['tokenizer']}, vocab {model['vocab']}",
            f"{t} | dataset {data['name']} ({human_count(data['tokens'])} tokens, "
            f"{human_count(data['documents'])} documents)",
            f"{t} | parallelism {plan['strategy']} (dp {plan['dp']}, tp {plan['tp']}, "
            f"pp {plan['pp']}), {plan['precision']}, activation recompute {plan['recompute']}",
            f"{t} | batch {plan['global_batch']} x {plan['seq_len']} = "
            f"{human_count(plan['tokens_per_step'])} tokens/step (micro-batch "
            f"{plan['micro_batch']}, grad accumulation {plan['grad_accum']})",
            f"{t} | optimizer AdamW (b1 {plan['adam_beta1']}, b2 {plan['adam_beta2']}, wd "
            f"{plan['weight_decay']}), lr {plan['peak_lr']:.2e} -> {plan['min_lr']:.2e} "
            f"{plan['schedule']}, warmup {plan['warmup_steps']} steps, clip {plan['grad_clip']}",
            f"{t} | memory per GPU {mem['total_gb']:.1f} GiB of {gpu['memory_mib'] / 1024:.1f} "
            f"(weights {mem['weights_gb']:.1f}, grads {mem['grads_gb']:.1f}, optimizer "
            f"{mem['optimizer_gb']:.1f}, activations {mem['activations_gb']:.1f})",
            f"{t} | training {plan['total_steps']} steps, "
            f"{human_count(plan['total_tokens'])} tokens; eval every {plan['eval_interval']}, "
            f"checkpoint every {plan['checkpoint_interval']}; seed {run['seed']}",
        ]
        return _prefixed(self.prefix(run), lines)

    def step_line(self, run: dict[str, Any], step: dict[str, Any]) -> list[str]:
        """One step."""
        total = step["total_steps"]
        width = len(str(total))
        line = (
            f"{iso(step['time'])} | step {step['step']:>{width}}/{total} | "
            f"loss {num(step['loss'], '.4f')} | ppl {num(step['ppl'], '.2f')} | "
            f"lr {step['lr']:.3e} | grad_norm {num(step['grad_norm'], '.3f')} | "
            f"tok/s {human_count(step['tokens_per_s'])} | step {step['step_time_s']:.2f}s | "
            f"mfu {100 * step['mfu']:.1f}%"
        )
        return _prefixed(self.prefix(run), [*_events(step), line])

    def eval_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        """Validation results."""
        line = (
            f"{iso(rec['time'])} | eval  step {rec['step']} | val_loss "
            f"{num(rec['val_loss'], '.4f')} | val_ppl {num(rec['val_ppl'], '.2f')} | "
            f"{rec['eval_iters']} iters in {rec['eval_s']:.1f}s"
        )
        return _prefixed(self.prefix(run), [line])

    def checkpoint_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        """A saved checkpoint."""
        line = (
            f"{iso(rec['time'])} | saved checkpoint {rec['path']} ({rec['shards']} shards, "
            f"{human_bytes(rec['bytes_total'])}, {human_bytes(rec['bytes_per_rank'])}/rank) "
            f"in {rec['save_s']:.1f}s"
        )
        return _prefixed(self.prefix(run), [line])

    def export_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        """The final SafeTensors export."""
        files = rec["files"]
        lines = [
            f"{iso(rec['time'])} | exporting {len(files)} SafeTensors shard(s) to {rec['path']}"
        ]
        lines += [f"{iso(rec['time'])} |   {f['name']}  {human_bytes(f['bytes'])}" for f in files]
        lines.append(
            f"{iso(rec['time'])} | export done: {human_bytes(rec['bytes_total'])} in "
            f"{rec['export_s']:.1f}s"
        )
        return _prefixed(self.prefix(run), lines)

    def final_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        """What the framework prints when training ends (before the summary table)."""
        line = (
            f"{iso(rec['time'])} | training {rec['exit']} after {rec['steps']} steps, final loss "
            f"{num(rec['final_loss'], '.4f')}"
        )
        return _prefixed(self.prefix(run), [line])

    def phase_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        """A phase begins."""
        t, name, step = iso(rec["time"]), rec["name"], rec["step"]
        texts = {
            "init": f"initializing model, optimizer and data loaders (~{rec['expected_s']:.0f}s)",
            "eval": f"running validation at step {step} ({run['plan']['eval_iters']} iters)",
            "checkpoint": f"saving checkpoint at step {step} to {run['plan']['checkpoint_dir']}",
            "export": f"exporting final weights to {run['plan']['export_dir']}",
            "restore": f"loading checkpoint from step {step} ({run['plan']['checkpoint_dir']})",
        }
        return _prefixed(self.prefix(run), [f"{t} | {texts.get(name, name)}"])


@dataclass(frozen=True)
class MegatronStyle(Style):
    """Megatron-LM (``training_log``, ``evaluate_and_print_results``, checkpointing)."""

    name: str = "megatron"
    example: str = (
        "[2026-11-22 14:03:07] iteration      120/     300 | consumed samples:        61440 | "
        "elapsed time per iteration (ms): 4870.3 | throughput per GPU (TFLOP/s/GPU): 426.3 | "
        "learning rate: 2.850000E-04 | global batch size:   512 | lm loss: 3.412100E+00 | "
        "loss scale: 1.0 | grad norm: 0.842 | number of skipped iterations:   0 | "
        "number of nan iterations:   0 |"
    )

    def prefix(self, run: dict[str, Any]) -> str:
        return rank_prefix(self.name, _last_local_rank(run))

    def preamble(self, run: dict[str, Any]) -> list[str]:
        plan, model, t = run["plan"], run["model"], run["start_time"]
        divisor = 128 * plan["tp"]
        padded = -(-model["vocab"] // divisor) * divisor
        local_params = int(model["params"] / (plan["tp"] * plan["pp"]))
        gb = plan["global_batch"]
        evals = plan["total_steps"] // plan["eval_interval"] + 1
        init_t = t + plan["init_s"]
        lines = [
            f"using world size: {run['world_size']}, data-parallel size: {plan['dp']}, "
            "context-parallel size: 1, hierarchical context-parallel sizes: None, "
            f"tensor-model-parallel size: {plan['tp']}, pipeline-model-parallel size: {plan['pp']}",
            f"> padded vocab (size: {model['vocab']}) with {padded - model['vocab']} dummy tokens "
            f"(new size: {padded})",
            "> initializing torch distributed ...",
            f"> initialized tensor model parallel with size {plan['tp']}",
            f"> initialized pipeline model parallel with size {plan['pp']}",
            f"> setting random seeds to {run['seed']} ...",
            "> compiling dataset index builder ...",
            ">>> done with dataset index builder. Compilation time: 4.812 seconds",
            "> compiling and loading fused kernels ...",
            f"time to initialize megatron (seconds): {plan['init_s']:.3f}",
            f"[after megatron is initialized] datetime: {iso(init_t)} ",
            "building GPT model ...",
            f" > number of parameters on (tensor, pipeline) model parallel rank (0, 0): "
            f"{local_params}",
            f"[after model, optimizer, and learning rate scheduler are built] datetime: "
            f"{iso(init_t)} ",
            "> building train, validation, and test datasets ...",
            " > datasets target sizes (minimum size):",
            f"    train:      {plan['total_steps'] * gb}",
            f"    validation: {evals * plan['eval_iters'] * gb}",
            f"    test:       {plan['eval_iters'] * gb}",
            f"[after dataloaders are built] datetime: {iso(init_t)} ",
            "done with setup ...",
            "training ...",
            f"setting number of micro-batches to constant {plan['grad_accum']}",
            f"[before the start of training step] datetime: {iso(init_t)} ",
        ]
        return _prefixed(self.prefix(run), lines)

    def step_line(self, run: dict[str, Any], step: dict[str, Any]) -> list[str]:
        plan = run["plan"]
        skipped = 1 if step["skipped"] else 0
        grad = "" if skipped else f"grad norm: {num(step['grad_norm'], '.3f')} | "
        line = (
            f"[{iso(step['time'])}] iteration {step['step']:8d}/{step['total_steps']:8d} | "
            f"consumed samples: {step['step'] * plan['global_batch']:12d} | "
            f"elapsed time per iteration (ms): {1000 * step['step_time_s']:.1f} | "
            f"throughput per GPU (TFLOP/s/GPU): {step['tflops_per_gpu']:.1f} | "
            f"learning rate: {step['lr']:.6E} | global batch size: {plan['global_batch']:5d} | "
            f"lm loss: {num(step['loss'], '.6E')} | loss scale: {step['loss_scale']:.1f} | "
            f"{grad}number of skipped iterations: {skipped:3d} | "
            f"number of nan iterations: {0 if finite(step['loss']) else 1:3d} |"
        )
        lines = _prefixed(self.prefix(run), [*_events(step), line])
        if step["step"] == 10:  # printed by each data-parallel rank 0, so tee'd as local rank 0
            allocated, peak, reserved = (1024 * gib for gib in memory_gib(run))
            lines.append(
                f"{rank_prefix(self.name, 0)}[Rank 0] (after 10 iterations) memory (MB) | "
                f"allocated: {allocated:.2f} | max allocated: {peak:.2f} | reserved: "
                f"{reserved:.2f} | max reserved: {reserved:.2f}"
            )
        return lines

    def eval_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        text = (
            f" validation loss at iteration {rec['step']} | lm loss value: "
            f"{num(rec['val_loss'], '.6E')} | lm loss PPL: {num(rec['val_ppl'], '.6E')} | "
        )
        rule = "-" * (len(text) + 1)
        return _prefixed(self.prefix(run), [rule, text, rule])

    def checkpoint_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        plan = run["plan"]
        return _prefixed(
            self.prefix(run),
            [
                f"  [{iso(rec['time'])}] successfully saved checkpoint from iteration "
                f"{rec['step']:7d} to {plan['checkpoint_dir']} [ t 1/{plan['tp']}, "
                f"p 1/{plan['pp']} ]",
            ],
        )

    def phase_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        plan, step, t = run["plan"], rec["step"], iso(rec["time"])
        if rec["name"] == "eval":
            samples = plan["eval_iters"] * plan["global_batch"]
            lines = [f"Evaluating on {samples} samples"]
            lines.append(f"Evaluating iter 1/{plan['eval_iters']}")
        elif rec["name"] == "checkpoint":
            lines = [
                f"[{t}] saving checkpoint at iteration {step:7d} to {plan['checkpoint_dir']} "
                "in torch_dist format"
            ]
        elif rec["name"] == "restore":
            lines = [
                f" loading checkpoint from {plan['checkpoint_dir']} at iteration {step}",
                f"  successfully loaded checkpoint from {plan['checkpoint_dir']} "
                f"[ t 1/{plan['tp']}, p 1/{plan['pp']} ] at iteration {step}",
            ]
        elif rec["name"] == "init":
            return []  # the preamble already shows Megatron's initialisation
        elif rec["name"] == "export":
            lines = [f"[after training is done] datetime: {t} "]
        else:
            return super().phase_lines(run, rec)
        return _prefixed(self.prefix(run), lines)

    def final_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        return _prefixed(self.prefix(run), [f"exiting program at iteration {rec['steps']}"])


@dataclass(frozen=True)
class DeepSpeedStyle(Style):
    """DeepSpeed's ``log_dist`` lines (``[Rank 0] step=...``) and the throughput timer."""

    name: str = "deepspeed"
    example: str = (
        "[2026-11-22 14:03:07,123] [INFO] [logging.py:128:log_dist] [Rank 0] step=120, "
        "skipped=0, lr=[0.000285], mom=[(0.9, 0.95)]"
    )

    def _info(self, t: float, where: str, text: str) -> str:
        return f"[{deepspeed_ts(t)}] [INFO] [{where}] {text}"

    def preamble(self, run: dict[str, Any]) -> list[str]:
        plan, t = run["plan"], run["start_time"]
        optimizer = "DeepSpeedZeroOptimizer" if plan["zero_stage"] else "FusedAdam"
        lines = [
            self._info(t, "real_accelerator.py:219:get_accelerator",
                       "Setting ds_accelerator to cuda (auto detect)"),
            self._info(t, "comm.py:652:init_distributed", "cdb=None"),
            self._info(t, "comm.py:683:init_distributed",
                       "Initializing TorchBackend in DeepSpeed with backend nccl"),
            self._info(t + plan["init_s"], "logging.py:128:log_dist",
                       f"[Rank 0] DeepSpeed Final Optimizer = {optimizer}"),
            self._info(t + plan["init_s"], "logging.py:128:log_dist",
                       f"[Rank 0] DeepSpeed info: version=0.16.4, zero_stage="
                       f"{plan['zero_stage']}, train_micro_batch_size_per_gpu="
                       f"{plan['micro_batch']}, gradient_accumulation_steps={plan['grad_accum']}"),
            self._info(t + plan["init_s"], "config.py:999:print",
                       "DeepSpeedEngine configuration:"),
        ]  # fmt: skip
        return [*super().preamble(run), *_prefixed(self.prefix(run), lines)]

    def step_line(self, run: dict[str, Any], step: dict[str, Any]) -> list[str]:
        plan, t, n = run["plan"], step["time"], step["step"]
        allocated, peak, _ = memory_gib(run)
        skipped = "skipped" if step["skipped"] else ""
        step_ms = 1000 * step["step_time_s"]
        allreduce = min(step["collective"]["model_ms"], step_ms / 2)
        optimizer = OPTIMIZER_SHARE * step_ms
        compute = step_ms - allreduce - optimizer
        lines = _events(step)
        if step["skipped"] and plan["precision"] == "fp16":
            lines.append(self._info(t, "logging.py:128:log_dist",
                                    f"[Rank 0] Overflow detected. Skipping step. Attempted loss "
                                    f"scale: {2 * step['loss_scale']:.1f}, reducing to "
                                    f"{step['loss_scale']:.1f}"))  # fmt: skip
        lines += [
            self._info(t, "logging.py:128:log_dist",
                       f"[Rank 0] step={n}, skipped={1 if skipped else 0}, lr=[{step['lr']!r}], "
                       f"mom=[({plan['adam_beta1']}, {plan['adam_beta2']})]"),
            self._info(t, "timer.py:264:stop",
                       f"epoch=0/micro_step={n * plan['grad_accum']}/global_step={n}, "
                       f"RunningAvgSamplesPerSec={step['samples_per_s']!r}, "
                       f"CurrSamplesPerSec={step['samples_per_s']!r}, "
                       f"MemAllocated={allocated:.2f}GB, MaxMemAllocated={peak:.2f}GB"),
            self._info(t, "logging.py:128:log_dist",
                       f"[Rank 0] time (ms) | fwd: {compute / 3:.2f} | bwd: "
                       f"{2 * compute / 3 + allreduce:.2f} | bwd_inner: {2 * compute / 3:.2f} | "
                       f"bwd_allreduce: {allreduce:.2f} | step: {optimizer:.2f}"),
            f"epoch 0 | step {n}/{step['total_steps']} | loss {num(step['loss'], '.4f')} | "
            f"ppl {num(step['ppl'], '.2f')} | grad_norm {num(step['grad_norm'], '.3f')} | "
            f"TFLOPs {step['tflops_per_gpu']:.1f}",
        ]  # fmt: skip
        return _prefixed(self.prefix(run), lines)

    def checkpoint_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        t, tag = rec["time"], f"global_step{rec['step']}"
        lines = [
            self._info(t, "logging.py:128:log_dist",
                       f"[Rank 0] [Torch] Checkpoint {tag} is about to be saved!"),
            self._info(t, "logging.py:128:log_dist",
                       f"[Rank 0] Saving model checkpoint: {run['plan']['checkpoint_dir']}/{tag}/"
                       "mp_rank_00_model_states.pt"),
            self._info(t, "logging.py:128:log_dist",
                       f"[Rank 0] [Torch] Checkpoint {tag} is ready now!"),
        ]  # fmt: skip
        return _prefixed(self.prefix(run), lines)


@dataclass(frozen=True)
class HfStyle(Style):
    """The HF Trainer: a dict per logging step, tqdm progress, eval dicts."""

    name: str = "hf"
    example: str = "{'loss': 3.4121, 'grad_norm': 0.8421, 'learning_rate': 0.000285, 'epoch': 0.0}"

    def prefix(self, run: dict[str, Any]) -> str:
        return ""

    def _epoch(self, run: dict[str, Any], step: int) -> float:
        plan = run["plan"]
        return round(step * plan["tokens_per_step"] / max(1, run["dataset"]["tokens"]), 2)

    def preamble(self, run: dict[str, Any]) -> list[str]:
        plan = run["plan"]
        examples = run["dataset"]["documents"]
        return [
            "***** Running training *****",
            f"  Num examples = {examples:,}",
            "  Num Epochs = 1",
            f"  Instantaneous batch size per device = {plan['micro_batch']}",
            f"  Total train batch size (w. parallel, distributed & accumulation) = "
            f"{plan['global_batch']:,}",
            f"  Gradient Accumulation steps = {plan['grad_accum']}",
            f"  Total optimization steps = {plan['total_steps']:,}",
            f"  Number of trainable parameters = {run['model']['params']:,}",
        ]

    def step_line(self, run: dict[str, Any], step: dict[str, Any]) -> list[str]:
        n, total = step["step"], step["total_steps"]
        elapsed = step["time"] - run.get("train_start", step["time"] - n * step["step_time_s"])
        bar_width = 10
        filled = int(bar_width * n / total)
        bar = "█" * filled + " " * (bar_width - filled)
        progress = (
            f"{100 * n // total:3d}%|{bar}| {n}/{total} [{duration(elapsed)}<"
            f"{duration((total - n) * step['step_time_s'])}, {step['step_time_s']:5.2f}s/it]"
        )
        record = {
            "loss": round(step["loss"], 4) if finite(step["loss"]) else float("nan"),
            "grad_norm": step["grad_norm"],
            "learning_rate": step["lr"],
            "epoch": self._epoch(run, n),
        }
        return [*_events(step), progress, str(record)]

    def eval_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        plan = run["plan"]
        samples = plan["eval_iters"] * plan["global_batch"]
        record = {
            "eval_loss": round(rec["val_loss"], 4) if finite(rec["val_loss"]) else float("nan"),
            "eval_runtime": round(rec["eval_s"], 4),
            "eval_samples_per_second": round(samples / rec["eval_s"], 3),
            "eval_steps_per_second": round(plan["eval_iters"] / rec["eval_s"], 3),
            "epoch": self._epoch(run, rec["step"]),
        }
        return [str(record)]

    def final_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        runtime, steps = max(rec["sim_seconds"], 1e-9), rec["steps"]
        loss = rec["final_loss"]
        record = {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(steps * run["plan"]["global_batch"] / runtime, 3),
            "train_steps_per_second": round(steps / runtime, 3),
            "train_loss": loss if finite(loss) else float("nan"),
            "epoch": self._epoch(run, steps),
        }
        return [str(record)]

    def checkpoint_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        path = f"{run['plan']['checkpoint_dir']}/checkpoint-{rec['step']}"
        return [f"Saving model checkpoint to {path}", f"Configuration saved in {path}/config.json"]

    def export_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        path, files = rec["path"], rec["files"]
        lines = [f"Configuration saved in {path}/config.json"]
        if len(files) > 1:
            lines.append(
                f"The model is bigger than the maximum size per checkpoint (5GB) and is going to "
                f"be split in {len(files)} checkpoint shards. You can find where each parameters "
                f"has been saved in the index located at {path}/model.safetensors.index.json."
            )
        else:
            lines.append(f"Model weights saved in {path}/model.safetensors")
        return lines

    def phase_lines(self, run: dict[str, Any], rec: dict[str, Any]) -> list[str]:
        if rec["name"] == "eval":
            plan = run["plan"]
            return [
                "***** Running Evaluation *****",
                f"  Num examples = {plan['eval_iters'] * plan['global_batch']:,}",
                f"  Batch size = {plan['micro_batch']}",
            ]
        if rec["name"] in ("init", "checkpoint"):
            return []  # the Trainer prints nothing until the step / save lines
        return super().phase_lines(run, rec)


STYLES: dict[str, Style] = {
    "default": Style(),
    "megatron": MegatronStyle(),
    "deepspeed": DeepSpeedStyle(),
    "hf": HfStyle(),
}
