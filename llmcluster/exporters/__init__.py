"""Exporters: telemetry observers that turn the record stream into other formats.

- ``state``: the records folded into per-GPU readings and the job's figures (pure);
- ``dcgm``: those readings as NVIDIA dcgm-exporter exposes them (names, types, HELP, label
  order), rendered as its template does;
- ``job``: the training job's own ``llmcluster_*`` series (a prometheus-client collector);
- ``settings``: what the user asks of the endpoints (light: every launcher and agent names it);
- ``prometheus_server``: the HTTP endpoints (one per node) and the observer thread, imported
  only by a process that serves them.
"""
