"""The run file: how a second terminal (``llmcluster attach``) or a test finds a live local run.

``$XDG_RUNTIME_DIR/llmcluster/<run_id>.json`` (else ``<tmp>/llmcluster-runs-<uid>/``), mode
0600 in a 0700 directory, written once the hub is bound and removed when the run ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RunFile:
    """What an observer needs to reach a run."""

    run_id: str
    pid: int
    records: str  # the telemetry hub's endpoint
    control: str
    world_size: int
    started: float


def runs_dir() -> str:
    """The directory of this user's run files."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, "llmcluster")
    return os.path.join(tempfile.gettempdir(), f"llmcluster-runs-{os.getuid()}")


@contextlib.contextmanager
def published(run: RunFile) -> Iterator[str]:
    """Write the run file for the duration of the block; yields its path."""
    directory = runs_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, f"{run.run_id}.json")
    partial = os.path.join(directory, f".{run.run_id}.json.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(run), out)
    os.replace(partial, path)  # whole or absent: a reader never sees it half written
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def live_runs() -> list[RunFile]:
    """Run files whose process is alive (stale ones, of a killed run, are removed)."""
    found = []
    directory = runs_dir()
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(n for n in os.listdir(directory) if n.endswith(".json")):
            path = os.path.join(directory, name)
            try:
                with open(path) as f:
                    run = RunFile(**json.load(f))
                os.kill(run.pid, 0)
            except ProcessLookupError:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            except (OSError, ValueError, TypeError):
                continue
            found.append(run)
    return sorted(found, key=lambda r: r.started)
