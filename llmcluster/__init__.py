"""llmcluster: a real multi-process imitation of a distributed LLM training run.

Processes, sockets, rendezvous, collectives and failures are real; the GPUs, the
model and the data are simulated from published physics. Entry point: ``cli.main``.
"""

__version__ = "0.1.0"
