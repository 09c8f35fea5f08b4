"""Run events: what happened in a run, numbered, replayable, and followed live (the source of
the orchestrator service's `WatchRun`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from dagwire.models import Artifact, RunStatus, RunSummary, TaskStatus, utc_now

__all__ = ["EventLog", "RunEvent", "RunEventKind"]


class RunEventKind(StrEnum):
    """What a `RunEvent` reports."""

    TASK_STARTED = "task_started"
    ATTEMPT_FAILED = "attempt_failed"
    TASK_FINISHED = "task_finished"
    RUN_FINISHED = "run_finished"


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One numbered event of a run; `sequence` starts at 1 and has no gaps.

    `task_started` carries `node_id`, `attempt`, `agent`; `attempt_failed` the `error`, whether
    the task `will_retry` and after how many seconds (`retry_delay`); `task_finished` the task's
    final `task_status`, `attempts`, `error` and `artifacts` (content not loaded); `run_finished`
    the `run_status` and the whole `summary`. It is always the last event of a run.
    `duration` (seconds) is how long the failed attempt, or the finished task since its first
    start, took; None when not known (the orchestrator service fills it on the wire).
    """

    sequence: int
    run_id: str
    kind: RunEventKind
    time: datetime = field(default_factory=utc_now)
    node_id: str = ""
    attempt: int = 0
    agent: str = ""
    task_status: TaskStatus | None = None
    error: str | None = None
    will_retry: bool = False
    retry_delay: float = 0.0
    attempts: int = 0
    artifacts: tuple[Artifact, ...] = ()
    run_status: RunStatus | None = None
    summary: RunSummary | None = None
    duration: float | None = None


class EventLog:
    """The events of one run: appended by the run, replayed and followed by any number of readers.

    Readers never miss an event and never slow the writer: appending wakes every waiting reader
    through one shared future, and each reader walks the list at its own pace.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._events: list[RunEvent] = []
        self._closed = False
        self._changed: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        """True once the run finished (its `run_finished` event is the last one)."""
        return self._closed

    def __len__(self) -> int:
        return len(self._events)

    def append(self, kind: RunEventKind, **fields: object) -> RunEvent:
        """Add the next event (numbered here) and wake readers; `run_finished` closes the log."""
        if self._closed:
            raise RuntimeError(f"run {self.run_id} already finished; no more events")
        event = RunEvent(len(self._events) + 1, self.run_id, kind, **fields)  # type: ignore[arg-type]
        self._events.append(event)
        if kind is RunEventKind.RUN_FINISHED:
            self._closed = True
        if self._changed is not None:
            if not self._changed.done():
                self._changed.set_result(None)
            self._changed = None
        return event

    def snapshot(self, after_sequence: int = 0) -> list[RunEvent]:
        """The events numbered above `after_sequence`, as recorded so far."""
        return self._events[max(after_sequence, 0) :]

    async def follow(self, after_sequence: int = 0) -> AsyncIterator[RunEvent]:
        """Replay the events after `after_sequence`, then yield new ones until the run finishes."""
        position = max(after_sequence, 0)
        while True:
            while position < len(self._events):
                yield self._events[position]
                position += 1
            if self._closed:
                return
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._changed)
