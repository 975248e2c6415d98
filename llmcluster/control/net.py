"""Network helpers of the control plane: where this host is, and how it reaches the coordinator."""

from __future__ import annotations

import socket


def reachable(endpoint: str, control: str) -> str:
    """A coordinator endpoint bound on a wildcard, as this node reaches it (the control host)."""
    host = control.rsplit(":", 1)[0].removeprefix("tcp://")
    for wildcard in ("tcp://0.0.0.0:", "tcp://*:"):
        if endpoint.startswith(wildcard):
            return f"tcp://{host}:{endpoint[len(wildcard) :]}"
    return endpoint


def outgoing_address(host: str, port: int) -> str:
    """This machine's address on the route to ``host`` (what peers on other hosts can reach)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((socket.gethostbyname(host), port))  # UDP: no packet is sent
        return probe.getsockname()[0]


def local_host_name() -> str:
    """This machine's short host name, as NCCL and torchrun print it."""
    return socket.gethostname().split(".")[0] or "localhost"
