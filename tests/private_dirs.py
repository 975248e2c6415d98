"""A short private directory for a run's sockets and run file (tests that observe a run).

Unix socket paths are limited to 107 bytes, so pytest's deep ``tmp_path`` will not do;
a private ``TMPDIR`` also keeps the run's directories away from other runs' stale sweeps,
and ``XDG_RUNTIME_DIR`` makes ``llmcluster ps``/``attach`` see this test's runs only.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def private_dirs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point TMPDIR and XDG_RUNTIME_DIR of the processes a test starts at a new short dir."""
    path = Path(tempfile.mkdtemp(prefix="llmc-", dir="/tmp" if Path("/tmp").is_dir() else None))
    monkeypatch.setenv("TMPDIR", str(path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)
