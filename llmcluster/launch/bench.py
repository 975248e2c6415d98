"""``llmcluster bench``: the bench workload on the local launch path."""

from __future__ import annotations

import dataclasses

from llmcluster.config import RunConfig
from llmcluster.control.limits import check_capacity
from llmcluster.launch.local import run_local
from llmcluster.sim.faults import build_setup


def run_bench(config: RunConfig) -> int:
    """Check the machine can hold the ranks (ConfigError if not), then run the sweep."""
    check_capacity(config.ranks, config.nnodes)
    plan = build_setup(config).plan
    named = dataclasses.replace(
        config, model=plan.model.name, gpu=plan.gpu.name, dataset=plan.dataset.name
    )
    return run_local(named, plan)
