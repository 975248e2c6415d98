"""Hostile clients against a live run, over IPC (a local run) and TCP (coordinator and nodes on
loopback with a token): forged joins, phases and stats with the run's real id (read from its
run record), replays, wrong attempts, out-of-range ranks, NaN and infinity, garbage, floods
and a subscriber that never reads. The run must finish with the clean run's exact losses,
count every drop, and keep the coordinator's memory flat; refused nodes exit 2 at once with
their reason.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from conftest import Running, cli, records

from llmcluster.control.rundir import socket_root
from llmcluster.control.security import CurveKeys, connect_curve
from llmcluster.telemetry.client import RecordClient
from llmcluster.wire import AGENT_SRC, OBSERVER_SRC, Kind, Message, encode
from llmcluster.wire.messages import (
    MAGIC,
    PROTOCOL_VERSION,
    Ack,
    AgentExit,
    AgentJoin,
    Done,
    Heartbeat,
    Join,
    PhaseState,
    RankOnly,
    RankStats,
    Stats,
    Subscribe,
)
from llmcluster.wire.messages import Phase as PhaseReport
from llmcluster.wire.records import PhaseName, RunRecord, StepRecord

RUN_ARGS = ("--ranks", "4", "--nproc-per-node", "2", "--steps", "30", "--seed", "7",
            "--model", "Llama-3-8B", "--gpu", "H100-SXM", "--speed", "60",
            "--format", "jsonl")  # fmt: skip
TOKEN = "sécret-🔑"  # any Unicode token works
FLOOD = 20_000
RSS_MARGIN_KB = 4 * 1024
REFUSAL_S = 15.0  # a refused node must be gone well before a retrying one would give up


def _losses(recs: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in recs if r["type"] == "step"]


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1])


def _stats(rank: int, step: int, **override: float) -> Stats:
    values: dict[str, Any] = dict(
        loss=3.0, local_loss=3.0, tokens=1, grad_norm=1.0, compute_s=0.1, step_time_s=0.1,
        comm_s=0.0, exposed_comm_s=0.0, arrive=1.0, wait_ms=0.0, util=50.0, temp_c=50.0,
        power_w=300.0, mem_used_gb=1.0, mem_total_gb=80.0, sm_clock_mhz=1000, throttled=False,
        seq=1, dropped=0,
    )  # fmt: skip
    values.update(override)
    return Stats(rank=rank, step=step, stats=RankStats(**values))


def _raw(head: dict[str, Any], version: int = PROTOCOL_VERSION) -> bytes:
    return MAGIC + bytes([version]) + msgpack.packb(head)


class Attacker:
    """A client of the run with no part in it (over TCP it holds the token: an insider)."""

    def __init__(self, ctx: zmq.Context, control: str, records_at: str, keys: CurveKeys | None):
        self.ctx, self.keys, self.records_at = ctx, keys, records_at
        self.observer = RecordClient(ctx, records_at, role="observer", curve=keys, silence_s=30)
        self.run = self._wait(lambda r: isinstance(r, RunRecord))
        self.control = self._socket(zmq.DEALER, control)
        self.hub = self._socket(zmq.DEALER, records_at)
        self.sent = 0  # messages that reached the coordinator and must be dropped

    def _socket(self, kind: int, endpoint: str, **options: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 20_000)  # a send that cannot leave fails the test
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        if self.keys is not None and endpoint.startswith("tcp://"):
            connect_curve(sock, self.keys)
        sock.connect(endpoint)
        return sock

    def _wait(self, predicate: Any, timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for _, record in self.observer.receive(0.1):
                if predicate(record):
                    return record
        raise AssertionError("the expected record never came")

    def steps(self, count: int) -> None:
        """Wait until ``count`` more steps have been published (the coordinator kept up)."""
        for _ in range(count):
            self._wait(lambda r: isinstance(r, StepRecord))

    def msg(self, kind: Kind, body: object, src: int, attempt: int = 0) -> bytes:
        return encode(Message(kind, self.run.run_id, attempt, src, body))[0]

    def head(self, kind: str, src: int, **fields: Any) -> bytes:
        """A hand-built message of this run (what no honest sender would build)."""
        return _raw({"k": kind, "run": self.run.run_id, "att": 0, "src": src, **fields})

    def to_control(self, *frames: bytes | list[bytes]) -> None:
        for frame in frames:
            self.control.send_multipart(frame if isinstance(frame, list) else [frame])
            self.sent += 1

    def to_hub(self, *frames: bytes) -> None:
        for frame in frames:
            self.hub.send(frame)
            self.sent += 1

    def forge(self) -> None:
        """One of every hostile message (each must be dropped and counted)."""
        world = self.run.world_size
        join = Join(rank=1, local_rank=1, node=0, pid=1, endpoints=("tcp://10.6.6.6:1",),
                    host="evil", env={}, proof="0" * 64)  # fmt: skip
        self.to_control(
            self.msg(Kind.JOIN, join, 1),  # forged join: no proof
            self.msg(Kind.JOIN, join, 1),  # replayed
            self.msg(Kind.JOIN, join, -1),  # as the coordinator
            self.msg(Kind.JOIN, join, 1, attempt=1),  # a later attempt
            self.msg(Kind.READY, RankOnly(rank=2), 2),
            self.msg(Kind.DONE, Done(rank=3, step=30), 3),
            self.msg(Kind.STATS, _stats(2, 5), 2),  # stats under another rank's name
            self.msg(Kind.STATS, _stats(2, 5), 2, attempt=7),  # a wrong attempt
            self.msg(Kind.AGENT_EXIT, AgentExit(rank=1, pid=1, exitcode=-9), AGENT_SRC),
            self.msg(Kind.HEARTBEAT, Heartbeat(t=1.0), 0),
            self.msg(
                Kind.PHASE,
                PhaseReport(
                    rank=0, step=1, name=PhaseName.EVAL, state=PhaseState.END, val_loss=2.0
                ),
                0,
            ),
            self.head("phase", 0, data={}),
            self.head("phase", 0, rank=0, step=1, name="eval", state="end", val_loss=1e6),
            self.head("stats", world + 90, **_wire(_stats(world + 90, 5))),  # out of the world
            self.head("stats", 2, **_wire(_stats(2, 5), loss=float("inf"))),
            self.head("stats", 2, **_wire(_stats(2, 5), compute_s=float("nan"))),
            self.head("join", 1, rank=1),
            b"",
            b"\xff" * 64,
            MAGIC + bytes([PROTOCOL_VERSION]) + b"\xc1garbage",
            [b"two", b"frames"],
        )
        # the hub: a display claim without the proof, foreign roles, acks and beats
        display = Subscribe(role="display", rank=0, proof="f" * 64)
        self.to_hub(
            self.msg(Kind.SUBSCRIBE, display, 0),
            self.msg(Kind.SUBSCRIBE, Subscribe(role="admin"), OBSERVER_SRC),
            self.msg(Kind.ACK, Ack(seq=10**9), 0),
            self.msg(Kind.HEARTBEAT, Heartbeat(t=1.0), OBSERVER_SRC),
            b"\x00" * 32,
        )

    def refused_joins(self) -> list[str]:
        """An agent join for a taken node, in our version and in a foreign one: both answered."""
        join = AgentJoin(node=0, host="evil", pid=1)
        self.to_control(self.msg(Kind.AGENT_JOIN, join, AGENT_SRC, attempt=0))
        foreign = {"k": "agent_join", "run": "", "att": 0, "src": AGENT_SRC, "node": 1}
        self.to_control(_raw(foreign, version=PROTOCOL_VERSION + 1))
        reasons = []
        for _ in range(2):
            assert self.control.poll(20_000), "a refused join was not answered"
            head = msgpack.unpackb(self.control.recv()[5:])
            assert head["k"] == "refused"
            reasons.append(head["reason"])
        return reasons

    def flood(self) -> None:
        """Many valid-looking messages from nobody (and garbage), as fast as they go."""
        stats = self.msg(Kind.STATS, _stats(2, 3), 2)
        for index in range(FLOOD):
            self.to_control(stats if index % 2 else os.urandom(200))
            if index % 1000 == 0:  # the observer keeps beating (the hub forgets a silent one)
                self.observer._beat()

    def lazy_subscriber(self) -> zmq.Socket:
        """An observer that subscribes and then never reads."""
        sock = self._socket(zmq.DEALER, self.records_at, RCVHWM=1, RCVBUF=4096)
        sock.send(self.msg(Kind.SUBSCRIBE, Subscribe(role="observer"), OBSERVER_SRC))
        return sock

    def close(self) -> None:
        self.observer.close()
        for sock in (self.control, self.hub):
            sock.close(0)


def _wire(stats: Stats, **override: float) -> dict[str, Any]:
    from llmcluster.wire import to_wire

    body = to_wire(stats)
    body["stats"].update(override)
    return body


def _attack(ctx: zmq.Context, pid: int, control: str, records_at: str,
            keys: CurveKeys | None, inboxes: list[str]) -> tuple[int, int, int]:  # fmt: skip
    """Run every attack on the live run; (messages to drop, rank drops, RSS growth in kB)."""
    attacker = Attacker(ctx, control, records_at, keys)
    lazy = attacker.lazy_subscriber()
    garbage = []
    try:
        attacker.steps(1)  # training (attempt 0)
        before = _rss_kb(pid)
        reasons = attacker.refused_joins()
        assert "node rank 0 is taken" in reasons[0], reasons
        assert f"protocol version {PROTOCOL_VERSION + 1}" in reasons[1], reasons
        attacker.forge()
        for inbox in inboxes:  # garbage at a rank's own peer inbox
            push = attacker._socket(zmq.PUSH, inbox)
            push.send_multipart([b"\x00junk"])
            push.send(b"short")
            garbage.append(push)
        attacker.flood()
        attacker.steps(2)
        first = _rss_kb(pid)
        attacker.flood()  # a second flood must not add to what the first one cost
        attacker.steps(2)
        grown = _rss_kb(pid) - first
        assert first - before < 4 * RSS_MARGIN_KB, f"the first flood cost {first - before} kB"
        return attacker.sent, 2 * len(inboxes), grown
    finally:
        for sock in (lazy, *garbage):
            sock.close(0)
        attacker.close()


@pytest.fixture(scope="module")
def clean_losses() -> list[tuple[int, float]]:
    done = subprocess.run(cli(*RUN_ARGS), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    recs = records(done.stdout)
    assert recs[-1]["dropped_by_coordinator"] == 0 and recs[-1]["dropped_by_ranks"] == 0
    return _losses(recs)


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def _run_file(runs: Path, pid: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for path in runs.glob("llmcluster/*.json"):
            info = json.loads(path.read_text())
            if info["pid"] == pid:
                return info
        time.sleep(0.02)
    raise AssertionError("no run file appeared")


def _rank_inbox(coordinator: int, rank: int) -> str:
    """Rank ``rank``'s IPC inbox, in the directory of the agent ``coordinator`` forked."""
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) != coordinator:
                continue
            pattern = f"{socket_root()}/llmcluster-{entry}-node-*/r{rank}"
            for path in glob.glob(pattern):
                return f"ipc://{path}"
    raise AssertionError(f"rank {rank}'s inbox not found")


@pytest.mark.timeout(180)
def test_a_local_run_shrugs_off_every_hostile_client(
    clean_table: None, runtime_dir: Path, clean_losses: list[tuple[int, float]]
) -> None:
    run = Running(*RUN_ARGS)
    ctx = zmq.Context()
    try:
        info = _run_file(runtime_dir, run.proc.pid)
        run.wait_for(lambda r: r["type"] == "step")
        inboxes = [_rank_inbox(run.proc.pid, 1)]
        sent, garbage, grown = _attack(ctx, run.proc.pid, info["control"], info["records"],
                                       None, inboxes)  # fmt: skip
        code, recs, err = run.finish(timeout_s=120)
    finally:
        run.kill()
        ctx.term()
    assert code == 0, err
    assert _losses(recs) == clean_losses
    summary = recs[-1]
    assert summary["dropped_by_coordinator"] == sent, (summary, sent)
    assert summary["dropped_by_ranks"] == garbage
    assert summary["restarts"] == 0
    assert grown < RSS_MARGIN_KB, f"the coordinator grew by {grown} kB under the flood"


def _free_port_pair() -> int:
    """A port p with p and p + 1 both free on loopback (control and records)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 65535:
            with socket.socket() as second, contextlib.suppress(OSError):
                second.bind(("127.0.0.1", port + 1))
                return port
    raise AssertionError("no free port pair")


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


def _start(started: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)  # fmt: skip
    started.append(proc)
    return proc


def _refused(started: list[subprocess.Popen[str]], port: int, *args: str) -> str:
    """Start a node that must be refused; return its one-line reason (it exits 2 at once)."""
    began = time.monotonic()
    node = _start(started, "node", "--master-addr", "127.0.0.1", "--master-port", str(port),
                  "--join-timeout", "60", *args)  # fmt: skip
    _, err = node.communicate(timeout=REFUSAL_S + 10)
    assert node.returncode == 2, err
    assert time.monotonic() - began < REFUSAL_S
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.timeout(240)
def test_coordinator_and_nodes_over_tcp_with_a_token_refuse_and_survive_every_client(
    clean_table: None, clean_losses: list[tuple[int, float]]
) -> None:
    port = _free_port_pair()
    node_args = ("--master-addr", "127.0.0.1", "--master-port", str(port), "--token", TOKEN)
    ctx = zmq.Context()
    with _processes() as started:
        coordinator = _start(started, "coordinator", "--bind", "127.0.0.1", "--port", str(port),
                             "--nnodes", "2", "--token", TOKEN, "--join-timeout", "60",
                             *RUN_ARGS[2:])  # fmt: skip
        # before the run: a wrong token, no token (the handshake fails: nothing is sent)
        wrong = _refused(started, port, "--node-rank", "0", "--token", "sécret-🔒")
        assert "refused our token, or is not llmcluster" in wrong
        assert "requires a token" in _refused(started, port, "--node-rank", "0")
        node0 = _start(started, "node", *node_args, "--node-rank", "0")
        node1 = _start(started, "node", *node_args, "--node-rank", "1")
        assert node0.stdout is not None
        seen = []
        while not seen or seen[-1]["type"] != "step":  # every node has joined: training
            line = node0.stdout.readline()
            assert line, "rank 0's output ended before the first step"
            seen.append(json.loads(line))
        # after the rendezvous: a taken node rank and a cluster of another shape
        taken = _refused(started, port, "--node-rank", "1", "--token", TOKEN)
        assert "node rank 1 is taken" in taken
        shape = _refused(started, port, "--token", TOKEN, "--nproc-per-node", "3")
        assert "--nproc-per-node 3 (the coordinator's is 2)" in shape
        with socket.create_connection(("127.0.0.1", port)) as raw:  # not even ZeroMQ
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
        keys = CurveKeys.from_token(TOKEN)
        sent, _, grown = _attack(ctx, coordinator.pid, f"tcp://127.0.0.1:{port}",
                                 f"tcp://127.0.0.1:{port + 1}", keys, [])  # fmt: skip
        out, _ = node0.communicate(timeout=120)
        _, coord_err = coordinator.communicate(timeout=30)
        node1.communicate(timeout=30)
    ctx.term()
    assert (coordinator.returncode, node0.returncode, node1.returncode) == (0, 0, 0), coord_err
    recs = [*seen, *records(out)]
    assert _losses(recs) == clean_losses
    summary = recs[-1]
    assert summary["dropped_by_coordinator"] == sent + 2, (summary, sent)  # + the two refusals
    assert summary["dropped_by_ranks"] == 0 and summary["restarts"] == 0
    assert grown < RSS_MARGIN_KB, f"the coordinator grew by {grown} kB under the flood"
    assert "failed the CurveZMQ handshake" in coord_err
    assert "node rank 1 is taken" in coord_err
