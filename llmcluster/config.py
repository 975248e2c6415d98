"""Run configuration: one frozen dataclass built once by the CLI and passed down explicitly.

Also holds the small parsers the CLI shares (durations like ``2m30s``) and the
validation that does not need the simulation catalog.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

ALGORITHMS = ("ring", "tree", "hierarchical")
FORMATS = ("log", "jsonl")
UIS = ("auto", "live", "log")
STYLE_NAMES = ("default", "megatron", "deepspeed", "hf")
MAX_RANKS = 4096
SILENCE_SCALE_RANKS = 256
TARGET_WALL_STEP_S = 0.5  # --speed auto: a demo shows a step about every half second

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class ConfigError(ValueError):
    """A user-facing, one-line configuration error (the CLI exits 2 with it)."""


def parse_duration(text: str) -> float:
    """Parse ``90``, ``30s``, ``2m30s``, ``1h``, ``250ms`` into seconds (> 0)."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        pos, seconds = 0, 0.0
        scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
        for match in _DURATION.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * scale[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ConfigError(f"invalid duration {text!r} (examples: 30s, 2m30s, 1h)")
    if seconds <= 0:
        raise ConfigError(f"duration must be positive, got {text!r}")
    return seconds


@dataclass(frozen=True)
class BenchSettings:
    """``llmcluster bench``: the collectives alone, swept over sizes like nccl-tests."""

    min_bytes: int = 8
    max_bytes: int = 16 << 20
    factor: int = 2
    iters: int = 20
    warmup: int = 5
    json: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the flag and its accepted range."""
        if self.factor < 2 or self.iters < 1 or self.warmup < 0:
            raise ConfigError("--factor must be >= 2, --iters >= 1 and --warmup >= 0")
        if not 4 <= self.min_bytes <= self.max_bytes <= 1 << 30:
            raise ConfigError("sizes must satisfy 4 <= --min-bytes <= --max-bytes <= 1G")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; serialisable to a msgpack map for agents on other hosts."""

    ranks: int = 64
    nproc_per_node: int = 8
    steps: int | None = None
    seed: int = 0
    model: str | None = None
    gpu: str | None = None
    dataset: str | None = None
    speed: float | None = None  # None: auto (about TARGET_WALL_STEP_S of wall time per step)
    exit_after_s: float | None = None
    algorithm: str = "hierarchical"
    output_format: str = "log"
    ui: str = "auto"
    style: str = "default"
    ascii_only: bool = False
    no_color: bool = False
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    heartbeat_timeout_s: float = 3.0
    collective_timeout_s: float = 30.0
    max_restarts: int = 3
    grad_bucket_bytes: int = 0  # extra real gradient payload per step (0: loss vector only)
    record_path: str | None = None
    inject: tuple[str, ...] = ()
    chaos: float = 0.0
    bench: BenchSettings | None = None  # the bench workload instead of training
    start_time: float | None = None  # --start-time: where the simulated timeline begins
    start_at_launch: bool = False  # the timeline begins now (records run into the future)
    # torchrun's log options (worker.logspec): nothing asked keeps every rank on the console
    log_dir: str | None = None
    redirects: str = "0"
    tee: str = "0"
    local_ranks_filter: str = ""
    role: str = "default"

    @property
    def silence_tolerance_s(self) -> float:
        """How long a peer may stay silent before it is declared lost: the heartbeat timeout,
        stretched beyond 256 ranks, where one 2-core machine cannot schedule every process
        within 3 s while a thousand of them start."""
        return self.heartbeat_timeout_s * max(1.0, self.ranks / SILENCE_SCALE_RANKS)

    @property
    def nnodes(self) -> int:
        """Nodes needed for ``ranks`` at ``nproc_per_node`` (the last node may be partial)."""
        return -(-self.ranks // self.nproc_per_node)

    def node_of(self, rank: int) -> int:
        """The node a global rank lives on (torchrun: rank // nproc_per_node)."""
        return rank // self.nproc_per_node

    def local_rank_of(self, rank: int) -> int:
        """A global rank's local rank on its node."""
        return rank % self.nproc_per_node

    def node_ranks(self, node: int) -> range:
        """Global ranks on ``node``: torchrun's node_rank * nproc_per_node + local_rank."""
        first = node * self.nproc_per_node
        return range(first, min(first + self.nproc_per_node, self.ranks))

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-safe dict of all fields."""
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild a config sent by ``to_wire`` (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["inject"] = tuple(values.get("inject", ()))
        if values.get("bench") is not None:
            values["bench"] = BenchSettings(**values["bench"])
        return cls(**values)

    def validate(self) -> None:
        """Raise ConfigError naming the flag and its accepted range."""
        if not 1 <= self.ranks <= MAX_RANKS:
            raise ConfigError(f"--ranks must be between 1 and {MAX_RANKS}, got {self.ranks}")
        if not 1 <= self.nproc_per_node <= 64:
            raise ConfigError(
                f"--nproc-per-node must be between 1 and 64, got {self.nproc_per_node}"
            )
        if self.steps is not None and not 1 <= self.steps <= 10_000_000:
            raise ConfigError(f"--steps must be between 1 and 10000000, got {self.steps}")
        if self.speed is not None and not 0.01 <= self.speed <= 1e7:
            raise ConfigError(f"--speed must be between 0.01 and 1e7, got {self.speed:g}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be between 0 and 2^63-1, got {self.seed}")
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"--algorithm must be one of {', '.join(ALGORITHMS)}")
        if not 0 <= self.max_restarts <= 100:
            raise ConfigError(f"--max-restarts must be between 0 and 100, got {self.max_restarts}")
        if not 0 <= self.grad_bucket_bytes <= 1 << 30:
            raise ConfigError("--grad-bucket must be between 0 and 1GiB")
        if self.start_time is not None and self.start_at_launch:
            raise ConfigError("--start-time and --start-at-launch contradict each other; pick one")
        if self.output_format == "jsonl" and self.ui == "live":
            raise ConfigError("--ui live and --format jsonl contradict each other; pick one")
        if self.output_format == "jsonl" and self.record_path:
            raise ConfigError("--record saves what the terminal showed; it needs --format log")
        if self.record_path and not self.record_path.endswith((".svg", ".html", ".txt")):
            raise ConfigError("--record must name a .svg, .html or .txt file")
        if not 0.0 <= self.chaos <= 1.0:
            raise ConfigError(
                f"--chaos must be a failure rate per step in [0, 1], got {self.chaos:g}"
            )
        if not 1 <= self.master_port <= 65535:
            raise ConfigError(f"--master-port must be between 1 and 65535, got {self.master_port}")
