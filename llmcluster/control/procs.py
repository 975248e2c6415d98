"""Owned child processes: fork with a parent-death signal, a name in ``ps``, and reaping.

Every process of a run is created here. A child gets ``PR_SET_PDEATHSIG`` (SIGKILL, or
the signal its creator chose, when its parent dies), ignores terminal SIGINT and SIGHUP
(the coordinator decides how a run stops), closes the file descriptors it inherited (ZeroMQ
sockets of its parent), and calls ``os._exit`` so no parent finaliser runs twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable

_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _libc = None


def set_process_name(name: str) -> None:
    """Set the name ``ps -e``/``top`` show (Linux ``comm``, 15 bytes at most)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def _die_with_parent(parent_pid: int, death_signal: int) -> bool:
    """Ask for ``death_signal`` when the parent dies; False if it already has (before prctl
    took effect, so no signal will come)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
    return os.getppid() == parent_pid


def _close_inherited_fds() -> None:
    """Close every descriptor but the standard three (one close_range call: listing
    /proc/self/fd copied ~45 of the parent's pages more per fork)."""
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def _redirect(fd: int, path: str) -> None:
    """Point ``fd`` at ``path`` (truncated; os.devnull drops the stream), line-buffered."""
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(target, fd)
    os.close(target)
    stream = sys.stdout if fd == 1 else sys.stderr
    if hasattr(stream, "reconfigure"):
        stream.reconfigure(line_buffering=True)  # a tail sees each line as it is printed


def fork_child(
    target: Callable[[], int],
    *,
    name: str,
    env: dict[str, str] | None = None,
    stdout: str = "",
    stderr: str = "",
    death_signal: int = signal.SIGKILL,
    orphaned: Callable[[], int] | None = None,
) -> int:
    """Fork a child that runs ``target()`` and exits with its return code; return its pid.

    ``stdout``/``stderr``: a file the child's stream goes to (torchrun's redirects), or ""
    to keep the parent's. ``death_signal``: what the child gets when its parent dies (a node
    agent takes SIGTERM, so it can stop its ranks and clean up after a killed coordinator);
    ``orphaned``: what it runs instead of ``target`` if the parent died before the child
    could ask for that signal (by default it just exits 1)."""
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()  # what exists now is shared with the child: its collector never touches it
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        if not _die_with_parent(parent, death_signal):
            target = orphaned or (lambda: 1)
        signal.set_wakeup_fd(-1)  # the parent's wake-up channel is not ours
        _close_inherited_fds()
        for fd, path in ((1, stdout), (2, stderr)):
            if path:
                _redirect(fd, path)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        set_process_name(name)
        if env:
            os.environ.update(env)
        code = target()
    except BaseException:  # report, never let a child return into the parent's code
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def exit_code_of(status: int) -> int:
    """torch's convention: exit code, or minus the signal number for a killed process."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def signal_name(exitcode: int) -> str | None:
    """``SIGKILL`` for -9, None for a normal exit code."""
    if exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def reap(pids: Iterable[int]) -> dict[int, int]:
    """Collect whichever of ``pids`` have exited, without blocking: pid -> exit code."""
    done: dict[int, int] = {}
    for pid in pids:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done[pid] = 0
            continue
        if got:
            done[pid] = exit_code_of(status)
    return done


def terminate_all(pids: Iterable[int], *, grace_s: float = 1.0) -> dict[int, int]:
    """SIGTERM, wait up to ``grace_s``, SIGKILL the rest, and reap every one."""
    alive = set(pids)
    for pid in alive:
        _signal(pid, signal.SIGTERM)
    codes: dict[int, int] = {}
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        finished = reap(alive)
        codes.update(finished)
        alive -= finished.keys()
        if alive:
            time.sleep(0.01)
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    for pid in alive:
        try:
            _, status = os.waitpid(pid, 0)
            codes[pid] = exit_code_of(status)
        except ChildProcessError:
            codes[pid] = -signal.SIGKILL
    return codes


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class SignalWakeup:
    """A socket that turns readable when a signal arrives, a child's exit (SIGCHLD) included,
    so a process can wait long on its sockets and still see at once that a child ended;
    ``close`` restores the previous wake-up descriptor and SIGCHLD handler."""

    def __init__(self) -> None:
        self.read, self._write = socket.socketpair()
        self.read.setblocking(False)
        self._write.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno())
        self._previous_handler = signal.signal(signal.SIGCHLD, lambda *_: None)

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        signal.signal(signal.SIGCHLD, self._previous_handler)
        self.read.close()
        self._write.close()
