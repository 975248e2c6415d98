"""Rank 0's display thread: receives the coordinator's records and hands them to a sink.

It subscribes with an XSUB socket so it can acknowledge, upstream on the same
connection, each record it has shown. The coordinator keeps every record until
it is acknowledged and replays the rest to the next rank 0 after a restart (or
shows them itself when the run is aborted), so no record is lost with a rank 0
that is killed mid-run.
"""

from __future__ import annotations

import threading
from typing import Any

import zmq

from llmcluster.wire import DecodeError, Kind, decode

ACK = b"A"  # + 8-byte little-endian record sequence number
SUBSCRIBE_ALL = b"\x01"


def ack_frame(seq: int) -> bytes:
    """The upstream frame acknowledging records up to ``seq``."""
    return ACK + seq.to_bytes(8, "little")


def receive_records(
    ctx: zmq.Context,
    endpoint: str,
    run_id: str,
    display: Any,
    *,
    subscribed: threading.Event,
    stopping: threading.Event,
) -> None:
    """Show records until the summary (or until asked to stop), acknowledging each one."""
    sub = ctx.socket(zmq.XSUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.LINGER, 500)
    sub.setsockopt(zmq.MAXMSGSIZE, 16 * 1024 * 1024)
    sub.connect(endpoint)
    sub.send(SUBSCRIBE_ALL)
    subscribed.set()
    try:
        while not stopping.is_set():
            if not sub.poll(100):
                continue
            try:
                msg = decode(sub.recv_multipart(), run_id=run_id, max_buffers=0)
            except DecodeError:
                continue
            if msg.kind is not Kind.RECORD:
                continue
            record = msg.body["record"]
            display.show(record)
            sub.send(ack_frame(int(msg.body["seq"])))
            if record.get("type") == "summary":
                return
    finally:
        sub.close()


class DisplayThread(threading.Thread):
    """Rank 0's renderer: subscribes to the coordinator's records and shows them."""

    def __init__(self, ctx: zmq.Context, config: Any, publish: str, run_id: str) -> None:
        super().__init__(name="display", daemon=True)
        from llmcluster.render.sinks import make_display  # rich is only needed on rank 0

        self.ctx, self.publish, self.run_id = ctx, publish, run_id
        self.subscribed = threading.Event()
        self._stopping = threading.Event()
        self._display = make_display(config)

    def run(self) -> None:
        try:
            try:
                receive_records(
                    self.ctx,
                    self.publish,
                    self.run_id,
                    self._display,
                    subscribed=self.subscribed,
                    stopping=self._stopping,
                )
            finally:
                self._display.close()
        except OSError:  # stdout closed (| head, a hung-up terminal): the coordinator ends the run
            from llmcluster.render.sinks import silence_stdout, stdout_closed

            if not stdout_closed():
                raise
            silence_stdout()

    def stop(self) -> None:
        """Ask the thread to finish and wait for the terminal to be restored."""
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(5)
