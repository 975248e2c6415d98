"""The record hub in-process: a stalled observer costs the run nothing; the display is reliable."""

from __future__ import annotations

import time

import zmq

from llmcluster.telemetry.client import RecordClient
from llmcluster.telemetry.hub import SUBSCRIBER_HWM, RecordHub
from llmcluster.wire import Kind, Message, encode
from llmcluster.wire.messages import Subscribe
from llmcluster.wire.records import LogRecord, RankSample, RanksRecord


def _ranks(step: int, world: int = 256) -> RanksRecord:
    return RanksRecord(
        step=step,
        ranks=tuple(
            RankSample(
                rank=r,
                local_rank=r % 8,
                node=r // 8,
                host="h",
                loss=2.0,
                local_loss=2.0,
                util=90.0,
                temp_c=60.0,
                mem_used_gb=50.0,
                mem_total_gb=80.0,
                power_w=600.0,
                sm_clock_mhz=1900,
                throttled=False,
                arrive_ms=0.0,
                wait_ms=1.0,
                compute_ms=10.0,
            )
            for r in range(world)
        ),
    )


def _pump(hub: RecordHub, clients: list[RecordClient], until: float) -> None:
    while time.monotonic() < until:
        hub.poll(time.monotonic())
        for client in clients:
            client.receive(0.01)


def test_an_observer_that_never_reads_loses_records_but_never_blocks_the_hub(tmp_path) -> None:
    ctx = zmq.Context()
    hub = RecordHub(ctx, f"ipc://{tmp_path}/hub", "run1")
    stalled = ctx.socket(zmq.DEALER)  # subscribes, then never reads again
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.connect(hub.endpoint)
    stalled.send(encode(Message(Kind.SUBSCRIBE, "", 0, -3, Subscribe(role="observer")))[0])
    deadline = time.monotonic() + 5
    while not hub.observers and time.monotonic() < deadline:
        hub.poll(time.monotonic())
    assert len(hub.observers) == 1
    for step in range(500):  # never blocks: the stalled peer's queue is ZeroMQ's, bounded
        hub.publish(_ranks(step))
    assert hub.observer_losses > 0 and hub.observers[next(iter(hub.observers))].behind
    # a late observer still gets the latest state at once
    late = RecordClient(ctx, hub.endpoint, role="observer")
    got: list = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not got:
        hub.poll(time.monotonic())
        got = late.receive(0.05)
    assert isinstance(got[-1][1], RanksRecord) and got[-1][1].step == 499
    late.close()
    stalled.close(0)
    hub.close()
    ctx.term()


def test_the_display_gets_every_record_in_order_and_a_new_one_the_unacknowledged(
    tmp_path,
) -> None:
    ctx = zmq.Context()
    hub = RecordHub(ctx, f"ipc://{tmp_path}/hub", "run1")
    for i in range(3 * SUBSCRIBER_HWM):  # published before any display is there
        hub.publish(LogRecord(level="INFO", text=f"line {i}", time=1.0))
    first = RecordClient(ctx, hub.endpoint, role="display", run_id="run1", attempt=0, rank=0)
    seen: list = []
    deadline = time.monotonic() + 10
    while len(seen) < 3 * SUBSCRIBER_HWM and time.monotonic() < deadline:
        hub.poll(time.monotonic())
        seen += first.receive(0.01)
    assert [r.text for _, r in seen] == [f"line {i}" for i in range(3 * SUBSCRIBER_HWM)]
    first.ack(seen[9][0])  # this display showed ten of them, then died
    _pump(hub, [], time.monotonic() + 0.2)
    first.close()
    hub.new_attempt(1)
    impostor = RecordClient(ctx, hub.endpoint, role="display", run_id="run1", attempt=0, rank=0)
    second = RecordClient(ctx, hub.endpoint, role="display", run_id="run1", attempt=1, rank=0)
    replayed: list = []
    deadline = time.monotonic() + 10
    while len(replayed) < 3 * SUBSCRIBER_HWM - 10 and time.monotonic() < deadline:
        hub.poll(time.monotonic())
        replayed += second.receive(0.01)
        assert impostor.receive(0) == []  # an earlier attempt's rank 0 cannot claim it
    assert [r.text for _, r in replayed] == [f"line {i}" for i in range(10, 3 * SUBSCRIBER_HWM)]
    assert hub.dropped >= 1
    for client in (impostor, second):
        client.close()
    hub.close()
    ctx.term()
