"""The Prometheus endpoints: one observer thread folding records, one HTTP server per node.

dcgm-exporter runs once per host and reports that host's GPUs, so each simulated node
gets its own endpoint: a local run serves node ``n`` on ``--metrics-port`` + ``n`` (one
scrape target per host, as Prometheus sees a real cluster), and ``llmcluster node``
serves its own node on ``--metrics-port``. Node 0's endpoint also carries the job's
series. The observer subscribes to the record hub read-only, so the endpoints can never
slow the run; they close when the run ends.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import zmq
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from llmcluster.control.security import CurveKeys
from llmcluster.exporters import dcgm
from llmcluster.exporters.job import JobCollector
from llmcluster.exporters.settings import MetricsError, MetricsSettings
from llmcluster.exporters.state import MetricsState
from llmcluster.telemetry.client import RecordClient

DEFAULT_PORT = 9400  # dcgm-exporter's
RECEIVE_S = 0.25


class _Handler(BaseHTTPRequestHandler):
    server: _NodeServer

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404, "try /metrics")
            return
        body = self.server.body()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # scrapes every second would drown the run's own output


class _NodeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], exporter: MetricsExporter) -> None:
        super().__init__(address, _Handler)
        self.exporter = exporter
        self.node = 0
        self.serving = False
        self.registry = CollectorRegistry()

    def serve(self, node: int) -> None:
        self.node, self.serving = node, True
        self.registry.register(JobCollector(self.exporter.state, self.exporter.lock, node,
                                            job=node == 0))  # fmt: skip

    def body(self) -> bytes:
        with self.exporter.lock:
            text = dcgm.render(dcgm.families(self.exporter.state, self.node))
        return text.encode() + generate_latest(self.registry)


class MetricsExporter:
    """Binds the endpoints at once (so a taken port is a clean error), serves once started."""

    def __init__(self, settings: MetricsSettings, count: int) -> None:
        self.state = MetricsState()
        self.lock = threading.Lock()
        self.servers: list[_NodeServer] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        try:
            for index in range(count):
                self.servers.append(_NodeServer((settings.bind, settings.port + index), self))
        except OSError as exc:
            self.close()
            port = settings.port + len(self.servers)
            raise MetricsError(f"--metrics-port: cannot listen on {settings.bind}:{port} "
                               f"({exc.strerror or exc})") from None  # fmt: skip

    def start(self, records: str, nodes: Sequence[int], curve: CurveKeys | None = None) -> None:
        """Subscribe to the hub at ``records`` (with the run's CurveZMQ keys over TCP); server
        ``i`` reports node ``nodes[i]``."""
        for server, node in zip(self.servers, nodes, strict=True):
            server.serve(node)
            self._spawn(server.serve_forever, f"metrics-{node}")
        self._spawn(lambda: self._observe(records, curve), "metrics-observer")

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _observe(self, records: str, curve: CurveKeys | None) -> None:
        ctx = zmq.Context()
        client = RecordClient(ctx, records, role="observer", curve=curve)
        try:
            while not self._stop.is_set():
                received = client.receive(RECEIVE_S)
                with self.lock:
                    for _, record in received:
                        self.state.update(record)
        finally:
            client.close()
            ctx.term()

    def close(self) -> None:
        """Stop serving and observing; every socket is closed when this returns."""
        self._stop.set()
        for server in self.servers:
            if server.serving:
                server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()
