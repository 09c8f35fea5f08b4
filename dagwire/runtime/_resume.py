"""Rebuilding a run from the store: for an orchestrator adopting it (resume), for a replica that
does not drive it (live task statuses), and for runs that kept no events (replay)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dagwire.models import (
    Artifact,
    ExecutionRecord,
    NodeSummary,
    RunEventRecord,
    RunSummary,
    TaskStatus,
    utc_now,
)
from dagwire.runtime.events import EventLog, RunEvent, RunEventKind, event_from_json

__all__ = ["events_prefix", "fold_events", "replay_from_records"]


def events_prefix(run_id: str, stored: list[RunEventRecord], *, after: int = 0) -> list[RunEvent]:
    """The stored events numbered after+1, after+2 ... without a gap (whatever follows a gap
    was never published: docs/durability.md)."""
    events: list[RunEvent] = []
    expected = after + 1
    for record in stored:
        if record.sequence != expected:
            if record.sequence < expected:
                continue  # a repeat
            break
        events.append(event_from_json(run_id, record.data))
        expected += 1
    return events


def fold_events(events: list[RunEvent], nodes: dict[str, NodeSummary]) -> dict[str, NodeSummary]:
    """Task statuses as the events tell them, starting from `nodes` (every task pending)."""
    out = dict(nodes)
    for event in events:
        if event.kind is RunEventKind.TASK_STARTED:
            out[event.node_id] = NodeSummary(
                status=TaskStatus.RUNNING, attempts=event.attempt, artifacts=[], error=None
            )
        elif event.kind is RunEventKind.ATTEMPT_FAILED:
            node = out.get(event.node_id)
            if node is not None:
                node.error = event.error
        elif event.kind is RunEventKind.TASK_FINISHED and event.task_status is not None:
            out[event.node_id] = NodeSummary(
                status=event.task_status,
                attempts=event.attempts,
                artifacts=list(event.artifacts),
                error=event.error,
            )
    return out


def replay_from_records(
    run_id: str, summary: RunSummary, records: list[ExecutionRecord]
) -> EventLog:
    """A finished run's event log rebuilt from its execution records and summary (for runs
    whose events were not stored): attempts' starts and failures, every task's outcome, then
    `run_finished`, numbered from 1 in time order."""
    last_attempt: dict[str, ExecutionRecord] = {}
    for record in records:
        last_attempt[record.node_id] = record
    timeline: list[tuple[datetime, int, RunEventKind, dict[str, Any]]] = []
    for record in records:
        timeline.append(
            (
                record.started_at,
                0,
                RunEventKind.TASK_STARTED,
                {"node_id": record.node_id, "attempt": record.attempt, "agent": record.agent},
            )
        )
        if record.status is TaskStatus.FAILED or record.status == "failed":
            retried = last_attempt[record.node_id] is not record
            timeline.append(
                (
                    record.finished_at or record.started_at,
                    1,
                    RunEventKind.ATTEMPT_FAILED,
                    {
                        "node_id": record.node_id,
                        "attempt": record.attempt,
                        "agent": record.agent,
                        "error": record.error,
                        "will_retry": retried,
                    },
                )
            )
    end = max((t for t, *_ in timeline), default=utc_now())
    for node_id, node in summary.nodes.items():
        last = last_attempt.get(node_id)
        when = (last.finished_at or last.started_at) if last is not None else end
        artifacts: tuple[Artifact, ...] = tuple(node.artifacts)
        timeline.append(
            (
                when,
                2,
                RunEventKind.TASK_FINISHED,
                {
                    "node_id": node_id,
                    "agent": last.agent if last else "",
                    "task_status": node.status,
                    "attempts": node.attempts,
                    "error": node.error,
                    "artifacts": artifacts,
                },
            )
        )
    log = EventLog(run_id)
    for when, _, kind, fields in sorted(timeline, key=lambda item: (item[0], item[1])):
        log.append(kind, time=when, **fields)
    log.append(
        RunEventKind.RUN_FINISHED,
        run_status=summary.status,
        error=summary.error,
        summary=summary,
    )
    return log
