"""Launch: turn a checked configuration into running processes, one code path per mode.

- ``local``: ``llmcluster --ranks N``: a private socket directory, one forked node agent per
  node (supervised as processes), the coordinator in this process;
- ``remote``: ``llmcluster coordinator`` (TCP, token) and ``llmcluster node`` (one agent);
- ``common``: the pieces every mode shares (signals, speed, stale directories).
"""
