"""The `AgentAdapter` protocol: what executes one agent key, in-process or behind gRPC."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from dagwire.models import Artifact, TaskNode

__all__ = ["AgentAdapter", "AgentFunction", "FunctionAdapter"]


@runtime_checkable
class AgentAdapter(Protocol):
    """Executes tasks of the agent keys it is registered for.

    `execute` gets the task (with resolved `params` and the 1-based `attempt`), the artifacts of
    the task's direct dependencies in `depends_on` order (with their `content`), and the run's
    trace id; it returns the task's output artifacts. Raising fails the attempt, which is retried
    per the task's retry policy unless the exception is a `dagwire.errors.NonRetryableError`.
    """

    async def execute(
        self,
        task: TaskNode,
        input_artifacts: list[Artifact],
        trace_id: str,
    ) -> list[Artifact]: ...


AgentFunction = Callable[[TaskNode, list[Artifact], str], Awaitable[list[Artifact]]]


class FunctionAdapter:
    """An adapter made of one async function with `execute`'s signature.

    Example:
        async def shout(task, inputs, trace_id):
            return [Artifact(name="out", content=task.params["text"].upper().encode())]

        dispatcher.register_adapter("shout", FunctionAdapter(shout))
    """

    def __init__(self, function: AgentFunction) -> None:
        self._function = function

    async def execute(
        self,
        task: TaskNode,
        input_artifacts: list[Artifact],
        trace_id: str,
    ) -> list[Artifact]:
        return await self._function(task, input_artifacts, trace_id)

    def __repr__(self) -> str:
        return f"FunctionAdapter({getattr(self._function, '__qualname__', self._function)!r})"
