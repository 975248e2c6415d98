"""CurveZMQ for every TCP socket of a run with a token, and the proofs that bind rank identities.

Keys: ``CurveKeys.from_token`` runs scrypt over the token's UTF-8 bytes (any Unicode token;
undecodable command-line bytes too) with the fixed salt ``SALT`` and cuts the 64 bytes it
yields into two Curve25519 secret keys: the *server* pair (the coordinator's control and
record sockets, and every rank's TCP inbox) and the *client* pair (every agent, rank,
display and observer connecting to them). Both sides derive the same keys, so nothing is
exchanged and nothing secret ever crosses the wire: a client that does not hold the token
cannot build the handshake for the server's public key (the server drops it), a server that
does not hold it cannot answer the client's (a node refuses an impostor coordinator), and
the ZAP handler (``Gatekeeper``) admits only the token's client key. CurveZMQ handshakes use
fresh ephemeral keys each time: a recorded handshake or message replays to nothing.

Proofs: a run-wide random secret (the coordinator's alone) gives one nonce per attempt and
node, sent to that node's agent in SPAWN; the agent hands each rank it forks its own
``rank_proof`` in memory, and the rank shows it in JOIN (and rank 0 when it claims the
display). A rank identity is therefore claimed only by the process its agent spawned.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

import zmq
from zmq.utils import z85

SALT = b"llmcluster/curvezmq/v1"  # fixed and public: the token is the only secret input
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1  # ~16 MiB, ~50 ms: slows guessing a weak token
# a server sees a client without the token as a protocol (bad box, wrong mechanism) or
# authentication failure; a client of the wrong server key sees no detail (it is dropped)
HANDSHAKE_REFUSED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
HANDSHAKE_FAILED = HANDSHAKE_REFUSED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def token_bytes(token: str) -> bytes:
    """The token as bytes: UTF-8, with bytes the command line could not decode kept as such."""
    return token.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class CurveKeys:
    """The run's two Curve25519 key pairs, Z85-encoded (what pyzmq's socket options take)."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def from_token(cls, token: str) -> CurveKeys | None:
        """The keys every holder of ``token`` derives alike; None without a token."""
        if not token:
            return None
        seed = hashlib.scrypt(
            token_bytes(token), salt=SALT, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=64
        )
        server, client = z85.encode(seed[:32]), z85.encode(seed[32:])
        return cls(zmq.curve_public(server), server, zmq.curve_public(client), client)


def over_tcp(endpoint: str, keys: CurveKeys | None) -> CurveKeys | None:
    """The keys to use towards ``endpoint``: CurveZMQ over TCP, nothing over IPC (whose
    private 0700 directory is the protection)."""
    return keys if endpoint.startswith("tcp://") else None


def serve_curve(sock: zmq.Socket, keys: CurveKeys) -> None:
    """Make ``sock`` a CURVE server for the endpoints it binds from now on."""
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.server_secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_SERVER, 1)


def connect_curve(sock: zmq.Socket, keys: CurveKeys) -> None:
    """Make ``sock`` a CURVE client of the run's server key for the endpoints it connects to."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.client_public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.client_secret)


class _TokenClients:
    """ZAP credentials provider: only the token's client key is admitted."""

    def __init__(self, keys: CurveKeys) -> None:
        self.allowed = keys.client_public
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        if hmac.compare_digest(key, self.allowed):
            return True
        self.denied += 1
        return False


def prepare_gatekeeper() -> type:
    """zmq.auth's ThreadAuthenticator, imported on first use: it brings asyncio, ssl and
    inspect (4.6 MB), which every process of a run without CURVE would otherwise hold (and
    copy the page tables of at every fork). A node agent whose ranks will serve CURVE calls
    this before it forks them, so they inherit the import instead of each doing it."""
    from zmq.auth.thread import ThreadAuthenticator

    return ThreadAuthenticator


class Gatekeeper:
    """The ZAP handler of one context (a thread; started before any CURVE server binds)."""

    def __init__(self, ctx: zmq.Context, keys: CurveKeys) -> None:
        log = logging.getLogger("llmcluster.zap")
        log.addHandler(logging.NullHandler())
        log.propagate = False
        self.clients = _TokenClients(keys)
        self._auth = prepare_gatekeeper()(ctx, log=log)
        self._auth.start()
        self._auth.configure_curve_callback("*", credentials_provider=self.clients)

    def stop(self) -> None:
        """Stop the handler thread (before the context is terminated)."""
        self._auth.stop()


class HandshakeWatch:
    """Watches a socket's handshakes: did one succeed, how many failed (``failures``: the
    events that count; a server leaves out a bare connect-and-close, e.g. a healthcheck)?"""

    def __init__(self, sock: zmq.Socket, failures: int = HANDSHAKE_FAILED) -> None:
        self._sock = sock
        self._failure_events = failures
        self._monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | failures)
        self.succeeded = False
        self.failures = 0
        self.refusals = 0  # of them, definite: a mechanism mismatch or the ZAP handler's no

    @property
    def refused(self) -> bool:
        """The peer will not have us: a definite refusal, or repeated failures (a server of
        another key drops us without a word), and never a handshake that passed."""
        return not self.succeeded and (self.refusals > 0 or self.failures >= 2)

    @property
    def fd(self) -> zmq.Socket:
        """The monitor socket, to poll alongside the watched socket."""
        return self._monitor

    def update(self) -> int:
        """Read the events that arrived (non-blocking); returns how many handshakes failed."""
        failed = 0
        while self._monitor.poll(0):
            frames = self._monitor.recv_multipart()
            event = int.from_bytes(frames[0][:2], "little")
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.succeeded = True
            elif event & self._failure_events:
                failed += 1
                self.refusals += bool(event & HANDSHAKE_REFUSED)
        self.failures += failed
        return failed

    def close(self) -> None:
        """Stop watching."""
        self._sock.disable_monitor()
        self._monitor.close(0)


def attempt_nonce(run_secret: str, attempt: int, node: int) -> str:
    """The nonce of ``node``'s ranks in ``attempt`` (sent to that node's agent only)."""
    message = f"nonce:{attempt}:{node}".encode()
    return hmac.new(run_secret.encode(), message, hashlib.sha256).hexdigest()


def rank_proof(nonce: str, rank: int) -> str:
    """What ``rank`` shows to prove that its agent spawned it (handed over at fork)."""
    return hmac.new(nonce.encode(), f"rank:{rank}".encode(), hashlib.sha256).hexdigest()


def proof_ok(offered: str, expected: str) -> bool:
    """Constant-time comparison of any offered string with the expected proof."""
    return hmac.compare_digest(offered.encode("utf-8", "surrogatepass"), expected.encode())
