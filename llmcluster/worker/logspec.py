"""torchrun's log options and where each local rank's streams go (``DefaultLogsSpecs``).

The values and their meaning are torch's (``torch/distributed/elastic/multiprocessing/api.py``):
``Std`` and ``Std.from_str`` for ``--redirects``/``--tee`` (``3``, or a per-local-rank map
such as ``0:1,3:2``), ``to_map``, and ``reify``'s layout
``<log_dir>/<run_id>_<8 random chars>/attempt_<restart>/<local_rank>/{stdout.log,stderr.log,
error.json}``. Tee is a redirect plus a tail of the file to the console with the
``[<role><local_rank>]:`` prefix (or ``TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE``);
``--local-ranks-filter`` keeps the files of the other ranks but drops their console output.

Nothing asked (no log dir, no redirect, no tee): every rank keeps the agent's console, as
llmcluster always did; the directories are made only when a log dir, a redirect or a tee is
asked (then without ``--log-dir`` the base is ``mkdtemp(prefix="torchelastic_")`` as torch's).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from enum import IntFlag
from string import Template

from llmcluster.config import RunConfig, makes_log_files

_MAPPING_REGEX = r"^(\d:[0123],)*(\d:[0123])$"
_VALUE_REGEX = r"^[0123]$"
FILTER_ERROR = (
    "--local_ranks_filter must be a comma-separated list of integers"
    " e.g. --local_ranks_filter=0,1,2"
)
CONSOLE = ""  # torch's SYS_STREAM: the stream stays the agent's console


class Std(IntFlag):
    """Which standard streams a setting covers (torch's values)."""

    NONE = 0
    OUT = 1
    ERR = 2
    ALL = OUT | ERR


def std_from_str(vm: str) -> Std | dict[int, Std]:
    """torch's ``Std.from_str``: ``"3"`` -> ALL, ``"0:3,1:0"`` -> {0: ALL, 1: NONE}."""
    if re.match(_VALUE_REGEX, vm):
        return Std(int(vm))
    if re.match(_MAPPING_REGEX, vm):
        mapping: dict[int, Std] = {}
        for item in vm.split(","):
            index, value = item.split(":")
            mapping[int(index)] = Std(int(value))
        return mapping
    raise ValueError(f"{vm} does not match: <{_VALUE_REGEX}> or <{_MAPPING_REGEX}>")


def to_map(val_or_map: Std | dict[int, Std], local_world_size: int) -> dict[int, Std]:
    """One setting per local rank (ranks missing from a map get NONE)."""
    if isinstance(val_or_map, Std):
        return dict.fromkeys(range(local_world_size), val_or_map)
    return {i: val_or_map.get(i, Std.NONE) for i in range(local_world_size)}


def parse_ranks_filter(text: str) -> frozenset[int] | None:
    """``--local-ranks-filter 0,3`` -> {0, 3}; empty -> None (no filter)."""
    if not text:
        return None
    try:
        ranks = frozenset(int(item) for item in text.split(","))
    except ValueError as exc:
        raise ValueError(FILTER_ERROR) from exc
    return ranks


@dataclass(frozen=True)
class LogsSpec:
    """The log options of one node agent, as torchrun's flags spell them."""

    log_dir: str | None = None
    redirects: str = "0"
    tee: str = "0"
    local_ranks_filter: str = ""
    role: str = "default"
    prefix_template: str | None = None  # TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE

    @property
    def makes_files(self) -> bool:
        """A log dir, a redirect or a tee was asked: the per-node directory tree exists."""
        return makes_log_files(self.log_dir, self.redirects, self.tee)

    @classmethod
    def of(cls, config: RunConfig, prefix_template: str | None) -> LogsSpec:
        """The log options of ``config`` (a node's own already laid over the run's)."""
        return cls(log_dir=config.log_dir, redirects=config.redirects, tee=config.tee,
                   local_ranks_filter=config.local_ranks_filter, role=config.role,
                   prefix_template=prefix_template)  # fmt: skip


@dataclass(frozen=True)
class NodeLogOptions:
    """``llmcluster node``'s own torchrun log flags for its ranks (None: the coordinator's)."""

    log_dir: str | None = None
    redirects: str | None = None
    tee: str | None = None
    local_ranks_filter: str | None = None
    role: str | None = None

    def over(self, config: RunConfig) -> RunConfig:
        """The run's config as this node's ranks see it: its own log options where given."""
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(config, **{k: v for k, v in given.items() if v is not None})


@dataclass(frozen=True)
class RankLogs:
    """Where one local rank's streams go: CONSOLE, os.devnull or a file path."""

    local_rank: int
    stdout: str
    stderr: str
    tee_stdout: bool  # the agent tails stdout.log to its console
    tee_stderr: bool
    error_file: str  # TORCHELASTIC_ERROR_FILE ("" when no directory is made)
    prefix: str  # the console prefix of tee'd lines, e.g. "[default3]:"


def line_prefix(spec: LogsSpec, *, local_rank: int, rank: int) -> str:
    """``[<role><local_rank>]:``, or the template with role_name, rank and local_rank."""
    if spec.prefix_template:
        return Template(spec.prefix_template).safe_substitute(
            role_name=spec.role, rank=rank, local_rank=local_rank
        )
    return f"[{spec.role}{local_rank}]:"


def reify(spec: LogsSpec, attempt_dir: str | None, ranks: list[int]) -> list[RankLogs]:
    """torch's ``DefaultLogsSpecs.reify`` for the local ``ranks`` (global ranks by local rank);
    ``attempt_dir`` None: no files (nothing asked), streams stay on the console."""
    nprocs = len(ranks)
    redirs = to_map(std_from_str(spec.redirects), nprocs)
    tees = to_map(std_from_str(spec.tee), nprocs)
    only = parse_ranks_filter(spec.local_ranks_filter)
    out = []
    for local_rank, rank in enumerate(ranks):
        redirect = redirs[local_rank] | tees[local_rank]  # tee = redirect + tail
        stdout = stderr = CONSOLE
        error_file = ""
        tee_out = tee_err = False
        if attempt_dir is not None:
            rank_dir = os.path.join(attempt_dir, str(local_rank))
            if redirect & Std.OUT:
                stdout = os.path.join(rank_dir, "stdout.log")
            if redirect & Std.ERR:
                stderr = os.path.join(rank_dir, "stderr.log")
            tee_out, tee_err = bool(tees[local_rank] & Std.OUT), bool(tees[local_rank] & Std.ERR)
            error_file = os.path.join(rank_dir, "error.json")
        if only and local_rank not in only:
            tee_out = tee_err = False  # the file is still written, not tailed
            stdout = os.devnull if stdout == CONSOLE else stdout
            stderr = os.devnull if stderr == CONSOLE else stderr
        out.append(
            RankLogs(
                local_rank=local_rank,
                stdout=stdout,
                stderr=stderr,
                tee_stdout=tee_out,
                tee_stderr=tee_err,
                error_file=error_file,
                prefix=line_prefix(spec, local_rank=local_rank, rank=rank),
            )
        )
    return out


def prepare_log_dir(log_dir: str) -> None:
    """Create ``--log-dir`` at launch, as ``DefaultLogsSpecs`` does (ValueError: one line)."""
    if os.path.isfile(log_dir):
        raise ValueError(f"log_dir: {log_dir} is a file")
    try:
        os.makedirs(log_dir, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"log_dir: cannot create {log_dir}: {exc.strerror}") from None


def make_run_dir(log_dir: str | None, run_id: str) -> str:
    """The agent's run directory, made once: ``<base>/<run_id>_<8 random chars>``."""
    base = log_dir or tempfile.mkdtemp(prefix="torchelastic_")
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{run_id}_", dir=base)


def make_attempt_dir(run_dir: str, attempt: int, nprocs: int) -> str:
    """``attempt_<n>`` deleted and recreated (as torch does), with one folder per local rank."""
    attempt_dir = os.path.join(run_dir, f"attempt_{attempt}")
    shutil.rmtree(attempt_dir, ignore_errors=True)
    os.makedirs(attempt_dir)
    for local_rank in range(nprocs):
        os.mkdir(os.path.join(attempt_dir, str(local_rank)))
    return attempt_dir
