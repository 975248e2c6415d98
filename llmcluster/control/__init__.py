"""Control plane helpers: torchrun environment, heartbeats, machine limits."""
