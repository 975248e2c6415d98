"""A rank's own NCCL debug output, written from the rank process as NCCL writes it.

The rank's stdout (its console, or ``stdout.log`` when torchrun-style redirects are on),
or the ``NCCL_DEBUG_FILE`` it names; what is printed follows ``NCCL_DEBUG`` and
``NCCL_DEBUG_SUBSYS`` (``nccl_env``). Unset ``NCCL_DEBUG``: nothing at all.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

from llmcluster.render.nccl import NcclRank, coll_line, info_line, init_lines, version_line
from llmcluster.worker import nccl_env
from llmcluster.worker.nccl_env import Level


class NcclLog:
    """One rank's NCCL lines: the communicator's init once, then a COLL line per collective."""

    def __init__(self, me: NcclRank, environ: Mapping[str, str]) -> None:
        self.me = me
        self.debug = nccl_env.parse(environ)
        self.env = nccl_env.env_lines(environ)
        self.op_count = 0
        self.file: TextIO | None = None
        template = self.debug.file_template
        if template and self.debug.level > Level.VERSION:  # NCCL opens it only above VERSION
            path = nccl_env.debug_file_path(template, host=me.host.split(".")[0], pid=me.pid)
            try:
                self.file = open(path, "w", buffering=1)  # noqa: SIM115 - lives with the rank
            except OSError:
                self.file = None  # NCCL keeps printing to stdout

    def _write(self, lines: list[str]) -> None:
        if lines:
            out = self.file or sys.stdout
            out.write("".join(f"{line}\n" for line in lines))
            out.flush()

    def init(self, *, bootstrap_s: float, total_s: float) -> None:
        """The communicator came up: the version line (rank 0), ENV and INIT lines."""
        if self.debug.level is Level.NONE:
            return
        lines = init_lines(self.me, bootstrap_s=bootstrap_s, total_s=total_s)
        out = []
        for index, line in enumerate(lines):
            if self.debug.info(line.flags):
                out.append(info_line(self.me, line.tid, line.text))
            if index == 0 and self.debug.info(("ENV",)):
                out += [info_line(self.me, self.me.pid, text) for text in self.env]
            if index == 1 and self.me.rank == 0 and self.debug.version:
                out.append(version_line(self.me))
        self._write(out)

    def collective(self, *, name: str, count: int, datatype: str, op: str, buffer: str) -> None:
        """One collective launched on the communicator (its opCount advances either way)."""
        if self.debug.info(("COLL",)):
            text = coll_line(
                self.me,
                name=name,
                op_count=self.op_count,
                count=count,
                datatype=datatype,
                op=op,
                buffer=buffer,
            )
            self._write([info_line(self.me, self.me.pid, text)])
        self.op_count += 1

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
