"""NCCL's debug environment, parsed as NCCL parses it (``src/debug.cc``, ``env.rst``).

``NCCL_DEBUG`` sets the level (unset: nothing at all; ``VERSION``: the version line only;
``WARN``; ``INFO``; ``TRACE`` is compiled out of release builds, so it prints as INFO),
``NCCL_DEBUG_SUBSYS`` the subsystems INFO lines are shown for (a comma list, case-insensitive,
``ALL``, a leading ``^`` inverts the whole list; default ``INIT,BOOTSTRAP,ENV``) and
``NCCL_DEBUG_FILE`` where they go (``%h`` host, ``%p`` pid, ``%%`` a percent sign; only
opened above VERSION). Pure: the environment comes in as a mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, IntFlag


class Level(IntEnum):
    """``ncclDebugLogLevel`` (inclusive: a level shows every less verbose one)."""

    NONE = 0
    VERSION = 1
    WARN = 2
    INFO = 3
    ABORT = 4
    TRACE = 5


class Subsys(IntFlag):
    """``ncclDebugLogSubSys``: the subsystem names NCCL_DEBUG_SUBSYS accepts."""

    INIT = 1 << 0
    COLL = 1 << 1
    P2P = 1 << 2
    SHM = 1 << 3
    NET = 1 << 4
    GRAPH = 1 << 5
    TUNING = 1 << 6
    ENV = 1 << 7
    ALLOC = 1 << 8
    CALL = 1 << 9
    PROXY = 1 << 10
    NVLS = 1 << 11
    BOOTSTRAP = 1 << 12
    REG = 1 << 13
    PROFILE = 1 << 14
    RAS = 1 << 15
    ALLOC_HOST = 1 << 16
    DESTROY = 1 << 17


ALL = Subsys((1 << 18) - 1)
DEFAULT_SUBSYS = Subsys.INIT | Subsys.BOOTSTRAP | Subsys.ENV
OWN_VARS = ("NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_DEBUG_FILE")  # read by getenv, not echoed


@dataclass(frozen=True)
class NcclDebug:
    """What NCCL would print, and where."""

    level: Level = Level.NONE
    subsys: Subsys = DEFAULT_SUBSYS
    file_template: str | None = None  # NCCL_DEBUG_FILE, unexpanded

    def info(self, flags: tuple[str, ...]) -> bool:
        """Whether an ``INFO(flags, ...)`` line (flags named as NCCL_DEBUG_SUBSYS names them) is
        printed: any of its subsystems enabled."""
        mask = Subsys(0)
        for name in flags:
            mask |= Subsys[name]
        return self.level >= Level.INFO and bool(mask & self.subsys)

    @property
    def version(self) -> bool:
        """Whether the ``NCCL version`` line is printed."""
        return self.level >= Level.VERSION


def parse_level(value: str | None) -> Level:
    """``NCCL_DEBUG``: case-insensitive; unset or unknown -> NONE; TRACE -> INFO (release)."""
    if not value:
        return Level.NONE
    level = Level.__members__.get(value.strip().upper(), Level.NONE)
    return Level.INFO if level is Level.TRACE else level


def parse_subsys(value: str | None) -> Subsys:
    """``NCCL_DEBUG_SUBSYS``: ``INIT,COLL``, ``ALL``, ``^INIT,COLL`` (everything but those);
    unknown names are ignored."""
    if value is None:
        return DEFAULT_SUBSYS
    invert = value.startswith("^")
    names = value[1:] if invert else value
    mask = Subsys(0)
    for name in names.split(","):
        name = name.strip().upper()
        if name == "ALL":
            mask |= ALL
        elif name in Subsys.__members__:
            mask |= Subsys[name]
    return Subsys(ALL & ~mask) if invert else mask


def parse(environ: Mapping[str, str]) -> NcclDebug:
    """The debug settings of a process with ``environ``."""
    return NcclDebug(
        level=parse_level(environ.get("NCCL_DEBUG")),
        subsys=parse_subsys(environ.get("NCCL_DEBUG_SUBSYS")),
        file_template=environ.get("NCCL_DEBUG_FILE") or None,
    )


def debug_file_path(template: str, *, host: str, pid: int) -> str:
    """``NCCL_DEBUG_FILE`` expanded: %h -> host, %p -> pid, %% -> %, other %x kept."""
    out, i = [], 0
    while i < len(template):
        char = template[i]
        if char == "%" and i + 1 < len(template):
            code = template[i + 1]
            out.append({"h": host, "p": str(pid), "%": "%"}.get(code, char + code))
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def env_lines(environ: Mapping[str, str]) -> list[str]:
    """``NCCL_X set by environment to V`` for the NCCL parameters a process was given."""
    return [
        f"{name} set by environment to {value}"
        for name, value in sorted(environ.items())
        if name.startswith("NCCL_") and name not in OWN_VARS
    ]
