"""Rebuilding a run from the store: for an orchestrator adopting it (resume), for a replica that
does not drive it (live task statuses), and for runs that kept no events (replay)."""

from __future__ import annotations

import dataclasses
import functools
import logging
from datetime import datetime
from typing import Any

from dagwire.errors import WorkflowValidationError
from dagwire.graph.dag import DAG
from dagwire.models import (
    Artifact,
    ExecutionRecord,
    NodeSummary,
    RunEventRecord,
    RunRecord,
    RunSummary,
    TaskNode,
    TaskStatus,
    WorkflowSpec,
    utc_now,
)
from dagwire.runtime._driver import DriverMixin
from dagwire.runtime._state import LOST_ATTEMPT_ERROR, NodeHistory, NodeOutcome, RunState
from dagwire.runtime.events import EventLog, RunEvent, RunEventKind, event_from_json

__all__ = ["ResumeMixin", "events_prefix", "fold_events", "replay_from_records"]

_log = logging.getLogger("dagwire.orchestrator")


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


class ResumeMixin(DriverMixin):
    """Adopted runs: rebuilt from their stored events and records, then driven on
    (docs/durability.md, "Attempts")."""

    async def _all_events(self, run_id: str) -> list[RunEvent]:
        ledger = self._ledger
        assert ledger is not None
        stored: list[RunEventRecord] = []
        while True:
            after = stored[-1].sequence if stored else 0
            page = await ledger.list_events(run_id, after=after, limit=1000)
            stored += page
            if len(page) < 1000:
                return events_prefix(run_id, stored)

    async def _resume(self, record: RunRecord) -> None:
        """Rebuild an adopted run from its durable records and events and drive it on.

        Succeeded tasks keep their outputs and are never dispatched again; an attempt that was
        in flight is recorded failed (`LOST_ATTEMPT_ERROR`) and its task gets a new attempt
        that does not count against `max_attempts`; tasks not started start as usual.
        """
        run_id = record.run_id
        try:
            spec = WorkflowSpec.from_dict(record.spec)
            resolved = spec.resolve(dict(record.user_vars))
        except WorkflowValidationError as exc:
            raise ValueError(f"its stored spec is no longer valid: {exc}") from exc
        dag = DAG.from_workflow(resolved)
        prior = await self._all_events(run_id)
        finished = next((e for e in prior if e.kind is RunEventKind.RUN_FINISHED), None)
        if finished is not None and finished.summary is not None:
            summary = finished.summary
            await self._durable(
                lambda: self._execution_store.save_run(
                    dataclasses.replace(
                        record,
                        status=summary.status,
                        error=summary.error,
                        nodes=summary.nodes,
                        finished_at=finished.time,
                    )
                ),
                f"recording the end of run {run_id}",
            )
            return
        ledger = self._ledger
        assert ledger is not None
        # events stored after a hole (an interrupted batch, a database that lost its last
        # commits) were never published; left in place they would collide with the numbering
        # this owner continues from the prefix (docs/durability.md)
        removed = await self._durable(
            functools.partial(ledger.truncate_events, run_id, len(prior), record.lease_epoch),
            f"removing unpublished events of run {run_id}",
        )
        if removed:
            _log.warning(
                "removed events stored after a gap by the previous owner",
                extra={"run_id": run_id, "events": removed, "after_sequence": len(prior)},
            )
        records = await self._execution_store.list_records(run_id)
        state = self._new_state(record, resolved, dag, prior=prior)
        self._active[run_id] = state
        try:
            await self._save_run(state)  # the new owner's first write: lease and epoch
            await self._restore_tasks(state, prior, records)
        except BaseException:
            self._active.pop(run_id, None)
            state.done.set()
            raise
        self._start_driver(state)
        _log.info(
            "run resumed",
            extra={
                "run_id": run_id,
                "epoch": state.epoch,
                "done": sum(s.is_final for s in state.statuses.values()),
                "tasks": len(dag.nodes),
            },
        )

    async def _restore_tasks(
        self, state: RunState, prior: list[RunEvent], records: list[ExecutionRecord]
    ) -> None:
        finished = {
            e.node_id: e
            for e in prior
            if e.kind is RunEventKind.TASK_FINISHED and e.task_status is not None
        }
        refused = {
            (e.node_id, e.attempt)
            for e in prior
            if e.kind is RunEventKind.ATTEMPT_FAILED and not e.will_retry
        }
        by_node: dict[str, list[ExecutionRecord]] = {}
        for record in records:
            by_node.setdefault(record.node_id, []).append(record)
        recorded = {(r.node_id, r.attempt) for r in records}
        # an attempt's durable start is its `task_started` event (stored while it is
        # dispatched); one without a record yet was in flight: it becomes a lost attempt
        for e in prior:
            if e.kind is not RunEventKind.TASK_STARTED or e.node_id is None:
                continue
            if e.node_id in state.dag.nodes and (e.node_id, e.attempt) not in recorded:
                by_node.setdefault(e.node_id, []).append(
                    ExecutionRecord(
                        run_id=state.run_id,
                        node_id=e.node_id,
                        attempt=e.attempt,
                        agent=state.dag.nodes[e.node_id].agent,
                        status=TaskStatus.RUNNING,
                        started_at=e.time,
                        trace_id=state.trace_id,
                    )
                )
        for node_id in state.dag.topological_order():
            if state.statuses[node_id] is not TaskStatus.PENDING:
                continue  # skipped by an upstream failure restored earlier
            event = finished.get(node_id)
            if event is not None and event.task_status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED):
                assert event.task_status is not None
                outcome = NodeOutcome(
                    event.task_status,
                    event.attempts,
                    artifacts=list(event.artifacts),
                    error=event.error,
                )
                self._restore_outcome(state, node_id, outcome)
                continue
            attempts = sorted(by_node.get(node_id, ()), key=lambda r: r.attempt)
            if not attempts:
                continue
            node = state.dag.nodes[node_id]
            inputs = [
                a.artifact_id
                for dependency in state.dag.dependencies(node_id)
                for a in state.artifacts.get(dependency, ())
                if a.artifact_id
            ]
            for lost in (r for r in attempts if not TaskStatus(r.status).is_final):
                await self._record_lost(
                    state, node, dataclasses.replace(lost, input_artifact_ids=inputs)
                )
            succeeded = next((r for r in attempts if r.status == TaskStatus.SUCCEEDED), None)
            made = attempts[-1].attempt
            if succeeded is not None:
                artifacts = [
                    await self._durable(
                        functools.partial(self._artifact_store.stat, artifact_id),
                        f"reading output {artifact_id} of task {node_id!r}",
                    )
                    for artifact_id in succeeded.output_artifact_ids
                ]
                outcome = NodeOutcome(TaskStatus.SUCCEEDED, made, artifacts=artifacts)
                self._restore_outcome(state, node_id, outcome, announce=True)
                continue
            counted = sum(
                1
                for r in attempts
                if r.status == TaskStatus.FAILED and r.error != LOST_ATTEMPT_ERROR
            )
            last = attempts[-1]
            if (
                last.status == TaskStatus.FAILED
                and last.error != LOST_ATTEMPT_ERROR
                and (counted >= node.retry.max_attempts or (node_id, last.attempt) in refused)
            ):
                outcome = NodeOutcome(TaskStatus.FAILED, made, error=last.error)
                self._restore_outcome(state, node_id, outcome, announce=True)
                continue
            state.history[node_id] = NodeHistory(attempts_made=made, attempts_counted=counted)
            state.attempts[node_id] = made
        for node_id, status in state.statuses.items():
            if status is TaskStatus.SUCCEEDED:
                state.consumers_left[node_id] = sum(
                    1
                    for d in state.dag.dependents(node_id)
                    if state.statuses[d] is TaskStatus.PENDING
                )

    def _restore_outcome(
        self, state: RunState, node_id: str, outcome: NodeOutcome, *, announce: bool = False
    ) -> None:
        """Apply a task's outcome from before the adoption; `announce` says it again in events
        (its `task_finished` was not durable yet)."""
        state.scheduler.mark_running(node_id)
        if announce:
            self._settle_node(state, node_id, outcome)
            return
        state.statuses[node_id] = outcome.status
        state.attempts[node_id] = outcome.attempts
        if outcome.error is not None:
            state.errors[node_id] = outcome.error
        if outcome.status is TaskStatus.SUCCEEDED:
            state.artifacts[node_id] = outcome.artifacts
            state.scheduler.mark_completed(node_id)
            return
        for skipped_id in state.scheduler.mark_failed(node_id) or ():
            if state.statuses[skipped_id] is TaskStatus.PENDING:
                state.statuses[skipped_id] = TaskStatus.SKIPPED
                state.errors[skipped_id] = f"skipped: upstream task {node_id!r} {outcome.status}"
        if state.spec.fail_fast:
            state.dispatching = False

    async def _record_lost(self, state: RunState, node: TaskNode, lost: ExecutionRecord) -> None:
        """Record an attempt that was in flight when its orchestrator died as failed."""
        task = dataclasses.replace(node, attempt=lost.attempt, run_id=state.run_id)
        await self._record(
            state,
            task,
            lost.started_at,
            TaskStatus.FAILED,
            list(lost.input_artifact_ids),
            error=LOST_ATTEMPT_ERROR,
        )
        self._emit(
            state,
            RunEventKind.ATTEMPT_FAILED,
            node_id=node.id,
            attempt=lost.attempt,
            agent=node.agent,
            error=LOST_ATTEMPT_ERROR,
            will_retry=True,
            retry_delay=0.0,
        )
