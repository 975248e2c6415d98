"""What a user asks of the metrics endpoints, and how opening one fails.

Kept apart from ``prometheus_server`` so that the command line, the launchers and every node
agent can name the settings without importing prometheus-client and the HTTP server: a
process that forks a thousand ranks pays, at every fork, for each page of modules it holds.
"""

from __future__ import annotations

from dataclasses import dataclass


class MetricsError(Exception):
    """An endpoint could not be opened (one line for the user)."""


@dataclass(frozen=True)
class MetricsSettings:
    """``--metrics-port`` and ``--metrics-bind``."""

    port: int
    bind: str = "127.0.0.1"
