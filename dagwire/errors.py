"""The one exception tree: every error dagwire raises descends from `DagwireError`."""

from __future__ import annotations

__all__ = [
    "AdapterNotFoundError",
    "AttemptTimeoutError",
    "DagwireError",
    "NoHealthyAdapterError",
    "NonRetryableError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RunAlreadyFinishedError",
    "StoreUnavailableError",
    "UnauthenticatedError",
    "WorkflowValidationError",
]


class DagwireError(Exception):
    """Root of every dagwire error."""


class WorkflowValidationError(DagwireError, ValueError):
    """A workflow spec (or its variables) is invalid; nothing was dispatched or recorded.

    Attributes:
        node_id: the task the problem is in, when there is one.
        field: dotted path of the offending field, when there is one.
        line: 1-based line in the YAML/JSON source, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        node_id: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.field = field
        self.line = line


class AdapterNotFoundError(DagwireError, LookupError):
    """No adapter serves the agent key."""

    def __init__(self, agent_key: str, message: str | None = None) -> None:
        super().__init__(message or f"no adapter is registered for agent key {agent_key!r}")
        self.agent_key = agent_key

    def __str__(self) -> str:  # LookupError would otherwise quote the message
        return str(self.args[0])


class NoHealthyAdapterError(DagwireError):
    """Adapters serve the agent key, but none of them is healthy now (retryable)."""

    def __init__(self, agent_key: str, message: str | None = None) -> None:
        super().__init__(message or f"no healthy adapter for agent key {agent_key!r}")
        self.agent_key = agent_key


class NotFoundError(DagwireError, LookupError):
    """An id (run, artifact, record) is unknown to the store."""

    def __init__(self, message: str, *, kind: str = "", id: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.id = id

    def __str__(self) -> str:
        return str(self.args[0])


class NonRetryableError(DagwireError):
    """Raised by an adapter to fail the attempt without any further retry."""


class ResourceExhaustedError(DagwireError):
    """An adapter is overloaded; retry no sooner than `retry_after` seconds when given."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AttemptTimeoutError(DagwireError, TimeoutError):
    """One attempt of a task ran past the task's `timeout`."""

    def __init__(self, node_id: str, attempt: int, timeout: float) -> None:
        super().__init__(f"task {node_id!r} attempt {attempt} timed out after {timeout:g} s")
        self.node_id = node_id
        self.attempt = attempt
        self.timeout = timeout


class RunAlreadyFinishedError(DagwireError):
    """An operation needs a running run (e.g. cancel) but the run already finished."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"run {run_id!r} already finished with status {status!r}")
        self.run_id = run_id
        self.status = status


class LeaseLostError(DagwireError):
    """A write for a run came from an orchestrator whose lease of it is superseded: another
    orchestrator claimed a newer lease epoch and owns the run now (docs/durability.md)."""

    def __init__(self, run_id: str, epoch: int = 0, message: str | None = None) -> None:
        super().__init__(
            message
            or f"lease epoch {epoch} of run {run_id!r} is superseded: another orchestrator owns it"
        )
        self.run_id = run_id
        self.epoch = epoch


class StoreUnavailableError(DagwireError):
    """The execution or artifact store did not answer (retryable)."""


class UnauthenticatedError(DagwireError):
    """The call carried no token, or one the server does not know (UNAUTHENTICATED)."""


class PermissionDeniedError(DagwireError):
    """The caller is known but may not do this (PERMISSION_DENIED); the message names the
    principal and what it may not do."""
