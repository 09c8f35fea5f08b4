"""The orchestrator service: OrchestratorService over the core `Orchestrator`."""
