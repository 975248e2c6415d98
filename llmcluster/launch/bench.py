"""``llmcluster bench``: the bench workload on the local launch path."""

from __future__ import annotations

import dataclasses

from llmcluster.config import RunConfig
from llmcluster.launch.local import run_local
from llmcluster.setup import build_setup


def run_bench(config: RunConfig) -> int:
    """Run the sweep (the CLI has checked the settings and the machine's limits)."""
    plan = build_setup(config).plan
    named = dataclasses.replace(
        config, model=plan.model.name, gpu=plan.gpu.name, dataset=plan.dataset.name
    )
    return run_local(named, plan)
