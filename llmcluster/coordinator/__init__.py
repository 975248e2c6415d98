"""The coordinator: a pure state machine (``machine``, on ``rendezvous``, ``progress`` and
``health``) deciding the run, and the I/O shell (``server``) that carries out its actions."""
