"""CurveZMQ keys from the token, and what a client with or without it gets from each server."""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np
import pytest
import zmq

from llmcluster.comm import PeerMesh
from llmcluster.control.link import ControlLink
from llmcluster.control.security import (
    CurveKeys,
    Gatekeeper,
    HandshakeWatch,
    attempt_nonce,
    connect_curve,
    proof_ok,
    rank_proof,
    serve_curve,
)
from llmcluster.telemetry.client import RecordClient
from llmcluster.telemetry.hub import RecordHub
from llmcluster.wire import AGENT_SRC, OBSERVER_SRC, Kind, Message, encode
from llmcluster.wire.messages import AgentJoin, Subscribe
from llmcluster.wire.records import LogRecord


def test_keys_are_the_tokens_alone_and_any_token_works() -> None:
    assert CurveKeys.from_token("") is None
    tokens = ["s3cret", "sécret", "秘密🔑", "bad\udcffbytes"]  # the last: undecodable argv
    keys = [CurveKeys.from_token(token) for token in tokens]
    assert keys == [CurveKeys.from_token(token) for token in tokens]  # both sides derive alike
    publics = {k.server_public for k in keys if k} | {k.client_public for k in keys if k}
    assert len(publics) == 2 * len(tokens)
    for pair in keys:
        assert pair is not None and len(pair.server_secret) == 40  # Z85 of 32 bytes
        assert zmq.curve_public(pair.server_secret) == pair.server_public


def test_proofs_differ_per_rank_node_and_attempt_and_compare_safely() -> None:
    nonces = {attempt_nonce("run-secret", a, n) for a in range(3) for n in range(3)}
    assert len(nonces) == 9
    nonce = attempt_nonce("run-secret", 0, 0)
    proof = rank_proof(nonce, 1)
    assert proof != rank_proof(nonce, 0) and proof_ok(proof, proof)
    assert not proof_ok("é" * 64, proof) and not proof_ok("", proof)


def _tcp_hub(ctx: zmq.Context, keys: CurveKeys) -> RecordHub:
    return RecordHub(ctx, "tcp://127.0.0.1:*", "run1", curve=keys)


def _collect(hub: RecordHub, client: RecordClient, want: int, timeout_s: float) -> list:
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        hub.poll(time.monotonic())
        hub.publish(LogRecord(level="INFO", text="x", time=1.0))
        got += client.receive(0.02)
    return got


@pytest.mark.timeout(60)
def test_the_hub_serves_the_token_and_nobody_else() -> None:
    ctx = zmq.Context()
    keys = CurveKeys.from_token("sécret")
    assert keys is not None
    gate = Gatekeeper(ctx, keys)
    hub = _tcp_hub(ctx, keys)
    try:
        insider = RecordClient(ctx, hub.endpoint, role="observer", curve=keys)
        assert len(_collect(hub, insider, 3, 20)) >= 3
        for wrong in (CurveKeys.from_token("secret"), None):
            outsider = ctx.socket(zmq.DEALER)
            outsider.setsockopt(zmq.LINGER, 0)
            if wrong is not None:
                connect_curve(outsider, wrong)
            watch = HandshakeWatch(outsider)  # before the connect: no event is missed
            outsider.connect(hub.endpoint)
            subscribe = Message(Kind.SUBSCRIBE, "", 0, OBSERVER_SRC, Subscribe(role="observer"))
            outsider.send(encode(subscribe)[0])
            deadline = time.monotonic() + 20
            while not watch.refused and time.monotonic() < deadline:
                hub.poll(time.monotonic())
                watch.update()
                time.sleep(0.01)
            assert watch.refused and len(hub.observers) == 1  # only the insider
            hub.publish(LogRecord(level="INFO", text="x", time=1.0))
            assert outsider.poll(100) == 0
            watch.close()
            outsider.close()
        insider.close()
    finally:
        hub.close()
        gate.stop()
        ctx.destroy(0)


@pytest.mark.timeout(60)
def test_a_tcp_inbox_takes_only_the_tokens_clients() -> None:
    ctx = zmq.Context()
    keys = CurveKeys.from_token("mesh token")
    assert keys is not None
    gate = Gatekeeper(ctx, keys)

    def make(rank: int) -> PeerMesh:
        return PeerMesh(ctx, rank=rank, run_id="run1", bind=["tcp://127.0.0.1:*"], node=rank,
                        timeout_s=10, service=lambda: None, curve=keys)  # fmt: skip

    meshes = [make(0), make(1)]
    try:
        book = [m.endpoints for m in meshes]
        for mesh in meshes:
            mesh.set_peers(book, [0, 1])
        meshes[0].send(1, 1, 0, np.arange(4.0))
        assert meshes[1].recv(0, 1, 0).tolist() == [0.0, 1.0, 2.0, 3.0]
        wrong = CurveKeys.from_token("not it")
        assert wrong is not None
        plain = ctx.socket(zmq.PUSH)  # no token: its handshake fails
        guesser = ctx.socket(zmq.PUSH)  # knows the server key, not the token's client key
        guess = dataclasses.replace(keys, client_public=wrong.client_public,
                                    client_secret=wrong.client_secret)  # fmt: skip
        connect_curve(guesser, guess)
        watches = []
        for sock in (plain, guesser):
            sock.setsockopt(zmq.LINGER, 0)
            watches.append(HandshakeWatch(sock))
            sock.connect(book[1][0])
            with contextlib.suppress(zmq.Again):
                sock.send(b"junk", zmq.NOBLOCK)
        deadline = time.monotonic() + 20
        while not all(w.refused for w in watches) and time.monotonic() < deadline:
            for watch in watches:
                watch.update()
            time.sleep(0.01)
        assert all(w.refused for w in watches)
        assert gate.clients.denied >= 1  # the ZAP handler turned the guesser away
        meshes[0].send(1, 2, 0, np.ones(2))
        assert meshes[1].recv(0, 2, 0).tolist() == [1.0, 1.0]
        assert meshes[1].dropped == 0  # no junk ever reached the inbox
        for watch in watches:
            watch.close()
        plain.close()
        guesser.close()
    finally:
        for mesh in meshes:
            mesh.close()
        gate.stop()
        ctx.destroy(0)


@pytest.mark.timeout(60)
def test_a_node_never_talks_to_an_impostor_coordinator() -> None:
    ctx = zmq.Context()
    ours, theirs = CurveKeys.from_token("the run's"), CurveKeys.from_token("an impostor's")
    assert ours is not None and theirs is not None
    impostor = ctx.socket(zmq.ROUTER)  # answers at the coordinator's address, without the token
    serve_curve(impostor, theirs)
    port = impostor.bind_to_random_port("tcp://127.0.0.1")
    link = ControlLink(ctx, endpoint=f"tcp://127.0.0.1:{port}", identity=b"agent", run_id=None,
                       src=AGENT_SRC, timeout_s=30, curve=ours, watch_handshakes=True)  # fmt: skip
    try:
        link.send(Kind.AGENT_JOIN, AgentJoin(node=0, host="h", pid=1))
        assert link.handshakes is not None
        deadline = time.monotonic() + 20
        while not link.handshakes.refused and time.monotonic() < deadline:
            link.handshakes.update()
            time.sleep(0.01)
        assert link.handshakes.refused
        assert impostor.poll(200) == 0  # the join never reached it
    finally:
        link.close()
        impostor.close(0)
        ctx.destroy(0)
