"""The default pick of GPU, model and dataset: combinations a practitioner would run.

A team picks the model for the hardware it has (it must fit, keep the
communication mostly hidden and take seconds, not minutes, per step), and the
corpus for the model: a code model trains on code and a general model on text;
nobody pretrains on fine-tuning chat data; the corpus holds at least ~20
tokens per parameter (Chinchilla), except TinyStories-scale data, which exists
for models of a few hundred million parameters and less. Satirical models train
on anything (they are a joke, consistently).
"""

from __future__ import annotations

import numpy as np

from llmcluster.sim.catalog import Catalog, DatasetSpec, GpuSpec, ModelSpec
from llmcluster.sim.layout import best_layout

GPU_WEIGHTS = {"H100-SXM": 8, "A100-SXM-80GB": 4, "H200-SXM": 3, "B200": 2, "MI300X": 1}
TOKENS_PER_PARAM = 20  # Chinchilla's compute-optimal ratio
SMALL_DATA_MAX_PARAMS = 200e6  # TinyStories-scale corpora are for models this small
MIN_STEP_S = 1.0
KIND_WEIGHTS = {"web": 3.0, "multilingual": 1.5}  # others 1


def sensible(model: ModelSpec, dataset: DatasetSpec) -> bool:
    """Would a practitioner pretrain ``model`` on ``dataset``?"""
    if model.humorous:  # anything, but a code model's joke is still about code
        return model.domain != "code" or dataset.kind == "code"
    if dataset.humorous or dataset.kind == "chat":
        return False
    if (model.domain == "code") != (dataset.kind == "code"):
        return False
    if dataset.kind == "stories":
        return model.params <= SMALL_DATA_MAX_PARAMS
    return dataset.tokens >= TOKENS_PER_PARAM * model.params


def pick_gpu(catalog: Catalog, rng: np.random.Generator) -> GpuSpec:
    """A GPU, weighted by how common it is in training clusters."""
    weights = np.array([GPU_WEIGHTS.get(g.name, 0.5) for g in catalog.gpus], dtype=float)
    return catalog.gpus[int(rng.choice(len(catalog.gpus), p=weights / weights.sum()))]


def _runnable(model: ModelSpec, gpu: GpuSpec, world_size: int, ppn: int, min_step_s: float) -> bool:
    best = best_layout(model, gpu, world_size, ppn)
    return best is not None and best.exposed_fraction < 0.25 and min_step_s <= best.step_s <= 60.0


def pick_model(
    catalog: Catalog,
    gpu: GpuSpec,
    world_size: int,
    ppn: int,
    rng: np.random.Generator,
    dataset: DatasetSpec | None = None,
) -> ModelSpec | None:
    """A model a team would run on ``world_size`` x ``gpu`` (and on ``dataset`` if given:
    then a model that suits it, even a fast small one; when none does, any that runs well).
    Unprompted, steps take at least a second, so the demo is not a blur."""
    order = [catalog.models[int(i)] for i in rng.permutation(len(catalog.models))]
    humorous_turn = rng.random() < 0.2
    has_data = {m.name: any(sensible(m, d) for d in catalog.datasets) for m in order}
    # unprompted: this turn's kind of model; for a given dataset a model that suits it
    # (even a fast small one) of either kind, else any model that runs well
    passes = [(True, (humorous_turn,))]
    if dataset is not None:
        passes = [(True, (humorous_turn, not humorous_turn)), (False, (humorous_turn,))]
    for strict, turns in passes:
        for turn in turns:
            for model in order:
                if model.humorous != turn:
                    continue
                suits = sensible(model, dataset) if dataset is not None else has_data[model.name]
                min_step_s = 0.0 if dataset is not None and strict else MIN_STEP_S
                if (suits or not strict) and _runnable(model, gpu, world_size, ppn, min_step_s):
                    return model
    return None


def pick_dataset(catalog: Catalog, model: ModelSpec, rng: np.random.Generator) -> DatasetSpec:
    """A corpus for ``model`` (satirical models prefer satirical corpora)."""
    pool = [d for d in catalog.datasets if sensible(model, d)]
    if model.humorous:
        pool = [d for d in pool if d.humorous] or pool
    pool = pool or list(catalog.datasets)
    weights = np.array([KIND_WEIGHTS.get(d.kind, 1.0) for d in pool])
    return pool[int(rng.choice(len(pool), p=weights / weights.sum()))]
