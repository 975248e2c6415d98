"""Garbage on every listening socket during a run: it is dropped and counted, results stay right."""

from __future__ import annotations

import contextlib
import glob

import msgpack
import numpy as np
import zmq
from conftest import Running, own_processes

from llmcluster.comm.frames import pack_header, run_tag
from llmcluster.control.rundir import socket_root
from llmcluster.wire import Kind, Message, encode
from llmcluster.wire.codec import HEADER


def garbage_frames(rng: np.random.Generator, run_id: str, count: int) -> list[list[bytes]]:
    """Random, truncated, oversized and wrong-typed messages."""
    out: list[list[bytes]] = []
    for i in range(count):
        choice = i % 5 if i % 50 else 5  # an oversized frame now and then
        if choice == 0:
            out.append([rng.bytes(int(rng.integers(0, 300)))])
        elif choice == 1:
            out.append([HEADER + rng.bytes(int(rng.integers(0, 40)))])
        elif choice == 2:  # wrong field types under the right run id
            head = {"k": "stats", "run": run_id, "att": 0, "src": 3, "rank": "three",
                    "step": -1.5, "stats": [1, 2]}  # fmt: skip
            out.append([HEADER + msgpack.packb(head)])
        elif choice == 3:  # a plausible message from another run
            msg = Message(Kind.STATS, "not-this-run", 0, 1, {"rank": 1, "step": 1, "stats": {}})
            out.append(encode(msg))
        elif choice == 4:  # a peer frame of this run: lying sizes, too many frames, bad dtype
            data = np.zeros(int(rng.integers(1, 5)))
            head = pack_header(run_tag(run_id), 0, 0, 10**9, 0, data)
            lie = [[head + b"x" * 13], [head, b"x" * 13, b"y"], [head[:-3]],
                   [head.replace(b"d", b"O", 1) + data.tobytes()]][i // 5 % 4]  # fmt: skip
            out.append(lie)
        else:  # oversized: beyond every socket's MAXMSGSIZE
            out.append([HEADER + b"\0" * (5 << 20)])
    return out


def test_fuzzing_every_socket_changes_nothing(clean_table: None) -> None:
    run = Running("--ranks", "8", "--nproc-per-node", "4", "--steps", "60", "--format", "jsonl",
                  "--model", "Llama-3-8B", "--gpu", "H100-SXM", "--speed", "1500")  # fmt: skip
    ctx = zmq.Context()
    try:
        run_record = run.wait_for(lambda r: r["type"] == "run")
        run.wait_for(lambda r: r["type"] == "step" and r["step"] >= 2)
        pids = [run.proc.pid, *run_record["pids"]]
        root = socket_root()
        coordinator = glob.glob(f"{root}/llmcluster-{run.proc.pid}-*/control")
        ours = {p.pid for p in own_processes()}  # this run's agents, not other runs on the host
        inboxes = [path for pid in ours for path in glob.glob(f"{root}/llmcluster-{pid}-node-*/r*")]
        assert coordinator and len(inboxes) >= 8 and pids
        rng = np.random.default_rng(7)
        frames = garbage_frames(rng, run_record["run_id"], 1200)
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, b"r3")  # even pretending to be rank 3
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"ipc://{coordinator[0]}")
        pushers = []
        for path in inboxes:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.setsockopt(zmq.SNDHWM, 100000)
            push.connect(f"ipc://{path}")
            pushers.append(push)
        for sock in (dealer, *pushers):
            sock.setsockopt(zmq.SNDTIMEO, 2000)  # an oversized frame makes the peer reconnect
        for i, message in enumerate(frames):
            for sock in (dealer, pushers[i % len(pushers)]):
                with contextlib.suppress(zmq.Again):
                    sock.send_multipart(message)
        code, recs, err = run.finish(timeout_s=90)
    finally:
        run.kill()
        ctx.destroy(0)
    assert code == 0, err
    steps = [r for r in recs if r["type"] == "step"]
    assert [s["step"] for s in steps][-1] == 60, [r["type"] for r in recs[-8:]]
    for ranks in (r for r in recs if r["type"] == "ranks"):
        assert len({x["loss"] for x in ranks["ranks"]}) == 1
    summary = recs[-1]
    assert summary["exit"] == "completed"
    # ranks report their counts with each step, so the last few frames may go uncounted
    assert summary["dropped_by_coordinator"] > 500
    assert summary["dropped_by_ranks"] > 500
