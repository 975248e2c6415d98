"""The agent's tee: tail each tee'd rank file to its console with the rank's prefix.

torch implements ``--tee`` as a redirect plus ``TailLog`` (``tail_log.py``): one thread per
file polls for new lines every 0.1 s and writes ``<prefix><line>`` to the agent's stdout or
stderr. Each line is one whole write (``render.wholeline``: into a pipe, once it has room for
all of it), so lines of different ranks interleave on a shared console in the order the
ranks really printed them (per poll), and never in the middle of one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

from llmcluster.render.wholeline import write_whole

POLL_S = 0.1  # torch's interval_sec


@dataclass(frozen=True)
class Tailed:
    """One file to follow and where its lines go."""

    path: str
    prefix: str
    fd: int  # 1: the agent's stdout, 2: its stderr


def _follow(item: Tailed, finished: threading.Event) -> None:
    while not os.path.exists(item.path):
        if finished.wait(POLL_S):
            if not os.path.exists(item.path):
                return
            break
    pending = b""
    header = item.prefix.encode()
    with open(item.path, "rb") as source:
        while True:
            chunk = source.read(65536)
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    with contextlib.suppress(OSError):
                        write_whole(item.fd, header + line + b"\n")
                continue
            if finished.is_set():  # the producer is gone and the file is drained
                break
            finished.wait(POLL_S)
    if pending:
        with contextlib.suppress(OSError):
            write_whole(item.fd, header + pending + b"\n")


class TailLog:
    """Follows files until ``stop``, which drains what is left and joins the threads."""

    def __init__(self, items: list[Tailed]) -> None:
        self.finished = threading.Event()
        self.threads = [
            threading.Thread(
                target=_follow,
                args=(item, self.finished),
                daemon=True,
                name=f"TailLog-{item.prefix}",
            )
            for item in items
        ]

    def start(self) -> TailLog:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.finished.set()
        for thread in self.threads:
            thread.join()
