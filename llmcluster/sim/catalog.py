"""The model, GPU and dataset catalogs from ``llmcluster/data`` as frozen dataclasses.

The JSON files are human-editable; ``load_catalog`` checks every entry against
the dataclass fields so a typo fails at start-up with the file and entry named,
not deep inside a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from typing import Any, TypeVar

DATASET_KINDS = ("web", "multilingual", "wiki", "academic", "books", "math", "synthetic",
                 "stories", "code", "forum", "chat")  # fmt: skip
MODEL_DOMAINS = ("general", "code")


class CatalogError(ValueError):
    """A catalog file is malformed (names the file and the entry)."""


@dataclass(frozen=True)
class ModelSpec:
    """A transformer's published architecture (``humorous`` ones are absurd but consistent)."""

    name: str
    family: str
    domain: str  # general | code: what it is pretrained on
    hf_id: str
    params: int
    active_params: int
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    context: int
    tied_embeddings: bool
    moe_experts: int
    moe_active: int
    activation: str
    norm: str
    tokenizer: str
    release: int
    humorous: bool


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator's datasheet figures (physics.md section 3)."""

    name: str
    aliases: tuple[str, ...]
    vendor: str
    arch: str
    smi_name: str
    memory_gb: float
    memory_mib: int
    mem_bw_gbs: float
    bf16_tflops: float
    bf16_supported: bool
    tdp_w: float
    idle_w: float
    nvlink_gbs: float
    intra_node_link: str
    nic_gbs: float
    nic_name: str
    max_operating_c: float
    slowdown_c: float
    shutdown_c: float
    max_clock_mhz: int
    base_clock_mhz: int
    sm_count: int
    cuda_cc: str
    gpus_per_node: int
    precision: str


@dataclass(frozen=True)
class DatasetSpec:
    """A training corpus (real, or satirical when ``humorous``)."""

    name: str
    hf_id: str
    tokens: int
    documents: int
    languages: str
    kind: str  # web, code, stories ...: sets the loss floor (sim/data.py)
    license: str
    humorous: bool
    description: str


@dataclass(frozen=True)
class HostPattern:
    """A node host-name pattern and the GPUs it names (empty: any GPU)."""

    pattern: str
    gpus: tuple[str, ...] = ()

    def fits(self, gpu_name: str) -> bool:
        """Whether a cluster of ``gpu_name`` nodes could be called this."""
        return not self.gpus or gpu_name.startswith(self.gpus)


@dataclass(frozen=True)
class Catalog:
    """Everything the simulation can pick from."""

    models: tuple[ModelSpec, ...]
    gpus: tuple[GpuSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    hostname_patterns: tuple[HostPattern, ...]

    def model(self, name: str) -> ModelSpec:
        """The model called ``name`` (case-insensitive)."""
        return _find(self.models, name, "model")

    def gpu(self, name: str) -> GpuSpec:
        """The GPU called ``name`` or one of its aliases (case-insensitive)."""
        return _find(self.gpus, name, "GPU")

    def dataset(self, name: str) -> DatasetSpec:
        """The dataset called ``name`` (case-insensitive)."""
        return _find(self.datasets, name, "dataset")


Spec = TypeVar("Spec", ModelSpec, GpuSpec, DatasetSpec)


def _names(entry: Any) -> list[str]:
    return [entry.name.lower(), *(a.lower() for a in getattr(entry, "aliases", ()))]


def _find(entries: tuple[Spec, ...], name: str, what: str) -> Spec:
    wanted = name.strip().lower()
    for entry in entries:
        if wanted in _names(entry):
            return entry
    close = [e.name for e in entries if wanted and wanted in e.name.lower()][:5]
    hint = f" (did you mean {', '.join(close)}?)" if close else " (see llmcluster --list)"
    raise KeyError(f"unknown {what} {name!r}{hint}")


def _build(cls: type[Spec], entry: Any, source: str) -> Spec:
    if not isinstance(entry, dict):
        raise CatalogError(f"{source}: every entry must be an object, got {entry!r:.60}")
    wanted = {f.name: f for f in fields(cls)}
    missing = sorted(set(wanted) - set(entry))
    if missing:
        raise CatalogError(f"{source}: entry {entry.get('name')!r} lacks {', '.join(missing)}")
    values = {}
    for key, spec_field in wanted.items():
        value = entry[key]
        if spec_field.type in ("int", "float") and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise CatalogError(f"{source}: {entry['name']!r} field {key} must be a number")
        if spec_field.type == "int":
            value = int(value)
        elif spec_field.type == "float":
            value = float(value)
        elif spec_field.type == "tuple[str, ...]":
            value = tuple(str(v) for v in value)
        values[key] = value
    allowed = {"kind": DATASET_KINDS, "domain": MODEL_DOMAINS}
    for key, choices in allowed.items():
        if key in values and values[key] not in choices:
            raise CatalogError(f"{source}: {entry['name']!r} field {key} must be one of "
                               f"{', '.join(choices)}")  # fmt: skip
    return cls(**values)


def _read_json(name: str) -> list[Any]:
    text = resources.files("llmcluster.data").joinpath(name).read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{name}: not valid JSON ({exc})") from None
    entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CatalogError(f"{name}: expected an object with a non-empty 'entries' list")
    return entries


def _read_patterns(name: str, gpu_names: tuple[str, ...]) -> tuple[HostPattern, ...]:
    text = resources.files("llmcluster.data").joinpath(name).read_text(encoding="utf-8")
    patterns = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pattern, *gpus = line.split()
        unknown = [g for g in gpus if not any(n.startswith(g) for n in gpu_names)]
        if unknown:
            raise CatalogError(f"{name}: {pattern}: no GPU called {unknown[0]}*")
        patterns.append(HostPattern(pattern, tuple(gpus)))
    return tuple(patterns)


@cache
def load_catalog() -> Catalog:
    """Read and check the catalogs shipped in ``llmcluster/data`` (cached per process)."""
    gpus = tuple(_build(GpuSpec, e, "gpus.json") for e in _read_json("gpus.json"))
    return Catalog(
        models=tuple(_build(ModelSpec, e, "models.json") for e in _read_json("models.json")),
        gpus=gpus,
        datasets=tuple(
            _build(DatasetSpec, e, "datasets.json") for e in _read_json("datasets.json")
        ),
        hostname_patterns=_read_patterns("hostnames.txt", tuple(g.name for g in gpus)),
    )
