"""The in-process `Dispatcher`: maps agent keys to adapters and forwards each task to one."""

from __future__ import annotations

from typing import Protocol

from dagwire.errors import AdapterNotFoundError
from dagwire.models import Artifact, TaskNode
from dagwire.runtime.adapter import AgentAdapter

__all__ = ["Dispatcher", "TaskDispatcher"]


class TaskDispatcher(Protocol):
    """What the orchestrator needs from a dispatcher (in-process, or a client of the service).

    Two optional class attributes change how the orchestrator calls it:
    `applies_timeouts = True`: the dispatcher enforces `task.timeout` itself on the adapter
    call only (so time queued for a free adapter does not count) and raises
    `AttemptTimeoutError`; otherwise the orchestrator wraps the whole `dispatch` in the timeout.
    `accepts_references = True`: input artifacts may arrive with `content=None` and an
    `artifact_id` (held in the store); otherwise the orchestrator loads their content first.
    """

    async def dispatch(
        self,
        task: TaskNode,
        input_artifacts: list[Artifact],
        trace_id: str,
    ) -> list[Artifact]: ...


class Dispatcher:
    """A registry of adapters by agent key; `dispatch` awaits the adapter's `execute`."""

    def __init__(self) -> None:
        self._adapters: dict[str, AgentAdapter] = {}

    def register_adapter(self, agent_key: str, adapter: AgentAdapter) -> None:
        """Route `agent_key` to `adapter`, replacing any adapter registered for it before.

        Raises:
            ValueError: the key is empty or the adapter has no `execute` method.
        """
        if not agent_key:
            raise ValueError("agent key must be a non-empty string")
        if not callable(getattr(adapter, "execute", None)):
            raise ValueError(
                f"adapter for {agent_key!r} has no execute(task, input_artifacts, trace_id) method"
            )
        self._adapters[agent_key] = adapter

    def unregister_adapter(self, agent_key: str) -> None:
        """Stop routing `agent_key`; unknown keys are ignored."""
        self._adapters.pop(agent_key, None)

    def get_adapter(self, agent_key: str) -> AgentAdapter:
        """The adapter serving `agent_key`.

        Raises:
            AdapterNotFoundError: no adapter is registered for the key.
        """
        try:
            return self._adapters[agent_key]
        except KeyError:
            raise AdapterNotFoundError(agent_key, self._not_found_message(agent_key)) from None

    @property
    def agent_keys(self) -> list[str]:
        """The registered agent keys, sorted."""
        return sorted(self._adapters)

    async def dispatch(
        self,
        task: TaskNode,
        input_artifacts: list[Artifact],
        trace_id: str,
    ) -> list[Artifact]:
        """Run `task` on the adapter registered for `task.agent` and return its artifacts.

        Raises:
            AdapterNotFoundError: no adapter serves `task.agent`.
            Exception: whatever the adapter raised.
        """
        adapter = self.get_adapter(task.agent)
        return await adapter.execute(task, input_artifacts, trace_id)

    def _not_found_message(self, agent_key: str) -> str:
        known = ", ".join(repr(k) for k in self.agent_keys) or "none"
        return f"no adapter is registered for agent key {agent_key!r} (registered: {known})"
