"""The worker side: node agents that fork and supervise ranks, and the rank processes."""
