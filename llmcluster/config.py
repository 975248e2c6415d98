"""Run configuration: one frozen dataclass built once by the CLI and passed down explicitly.

Also holds the small parsers and checks the CLI shares (durations like ``2m30s``,
ports, addresses, tokens, the ``--record`` target), each raising a one-line
ConfigError that names the flag or environment variable and what it accepts.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

ALGORITHMS = ("ring", "tree", "hierarchical")
FORMATS = ("log", "jsonl")
UIS = ("auto", "live", "log")
MAX_RANKS = 4096
MAX_NNODES = 512
MAX_DURATION_S = 366 * 86400.0
RECORD_SUFFIXES = (".svg", ".html", ".txt", ".cast")
SILENCE_SCALE_RANKS = 256
START_SCALE_RANKS = 1024
TARGET_WALL_STEP_S = 0.5  # --speed auto: a demo shows a step about every half second

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class ConfigError(ValueError):
    """A user-facing, one-line configuration error (the CLI exits 2 with it)."""


def parse_duration(text: str) -> float:
    """Parse ``90``, ``30s``, ``2m30s``, ``1h``, ``250ms`` into seconds (> 0, at most a year)."""
    text = text.strip().lower()
    if text.startswith("-"):
        raise ConfigError(f"duration must be positive (e.g. 30s, 2m30s, 1h), got {text!r}")
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
    if not seconds <= MAX_DURATION_S:
        raise ConfigError(f"duration must be at most 366 days, got {text!r}")
    return seconds


def env_text(name: str, default: str) -> str:
    """An environment variable's value, or ``default`` when it is unset or empty."""
    return os.environ.get(name) or default


def check_port(port: int, *, flag: str, highest: int = 65535) -> int:
    """``port`` if it is in 1..highest, else ConfigError naming ``flag``."""
    if not 1 <= port <= highest:
        why = " (the records port is --port + 1)" if highest < 65535 else ""
        raise ConfigError(f"{flag} must be between 1 and {highest}{why}, got {port}")
    return port


_ADDRESS = re.compile(r"[A-Za-z0-9._:-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]|\*", re.ASCII)


def check_address(address: str, *, flag: str) -> str:
    """A host name, IPv4/IPv6 address or ``*``; ConfigError naming ``flag`` otherwise."""
    if not _ADDRESS.fullmatch(address):
        raise ConfigError(f"{flag} must be a host name or IP address, got {address!r}")
    return address


def check_token(token: str | None) -> str:
    """``--token`` or LLMCLUSTER_TOKEN: printable text of at most 1024 characters, or none."""
    flag = "--token"
    if token is None:
        token, flag = env_text("LLMCLUSTER_TOKEN", ""), "LLMCLUSTER_TOKEN"
        if not token:
            return ""
    if not token:
        raise ConfigError("--token must not be empty (omit it for no token)")
    if not token.isprintable() or len(token) > 1024 or not token.strip():
        raise ConfigError(f"{flag} must be 1-1024 printable characters")
    return token


def check_record_target(path: str) -> None:
    """ConfigError unless ``--record`` names a file that can be written when the run ends."""
    try:
        target = os.path.abspath(path)
        folder = os.path.dirname(target)
        is_dir, folder_ok, exists = (
            os.path.isdir(target), os.path.isdir(folder), os.path.exists(target)
        )  # fmt: skip
        writable = os.access(target if exists else folder, os.W_OK | (0 if exists else os.X_OK))
    except (ValueError, UnicodeError):  # an embedded NUL, an unencodable name
        raise ConfigError(f"--record: {path!r} is not a valid file name") from None
    if is_dir:
        raise ConfigError(f"--record must name a file, {path!r} is a directory")
    if not folder_ok:
        raise ConfigError(f"--record: directory {folder!r} does not exist")
    if not writable:
        raise ConfigError(f"--record: {path!r} is not writable")


def makes_log_files(log_dir: str | None, redirects: str, tee: str) -> bool:
    """torchrun's rule: a log dir, a redirect or a tee makes the per-rank log files."""
    return bool(log_dir) or redirects != "0" or tee != "0"


@dataclass(frozen=True)
class BenchSettings:
    """``llmcluster bench``: the collectives alone, swept over sizes like nccl-tests."""

    min_bytes: int = 8
    max_bytes: int = 16 << 20
    factor: int = 2
    iters: int = 20
    warmup: int = 5
    json: bool = False


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
    rdzv_backend: str = "c10d"  # as torchrun names it in its launch configs (launch: its flag)
    monitor_interval_s: float = 0.1  # torchrun's: how often each node's agent checks its ranks
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
    smi_every: int = 0  # --smi-every: node 0's nvidia-smi table every N steps (0: never)
    tensorboard_dir: str | None = None  # --tensorboard: rank 0 writes the run's scalars there

    @property
    def silence_tolerance_s(self) -> float:
        """How long a peer may stay silent before it is declared lost: the heartbeat timeout,
        stretched beyond 256 ranks, where one 2-core machine cannot schedule every process
        within 3 s while a thousand of them start."""
        return self.heartbeat_timeout_s * max(1.0, self.ranks / SILENCE_SCALE_RANKS)

    @property
    def start_scale(self) -> float:
        """How many times longer than a 1024-rank world this one may take to start (1 up to
        1024 ranks): every rank costs tens of milliseconds of CPU to start, and 2048 of them
        on two cores take longer than a minute to pass their first barrier."""
        return max(1.0, self.ranks / START_SCALE_RANKS)

    @property
    def makes_log_files(self) -> bool:
        """Every rank writes its own files (torchrun's log options asked)."""
        return makes_log_files(self.log_dir, self.redirects, self.tee)

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
        if not 0 < self.monitor_interval_s <= 3600:  # also NaN
            raise ConfigError(
                f"--monitor-interval must be seconds in (0, 3600], got {self.monitor_interval_s}"
            )
        if not 0 <= self.grad_bucket_bytes <= 1 << 30:
            raise ConfigError(
                f"--grad-bucket must be between 0 and 1G, got {self.grad_bucket_bytes}"
            )
        if self.start_time is not None and self.start_at_launch:
            raise ConfigError("--start-time and --start-at-launch contradict each other; pick one")
        if self.output_format == "jsonl" and self.ui == "live":
            raise ConfigError("--ui live and --format jsonl contradict each other; pick one")
        if self.output_format == "jsonl" and self.style != "default":
            raise ConfigError("--style shapes the text log and --format jsonl has none; pick one")
        if self.output_format == "jsonl" and self.record_path:
            raise ConfigError("--record saves what the terminal showed; it needs --format log")
        if self.record_path and not self.record_path.endswith(RECORD_SUFFIXES):
            raise ConfigError("--record must name a .svg, .html, .txt or .cast file")
        if not 0 <= self.smi_every <= 10_000_000:
            raise ConfigError(
                f"--smi-every must be a positive number of steps, got {self.smi_every}"
            )
        if self.smi_every and self.output_format == "jsonl":
            raise ConfigError(
                "--smi-every adds nvidia-smi tables to the text log and --format "
                "jsonl has none; pick one"
            )
        if self.exit_after_s is not None and not 0 < self.exit_after_s <= MAX_DURATION_S:
            raise ConfigError("--exit-after-time must be positive and at most 366 days")
        if not 0.0 <= self.chaos <= 1.0:
            raise ConfigError(
                f"--chaos must be a failure rate per step in [0, 1], got {self.chaos:g}"
            )
        if not 1 <= self.master_port <= 65535:
            raise ConfigError(f"--master-port must be between 1 and 65535, got {self.master_port}")
