"""``llmcluster bench --ranks 8`` at its default sizes completes next to a CPU hog.

Long shared-memory reductions and every wait serve the control socket, so on a loaded
2-core machine no rank goes silent long enough to be declared lost (issue 15, item 5).
The hog is two busy-loop processes this test starts and ends by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import run_cli
from own_processes import (
    own_only,  # noqa: F401  (the fixture the test uses)
    wait_for_no_children,
)

HOGS = 2  # one per core of the machine the issue was found on


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("own_only")
def test_bench_at_default_sizes_survives_a_cpu_hog() -> None:
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(HOGS)
    ]
    try:
        done = run_cli("bench", "--ranks", "8", timeout=540)
    finally:
        for hog in hogs:
            os.kill(hog.pid, signal.SIGKILL)
            hog.wait(timeout=10)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stopped answering" not in done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line[:1] == " "]
    sizes = [int(row[0]) for row in rows]
    expected, size = [], 8  # the defaults: 8 B to 16 MiB, factor 2
    while size <= 16 << 20:
        expected.append(size)
        size *= 2
    assert sizes == expected
    for row in rows:  # size count type redop root | time algbw busbw #wrong | same in place
        assert row[8] == "0" and row[12] == "0", row
    assert "# Out of bounds values : 0 OK" in done.stdout
    assert wait_for_no_children(5.0) == []
