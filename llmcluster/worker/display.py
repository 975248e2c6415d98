"""Rank 0's display thread: the telemetry plane's reliable subscriber, handing records to a sink.

It claims the hub's display channel for its attempt, shows every record in order and
acknowledges each one; the hub replays whatever it never acknowledged to the next rank 0
after a restart (or the coordinator shows it itself when the run is aborted), so no
record is lost with a rank 0 that is killed mid-run. It claims the channel with rank 0's
join proof (and, across hosts, the run's CurveZMQ keys). ``run_shown`` is set once the
attempt's ``run`` record (torchrun's launch lines) is out, and ``lock`` is held while a
record is shown, so rank 0's own framework lines never cut into them. With ``--tensorboard``
it also writes every record's scalars (``worker.tensorboard``).
"""

from __future__ import annotations

import threading

import zmq

from llmcluster.config import RunConfig
from llmcluster.control.security import CurveKeys
from llmcluster.render.sinks import make_display, silence_stdout, stdout_closed
from llmcluster.telemetry.client import RecordClient
from llmcluster.wire.records import Record, RunRecord, SummaryRecord
from llmcluster.worker.tensorboard import TensorboardWriter

POLL_S = 0.1


class DisplayThread(threading.Thread):
    """Rank 0's renderer: shows the records of the run until the summary."""

    def __init__(
        self,
        ctx: zmq.Context,
        config: RunConfig,
        publish: str,
        run_id: str,
        attempt: int,
        *,
        proof: str = "",
        curve: CurveKeys | None = None,
    ) -> None:
        super().__init__(name="display", daemon=True)
        self.ctx, self.publish, self.run_id, self.attempt = ctx, publish, run_id, attempt
        self.proof, self.curve = proof, curve
        self._stopping = threading.Event()
        self.run_shown = threading.Event()
        self.lock = threading.Lock()  # one record's lines are never cut by the rank's own
        self._display = make_display(config)
        self._tensorboard = (
            TensorboardWriter(config.tensorboard_dir) if config.tensorboard_dir else None
        )

    def run(self) -> None:
        client = RecordClient(
            self.ctx,
            self.publish,
            role="display",
            run_id=self.run_id,
            attempt=self.attempt,
            rank=0,
            curve=self.curve,
            proof=self.proof,
        )
        closed = False
        try:
            while not self._stopping.is_set():
                for seq, record in client.receive(POLL_S):
                    self._show(record)
                    if isinstance(record, SummaryRecord):  # shown (and saved) before the ack:
                        closed = True  # the run ends once the display has acknowledged it
                        self._display.close()
                        self._close_tensorboard()
                        client.ack(seq)
                        return
                    client.ack(seq)
        finally:
            client.close()
            self._close_tensorboard()
            if not closed:
                self._display.close()

    def _close_tensorboard(self) -> None:
        """Flush and close the event file (once)."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def _show(self, record: Record) -> None:
        """Show one record; a closed stdout (``| head``, a hung-up terminal) is silenced and
        the records still acknowledged, so the run (told by its stdout watch) ends promptly."""
        try:
            with self.lock:
                self._display.show(record)
        except OSError:
            if not stdout_closed():
                raise
            silence_stdout()
        if isinstance(record, RunRecord):
            self.run_shown.set()
        if self._tensorboard is not None:
            self._tensorboard.show(record)

    def stop(self) -> None:
        """Ask the thread to finish and wait for the terminal to be restored."""
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(5)
