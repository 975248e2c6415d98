"""A stand-in host's init: run one command below a subreaper that reaps every orphan.

``python host_init.py CMD...`` forks CMD and reaps whatever is orphaned below it, as a
host's pid 1 does. The test suite is itself a subreaper (conftest), so without this a Slurm
daemon's orphans (the job's processes slurmstepd leaves behind as they exit) would become
zombies of the suite, and slurmstepd, which waits for the job's process group to empty,
would wait for them forever. SIGTERM and SIGINT are passed on to CMD; once CMD exits, what
is left below this process is killed by PID, reaped, and CMD's exit code returned.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def _children() -> list[int]:
    """This process's live children, from /proc (by parentage, never by name)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as src:
                if int(src.read().rsplit(")", 1)[1].split()[1]) == me:
                    found.append(int(entry))
    return found


def main(argv: list[str]) -> int:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = os.fork()
    if child == 0:
        os.execvp(argv[0], argv)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: os.kill(child, signum))
    code = 1
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            break
    for pid in _children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        while True:
            os.waitpid(-1, 0)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
