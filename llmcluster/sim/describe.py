"""The plan as the ``run`` output record shows it: every derived figure, for auditing."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from llmcluster.sim.data import epoch_at, samples_per_epoch
from llmcluster.sim.phases import eval_time_s
from llmcluster.sim.runplan import RunPlan
from llmcluster.sim.throughput import step_time_model_s


def describe_plan(plan: RunPlan) -> dict[str, Any]:
    """The plan as the ``run`` record shows it (model, gpu, dataset, plan)."""
    model, gpu, layout = plan.model, plan.gpu, plan.layout
    memory = {**asdict(plan.memory), "total_gb": plan.memory.total_gb}
    return {
        "model": asdict(model),
        "gpu": {**asdict(gpu), "aliases": list(gpu.aliases)},
        "dataset": asdict(plan.dataset),
        "plan": {
            "total_steps": plan.total_steps,
            "seq_len": layout.seq_len,
            "micro_batch": layout.micro_batch,
            "grad_accum": layout.grad_accum,
            "global_batch": plan.global_batch,
            "tokens_per_step": plan.tokens_per_step,
            "dp": layout.dp,
            "tp": layout.tp,
            "pp": layout.pp,
            "strategy": plan.strategy,
            "zero_stage": layout.zero_stage,
            "recompute": layout.recompute,
            "precision": plan.precision,
            "peak_lr": plan.peak_lr,
            "min_lr": plan.min_lr,
            "warmup_steps": plan.warmup_steps,
            "schedule": plan.schedule,
            "decay_start": plan.decay_start,
            "weight_decay": 0.1,
            "grad_clip": 1.0,
            "adam_beta1": 0.9,
            "adam_beta2": 0.95,
            "adam_eps": 1e-8,
            "eval_interval": plan.eval_interval,
            "eval_iters": plan.eval_iters,
            "checkpoint_interval": plan.checkpoint_interval,
            "checkpoint_dir": plan.checkpoint_dir,
            "export_dir": plan.export_dir,
            "total_tokens": plan.tokens_per_step * plan.total_steps,
            "samples_per_epoch": samples_per_epoch(plan),
            "epochs": epoch_at(plan, plan.total_steps),
            "flops_per_token": plan.flops_per_token,
            "mfu_target": plan.mfu_target,
            "init_s": plan.init_s,
            "step_time_model_s": step_time_model_s(plan),
            "eval_s": eval_time_s(plan),
            "memory": memory,
            "mem_spread": plan.mem_spread,
            "grad_bucket_bytes": plan.grad_bucket_bytes,
            "versions": dict(plan.versions),
            "node_names": list(plan.node_names),
            "events_planned": len(plan.events),
        },
    }
