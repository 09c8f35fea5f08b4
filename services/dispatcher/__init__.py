"""The dispatcher service: DispatcherService (adapter registry, health, routing, balancing)."""
