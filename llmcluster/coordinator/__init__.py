"""The coordinator: rendezvous and address book, health monitor, telemetry merge."""
