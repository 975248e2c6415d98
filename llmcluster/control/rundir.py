"""Private socket directories: made 0700, locked while their owner lives, swept when stale.

Each directory holds a ``lock`` file that its creating process keeps ``flock``ed for its whole
life. A later start removes directories whose lock it can take: their owner is gone (a
``kill -9``) even if its pid was reused, and a live owner in another PID namespace sharing
``/tmp`` (a container, ``unshare --pid``) is never mistaken for a dead one.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
import time

PREFIX = "llmcluster-"
LOCK_NAME = "lock"
OWNER_EXIT_S = 2.0  # how long a dying owner may take to let go of its lock


class RunDir:
    """A private directory for this process's sockets, removed by ``remove``."""

    def __init__(self, kind: str) -> None:
        self.path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-{kind}")
        os.chmod(self.path, 0o700)
        self._lock = os.open(os.path.join(self.path, LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def remove(self) -> None:
        """Delete the directory and release its lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self._lock)


def _stale(path: str) -> bool:
    """True if nobody holds the directory's lock (or it never had one: a pre-lock run whose
    pid is gone)."""
    lock = os.path.join(path, LOCK_NAME)
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return _dead_owner(path)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _owner_pid(path: str) -> int:
    """The pid in the directory's name (0 if it has none)."""
    pid = os.path.basename(path)[len(PREFIX) :].split("-", 1)[0]
    return int(pid) if pid.isdigit() else 0


def _dead_owner(path: str) -> bool:
    pid = _owner_pid(path)
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_if_stale(path: str) -> None:
    """Remove ``path`` if its owner is gone (an agent cleaning up after a killed coordinator,
    its parent). A parent that is dying still holds its lock until its last thread exits,
    after our death signal: so once we have been reparented, wait a moment for the lock."""
    owner = _owner_pid(path)
    deadline = time.monotonic() + (OWNER_EXIT_S if owner and owner != os.getppid() else 0.0)
    while os.path.isdir(path):
        if _stale(path):
            shutil.rmtree(path, ignore_errors=True)
            return
        if time.monotonic() >= deadline:
            return
        time.sleep(0.01)


def sweep_stale_dirs() -> None:
    """Remove the socket directories of runs, agents and ranks that are gone."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{PREFIX}*-*")):
        if os.path.isdir(path) and not os.path.islink(path) and _stale(path):
            shutil.rmtree(path, ignore_errors=True)
