"""Run events: what happened in a run, numbered, replayable, and followed live (the source of
the orchestrator service's `WatchRun`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from dagwire.models import (
    Artifact,
    NodeSummary,
    RunStatus,
    RunSummary,
    TaskStatus,
    artifact_from_json,
    artifact_to_json,
    iso,
    parse_iso,
    utc_now,
)

__all__ = ["EventLog", "RunEvent", "RunEventKind", "event_from_json", "event_to_json"]


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

    def to_json(self) -> dict[str, Any]:
        """This event as JSON (how the execution store keeps it); see `event_from_json`."""
        return event_to_json(self)


def event_to_json(event: RunEvent) -> dict[str, Any]:
    """`event` as a JSON object holding only the fields its kind uses."""
    data: dict[str, Any] = {
        "sequence": event.sequence,
        "kind": str(event.kind),
        "time": iso(event.time),
    }
    if event.node_id:
        data["node_id"] = event.node_id
    if event.attempt:
        data["attempt"] = event.attempt
    if event.agent:
        data["agent"] = event.agent
    if event.task_status is not None:
        data["task_status"] = str(event.task_status)
    if event.error is not None:
        data["error"] = event.error
    if event.will_retry:
        data["will_retry"] = True
    if event.retry_delay:
        data["retry_delay"] = event.retry_delay
    if event.attempts:
        data["attempts"] = event.attempts
    if event.artifacts:
        data["artifacts"] = [artifact_to_json(a) for a in event.artifacts]
    if event.run_status is not None:
        data["run_status"] = str(event.run_status)
    if event.summary is not None:
        data["summary"] = {
            "name": event.summary.name,
            "trace_id": event.summary.trace_id,
            "error": event.summary.error,
            "nodes": {k: v.to_json() for k, v in event.summary.nodes.items()},
        }
    if event.duration is not None:
        data["duration"] = event.duration
    return data


def event_from_json(run_id: str, data: dict[str, Any]) -> RunEvent:
    """The event `event_to_json` made, for `run_id`."""
    run_status = RunStatus(data["run_status"]) if data.get("run_status") else None
    summary = None
    if (body := data.get("summary")) is not None and run_status is not None:
        summary = RunSummary(
            run_id=run_id,
            status=run_status,
            nodes={k: NodeSummary.from_json(v) for k, v in (body.get("nodes") or {}).items()},
            name=body.get("name") or "",
            trace_id=body.get("trace_id") or "",
            error=body.get("error"),
        )
    when = parse_iso(data.get("time"))
    return RunEvent(
        sequence=int(data["sequence"]),
        run_id=run_id,
        kind=RunEventKind(data["kind"]),
        time=when if when is not None else utc_now(),
        node_id=data.get("node_id", ""),
        attempt=int(data.get("attempt", 0)),
        agent=data.get("agent", ""),
        task_status=TaskStatus(data["task_status"]) if data.get("task_status") else None,
        error=data.get("error"),
        will_retry=bool(data.get("will_retry", False)),
        retry_delay=float(data.get("retry_delay", 0.0)),
        attempts=int(data.get("attempts", 0)),
        artifacts=tuple(artifact_from_json(a) for a in data.get("artifacts") or ()),
        run_status=run_status,
        summary=summary,
        duration=data.get("duration"),
    )


class EventLog:
    """The events of one run: appended by the run, replayed and followed by any number of readers.

    Appending numbers an event; readers see it only once it is *published*, which the
    orchestrator does after the event is durable in the execution store (so a replay from the
    store and the live stream are the same events). A log made with ``durable=False``
    publishes on append (for stores that keep no events). Readers never miss an event and
    never slow the writer: publishing wakes every waiting reader through one shared future,
    and each reader walks the list at its own pace.

    Args:
        run_id: the run.
        prior: events already durable (a resumed run's history), numbered from 1.
        durable: whether events wait for `publish` (True) or are visible on append.
    """

    def __init__(
        self, run_id: str, *, prior: list[RunEvent] | None = None, durable: bool = False
    ) -> None:
        self.run_id = run_id
        self._events: list[RunEvent] = list(prior or ())
        self._published = len(self._events)
        self._durable = durable
        self._closed = False
        self._handed_over = False
        self._changed: asyncio.Future[None] | None = None

    @property
    def handed_over(self) -> bool:
        """True once this process stopped driving the run (another orchestrator took it over):
        followers stop here and go on from the store."""
        return self._handed_over

    def hand_over(self) -> None:
        """End every follower where it stands (see `handed_over`)."""
        self._handed_over = True
        self._wake()

    @property
    def closed(self) -> bool:
        """True once `run_finished` was appended (no more events)."""
        return self._closed

    @property
    def published(self) -> int:
        """The sequence of the last event readers can see."""
        return self._published

    def __len__(self) -> int:
        return len(self._events)

    def append(self, kind: RunEventKind, **fields: object) -> RunEvent:
        """Add the next event (numbered here); `run_finished` closes the log."""
        if self._closed:
            raise RuntimeError(f"run {self.run_id} already finished; no more events")
        event = RunEvent(len(self._events) + 1, self.run_id, kind, **fields)  # type: ignore[arg-type]
        self._events.append(event)
        if kind is RunEventKind.RUN_FINISHED:
            self._closed = True
        if not self._durable:
            self.publish(event.sequence)
        return event

    def unpublished(self) -> list[RunEvent]:
        """Events appended but not yet published, in order."""
        return self._events[self._published :]

    def publish(self, through_sequence: int) -> None:
        """Make the events up to `through_sequence` visible to readers and wake them."""
        through = min(through_sequence, len(self._events))
        if through <= self._published:
            return
        self._published = through
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            if not self._changed.done():
                self._changed.set_result(None)
            self._changed = None

    def snapshot_all(self, after_sequence: int = 0) -> list[RunEvent]:
        """Every event appended after `after_sequence`, published or not."""
        return self._events[max(after_sequence, 0) :]

    def snapshot(self, after_sequence: int = 0) -> list[RunEvent]:
        """The published events numbered above `after_sequence`."""
        return self._events[max(after_sequence, 0) : self._published]

    async def follow(self, after_sequence: int = 0) -> AsyncIterator[RunEvent]:
        """Replay the published events after `after_sequence`, then yield new ones as they are
        published, until `run_finished`."""
        position = max(after_sequence, 0)
        while True:
            while position < self._published:
                event = self._events[position]
                yield event
                position += 1
                if event.kind is RunEventKind.RUN_FINISHED:
                    return
            if self._handed_over or (self._closed and position >= len(self._events)):
                return
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._changed)
