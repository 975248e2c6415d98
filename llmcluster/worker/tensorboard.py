"""``--tensorboard DIR``: the run's scalars as TensorBoard event files, written by rank 0.

Rank 0's display is the telemetry plane's reliable subscriber, so every step it shows is
written once: ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_s``,
``train/mfu`` and ``train/val_loss`` at the step, and each GPU's ``gpu/util/rank<N>`` and
``gpu/temp_c/rank<N>``, stamped with the run's simulated time. tensorboardX is an optional
extra (``pip install 'llmcluster[tensorboard]'``), imported only when asked for;
``require`` turns its absence into a one-line usage error before anything starts.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

from llmcluster.wire.records import EvalRecord, RanksRecord, Record, StepRecord

MISSING = (
    "--tensorboard needs the optional tensorboardX package: pip install 'llmcluster[tensorboard]'"
)


def require() -> None:
    """ValueError (one line) unless tensorboardX can be imported."""
    if importlib.util.find_spec("tensorboardX") is None:
        raise ValueError(MISSING)


class TensorboardWriter:
    """A SummaryWriter on ``log_dir`` fed with the records rank 0 shows."""

    def __init__(self, log_dir: str) -> None:
        from tensorboardX import SummaryWriter

        self.writer: Any = SummaryWriter(logdir=log_dir)

    def _scalar(self, tag: str, value: float, step: int, t: float) -> None:
        if math.isfinite(value):  # a NaN step (a loss spike's skip) is left out, not plotted
            self.writer.add_scalar(tag, value, global_step=step, walltime=t)

    def show(self, record: Record) -> None:
        if isinstance(record, StepRecord):
            step, t = record.step, record.time
            scalars = {"loss": record.loss, "lr": record.lr, "grad_norm": record.grad_norm,
                       "tokens_per_s": record.tokens_per_s, "mfu": record.mfu}  # fmt: skip
            for tag, value in scalars.items():
                self._scalar(f"train/{tag}", value, step, t)
        elif isinstance(record, EvalRecord):
            self._scalar("train/val_loss", record.val_loss, record.step, record.time)
        elif isinstance(record, RanksRecord) and record.phase is None:
            for gpu in record.ranks:
                self._scalar(f"gpu/util/rank{gpu.rank}", gpu.util, record.step, record.time)
                self._scalar(f"gpu/temp_c/rank{gpu.rank}", gpu.temp_c, record.step, record.time)
            self.writer.flush()  # a step's scalars are on disk once shown, whatever ends us

    def close(self) -> None:
        self.writer.close()
