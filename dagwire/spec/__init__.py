"""Workflow spec v1 (DESIGN §3): parsing, validation and `${user.*}` resolution."""

from dagwire.spec._model import RetryPolicy, TaskSpec, WorkflowSpec

__all__ = ["RetryPolicy", "TaskSpec", "WorkflowSpec"]
