"""Workflow spec v1 (docs/contracts.md §3): parsing, validation and `${user.*}` resolution."""

from dagwire.spec._model import RetryPolicy, TaskSpec, WorkflowSpec

__all__ = ["RetryPolicy", "TaskSpec", "WorkflowSpec"]
