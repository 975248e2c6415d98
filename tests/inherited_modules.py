"""Which heavy modules each rank of a run holds as it starts (inherited from its forker, before
it imports anything itself): the run is started from a script that hooks ``Rank.__init__``."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("asyncio", "ssl", "zmq.auth", "prometheus_client", "http.server")

_SCRIPT = f"""
import os
import sys
from llmcluster.worker import rank

start = rank.Rank.__init__


def reporting_start(self, spec):
    held = [name for name in {HEAVY!r} if name in sys.modules]
    os.write(2, f"rank {{spec.rank}} inherits {{','.join(held) or 'none'}}\\n".encode())
    start(self, spec)


rank.Rank.__init__ = reporting_start
from llmcluster.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
"""


def heavy_modules_of_ranks(*args: str, env: dict[str, str] | None = None) -> dict[int, str]:
    """Run ``llmcluster ARGS --format jsonl`` to its end; each rank's heavy modules at start
    (comma-separated, or "none")."""
    done = subprocess.run([sys.executable, "-c", _SCRIPT, *args, "--format", "jsonl"],
                          capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    held = {}
    for line in done.stderr.splitlines():
        if " inherits " in line:
            words = line.split()
            held[int(words[1])] = words[3]
    return held
