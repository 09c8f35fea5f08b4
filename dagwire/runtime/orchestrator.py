"""The `Orchestrator`: drives a workflow's DAG through a dispatcher and records every attempt.

One run is one asyncio task (`_RunState.driver`) owning the run's scheduler; each started task
of the workflow is a child asyncio task that makes the attempts (dispatch with timeout, store
the outputs, record the attempt) and reports its outcome back to the driver. Only the driver
touches the scheduler, so the graph needs no locks. A task's execution record is durable before
the driver marks it completed, so no dependent is dispatched before its inputs are on record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from dagwire.errors import (
    AdapterNotFoundError,
    AttemptTimeoutError,
    DagwireError,
    NonRetryableError,
    NotFoundError,
    ResourceExhaustedError,
    RunAlreadyFinishedError,
    StoreUnavailableError,
)
from dagwire.graph.dag import DAG
from dagwire.graph.scheduler import Scheduler
from dagwire.ids import new_id, new_trace_id
from dagwire.models import (
    Artifact,
    ExecutionRecord,
    NodeSummary,
    RetryPolicy,
    RunRecord,
    RunStatus,
    RunSummary,
    TaskNode,
    TaskStatus,
    WorkflowSpec,
    utc_now,
)
from dagwire.runtime.dispatcher import Dispatcher, TaskDispatcher
from dagwire.runtime.events import EventLog, RunEvent, RunEventKind
from dagwire.stores.base import ArtifactStore, ExecutionStore, OutcomeRecorder

__all__ = ["Orchestrator", "backoff_delay", "run_id_for_request"]

_log = logging.getLogger("dagwire.orchestrator")
_T = TypeVar("_T")

#: Namespace of the run ids derived from request ids (`run_id_for_request`).
_REQUEST_NAMESPACE = uuid.UUID("6f1d0c4e-3b1a-5e07-9a39-7c2f4b8d2a61")
#: Finished runs kept in memory for `watch_run`/`wait_run` (older ones are read from the store).
_FINISHED_RUNS_KEPT = 256
#: Outputs of an attempt up to this many bytes in all are stored with its record in one write
#: when the execution store can (`OutcomeRecorder`); larger ones are stored first, separately.
_OUTCOME_INLINE_BYTES = 256 << 10


def run_id_for_request(request_id: str) -> str:
    """The run id of a run started with `request_id`: a UUID derived from it (version 5).

    Deterministic, so a retried start finds the run in the store after a restart; runs started
    without a request id get a time-ordered UUIDv7 (listings sort by `created_at` either way).
    """
    return str(uuid.uuid5(_REQUEST_NAMESPACE, request_id))


def backoff_delay(
    policy: RetryPolicy, failed_attempt: int, *, rng: random.Random | None = None
) -> float:
    """Seconds to wait after attempt `failed_attempt` (1-based) failed.

    Exponential (`initial_backoff * multiplier ** (n - 1)`), capped at `max_backoff`, with jitter
    drawing the delay from [0.5, 1] x the computed one so retries of many tasks spread out.
    """
    exponent = max(failed_attempt - 1, 0)
    try:
        computed = policy.initial_backoff * policy.multiplier**exponent
    except OverflowError:
        computed = policy.max_backoff
    computed = min(computed, policy.max_backoff)
    return computed * (rng or random).uniform(0.5, 1.0)


@dataclass(slots=True)
class _NodeOutcome:
    """What a workflow task's child asyncio task reports to the driver."""

    status: TaskStatus
    attempts: int
    artifacts: list[Artifact] = field(default_factory=list)
    error: str | None = None
    store_error: StoreUnavailableError | None = None


@dataclass(eq=False)
class _RunState:
    """Everything the orchestrator holds about one run while it is in memory."""

    record: RunRecord
    spec: WorkflowSpec
    dag: DAG
    scheduler: Scheduler
    events: EventLog
    statuses: dict[str, TaskStatus]
    attempts: dict[str, int]
    errors: dict[str, str]
    artifacts: dict[str, list[Artifact]] = field(default_factory=dict)
    consumers_left: dict[str, int] = field(default_factory=dict)
    running: dict[str, asyncio.Task[_NodeOutcome]] = field(default_factory=dict)
    in_flight_calls: dict[str, asyncio.Future[list[Artifact]]] = field(default_factory=dict)
    completions: asyncio.Queue[tuple[str, _NodeOutcome]] = field(default_factory=asyncio.Queue)
    dispatching: bool = True
    cancel_requested: bool = False
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    run_error: str | None = None
    save_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    driver: asyncio.Task[None] | None = None
    summary: RunSummary | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def trace_id(self) -> str:
        return self.record.trace_id


class Orchestrator:
    """Runs workflows: validates the spec, schedules its DAG, dispatches tasks, records results.

    Args:
        artifact_store: where task outputs are stored.
        execution_store: where runs and per-attempt execution records are stored.
        dispatcher: routes tasks to adapters; a fresh in-process `Dispatcher()` when omitted.
        instance_id: this orchestrator's identity as the owner of its runs (generated if omitted).
        lease_seconds: how long a run's ownership lasts without renewal (renewed every third).
        store_retry_seconds: how long writes to an unavailable store are retried before the run
            fails with "store unavailable".
        running_record_after: attempts still running after this many seconds get a `running`
            execution record (quick attempts are recorded once, with their outcome).
        on_run_start: called with the run record first thing in each run's own asyncio task;
            context variables it sets (a logging context with the run id) hold for every
            dispatch and log line of that run.
    """

    def __init__(
        self,
        artifact_store: ArtifactStore,
        execution_store: ExecutionStore,
        *,
        dispatcher: TaskDispatcher | None = None,
        instance_id: str | None = None,
        lease_seconds: float = 30.0,
        store_retry_seconds: float = 30.0,
        running_record_after: float = 0.5,
        on_run_start: Callable[[RunRecord], None] | None = None,
    ) -> None:
        self._artifact_store = artifact_store
        self._execution_store = execution_store
        self._dispatcher: TaskDispatcher = dispatcher if dispatcher is not None else Dispatcher()
        self.instance_id = instance_id or f"orchestrator-{new_id()}"
        self._lease = timedelta(seconds=lease_seconds)
        self._store_retry_seconds = store_retry_seconds
        self._running_record_after = running_record_after
        self._on_run_start = on_run_start
        self._outcome_recorder: OutcomeRecorder | None = (
            execution_store
            if isinstance(execution_store, OutcomeRecorder)
            and execution_store.records_outputs_for(artifact_store)
            else None
        )
        self._active: dict[str, _RunState] = {}
        self._finished: OrderedDict[str, _RunState] = OrderedDict()
        self._lease_renewer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def dispatcher(self) -> TaskDispatcher:
        """The dispatcher this orchestrator sends tasks through."""
        return self._dispatcher

    @property
    def artifact_store(self) -> ArtifactStore:
        return self._artifact_store

    @property
    def execution_store(self) -> ExecutionStore:
        return self._execution_store

    # ------------------------------------------------------------------ public API

    async def run_workflow(
        self,
        workflow: Mapping[str, Any] | WorkflowSpec,
        *,
        user_vars: Mapping[str, str] | None = None,
    ) -> RunSummary:
        """Run a workflow to its end and return the summary.

        Args:
            workflow: the spec, as a dict (JSON/YAML shape) or a parsed `WorkflowSpec`.
            user_vars: values for `${user.NAME}` placeholders (override the spec's `vars`).

        Returns:
            The run's `RunSummary`; the run is `succeeded` only if every task succeeded.

        Raises:
            WorkflowValidationError: the spec or its variables are invalid; nothing ran.

        Cancelling the caller cancels the run (its running adapter calls included).
        """
        run_id = await self.start_run(workflow, user_vars=user_vars)
        try:
            return await self.wait_run(run_id)
        except asyncio.CancelledError:
            state = self._active.get(run_id)
            if state is not None:
                self._request_cancel(state)
                await asyncio.shield(state.done.wait())
            raise

    async def start_run(
        self,
        workflow: Mapping[str, Any] | WorkflowSpec,
        *,
        user_vars: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> str:
        """Validate a workflow, record the run as `running` and start it; return its `run_id`.

        A repeated `request_id` returns the run started by the first call instead of a new one,
        also after a restart or from another orchestrator on the same store: the id of a run
        started with a `request_id` is derived from it (`run_id_for_request`), so a retry finds
        the run by its primary key.

        Raises:
            WorkflowValidationError: the spec or its variables are invalid; nothing was recorded.
            StoreUnavailableError: the run could not be recorded.
        """
        spec = (
            workflow
            if isinstance(workflow, WorkflowSpec)
            else WorkflowSpec.from_dict(dict(workflow))
        )
        resolved = spec.resolve(dict(user_vars or {}))
        dag = DAG.from_workflow(resolved)
        run_id = run_id_for_request(request_id) if request_id else new_id()
        if request_id:
            if run_id in self._active or run_id in self._finished:
                return run_id
            existing = await self._durable(
                functools.partial(self._execution_store.get_run, run_id),
                f"looking up the run of request_id {request_id!r}",
            )
            if existing is not None or run_id in self._active or run_id in self._finished:
                return run_id
        now = utc_now()
        record = RunRecord(
            run_id=run_id,
            name=spec.name,
            status=RunStatus.RUNNING,
            created_at=now,
            spec=spec.to_dict(),
            user_vars={str(k): str(v) for k, v in (user_vars or {}).items()},
            request_id=request_id or run_id,
            trace_id=new_trace_id(),
            owner=self.instance_id,
            lease_expires_at=now + self._lease,
        )
        state = _RunState(
            record=record,
            spec=resolved,
            dag=dag,
            scheduler=Scheduler(dag),
            events=EventLog(run_id),
            statuses=dict.fromkeys(dag.nodes, TaskStatus.PENDING),
            attempts=dict.fromkeys(dag.nodes, 0),
            errors={},
        )
        # active before it is saved: `recover_orphans` must never see it as an orphan
        self._active[run_id] = state
        try:
            await self._save_run(state)
        except BaseException:
            self._active.pop(run_id, None)
            state.done.set()  # releases `aclose()`, which waits for every active run
            raise
        state.driver = asyncio.create_task(self._drive(state), name=f"dagwire-run-{run_id}")
        self._ensure_lease_renewer()
        _log.info(
            "run started",
            extra={
                "run_id": run_id,
                "trace_id": record.trace_id,
                "workflow": spec.name,
                "tasks": len(dag.nodes),
            },
        )
        return run_id

    async def wait_run(self, run_id: str) -> RunSummary:
        """Wait for a run to finish and return its summary.

        Raises:
            NotFoundError: no such run.
        """
        state = self._active.get(run_id) or self._finished.get(run_id)
        if state is not None:
            await state.done.wait()
            assert state.summary is not None
            return state.summary
        record = await self._execution_store.get_run(run_id)
        if record is None:
            raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
        while not RunStatus(record.status).is_final:  # owned by another orchestrator: poll
            await asyncio.sleep(0.5)
            refreshed = await self._execution_store.get_run(run_id)
            assert refreshed is not None
            record = refreshed
        return record.summary()

    async def watch_run(self, run_id: str, *, after_sequence: int = 0) -> AsyncIterator[RunEvent]:
        """The run's events after `after_sequence`: first those already recorded, then live ones,
        always ending with `run_finished`.

        A run no longer held in memory (finished long ago, or run by another process) is
        replayed from the store once it has finished: its attempts' starts and failures, every
        task's outcome, then `run_finished`, numbered from 1 in time order.

        Raises:
            NotFoundError: no such run.
        """
        state = self._active.get(run_id) or self._finished.get(run_id)
        if state is not None:
            async for event in state.events.follow(after_sequence):
                yield event
            return
        summary = await self.wait_run(run_id)
        for event in (await self._replay_from_store(run_id, summary)).snapshot(after_sequence):
            yield event

    async def _replay_from_store(self, run_id: str, summary: RunSummary) -> EventLog:
        """Rebuild a finished run's event log from its execution records and summary."""
        records = await self._execution_store.list_records(run_id)
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
                        "artifacts": tuple(node.artifacts),
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

    async def cancel_run(self, run_id: str) -> RunStatus:
        """Cancel a running run: stop dispatching, cancel in-flight adapter calls, and end every
        unfinished task `cancelled`. Returns the run's status once it stopped (`cancelled`).

        Cancelling a run that is already cancelled is accepted.

        Raises:
            NotFoundError: no such run.
            RunAlreadyFinishedError: the run already ended with another status.
        """
        state = self._active.get(run_id)
        if state is None:
            finished = self._finished.get(run_id)
            if finished is not None and finished.summary is not None:
                status = finished.summary.status
            else:
                record = await self._execution_store.get_run(run_id)
                if record is None:
                    raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
                status = RunStatus(record.status)
                if status is RunStatus.RUNNING:
                    raise RunAlreadyFinishedError(run_id, "running (owned by another orchestrator)")
            if status is RunStatus.CANCELLED:
                return status
            raise RunAlreadyFinishedError(run_id, str(status))
        self._request_cancel(state)
        await state.done.wait()
        assert state.summary is not None
        return state.summary.status

    async def get_run(self, run_id: str) -> RunRecord:
        """The run's record: live task statuses for a run in progress here, else the stored one.

        Raises:
            NotFoundError: no such run.
        """
        state = self._active.get(run_id)
        if state is not None:
            return dataclasses.replace(state.record, nodes=self._node_summaries(state))
        record = await self._execution_store.get_run(run_id)
        if record is None:
            raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
        return record

    async def recover_orphans(self) -> list[str]:
        """Mark `failed` ("orchestrator restarted") the runs left `running` by a dead owner.

        A run is an orphan when its owner's lease expired, or when this instance owns it but is
        not executing it (it restarted under the same `instance_id`). A run another live
        orchestrator owns is never touched. Returns the recovered run ids.
        """
        now = utc_now()
        orphans: list[RunRecord] = []
        after: str | None = None
        while True:
            page = await self._execution_store.list_runs(
                status=RunStatus.RUNNING, limit=200, after=after
            )
            for record in page:
                if record.run_id in self._active:
                    continue
                lease_over = record.lease_expires_at is None or record.lease_expires_at <= now
                if lease_over or record.owner == self.instance_id:
                    orphans.append(record)
            if len(page) < 200:
                break
            after = page[-1].run_id
        for record in orphans:
            error = f"orchestrator restarted: owner {record.owner or '(unknown)'} stopped"
            nodes = {
                node_id: node
                if node.status.is_final
                else dataclasses.replace(node, status=TaskStatus.FAILED, error=error)
                for node_id, node in record.nodes.items()
            }
            failed = dataclasses.replace(
                record, status=RunStatus.FAILED, finished_at=now, error=error, nodes=nodes
            )
            await self._durable(
                functools.partial(self._execution_store.save_run, failed),
                f"marking orphaned run {record.run_id} failed",
            )
            _log.warning("orphaned run marked failed", extra={"run_id": record.run_id})
        return [record.run_id for record in orphans]

    @property
    def active_run_ids(self) -> list[str]:
        """Runs this orchestrator is executing now."""
        return list(self._active)

    async def aclose(self) -> None:
        """Cancel the runs still in progress, wait for them to be recorded, stop background work."""
        for state in list(self._active.values()):
            self._request_cancel(state)
        for state in list(self._active.values()):
            await state.done.wait()
        if self._lease_renewer is not None:
            self._lease_renewer.cancel()
            self._lease_renewer = None
        for task in list(self._background):
            task.cancel()

    # ------------------------------------------------------------------ the driver

    async def _drive(self, state: _RunState) -> None:
        if self._on_run_start is not None:
            self._on_run_start(state.record)
        try:
            await self._schedule(state)
        except StoreUnavailableError as exc:
            state.run_error = f"store unavailable: {exc}"
            _log.error("run failed: store unavailable", extra={"run_id": state.run_id})
            await self._stop_everything(state)
        except Exception as exc:  # a bug, not a user mistake: keep the run's record truthful
            state.run_error = f"internal error in the orchestrator: {exc!r}"
            _log.exception("run failed: internal error", extra={"run_id": state.run_id})
            await self._stop_everything(state)
        finally:
            await self._finish(state)

    async def _schedule(self, state: _RunState) -> None:
        scheduler = state.scheduler
        limit = state.spec.max_parallel
        while True:
            if state.dispatching:
                free = limit - len(state.running)
                if free > 0:
                    for node_id in scheduler.take_ready(free):
                        self._start_task(state, node_id)
            if not state.running:
                return
            node_id, outcome = await state.completions.get()
            self._task_done(state, node_id, outcome)
            while not state.completions.empty():
                node_id, outcome = state.completions.get_nowait()
                self._task_done(state, node_id, outcome)

    def _start_task(self, state: _RunState, node_id: str) -> None:
        node = state.dag.nodes[node_id]
        inputs: list[Artifact] = []
        for dependency in node.depends_on:
            inputs.extend(state.artifacts[dependency])
            left = state.consumers_left[dependency] - 1
            state.consumers_left[dependency] = left
            if left == 0:  # every dependent has its inputs: free the content
                state.artifacts[dependency] = [
                    a.without_content() for a in state.artifacts[dependency]
                ]
        state.statuses[node_id] = TaskStatus.RUNNING
        task = asyncio.create_task(
            self._run_task(state, node, inputs), name=f"dagwire-task-{node_id}"
        )
        state.running[node_id] = task
        task.add_done_callback(lambda t: self._report(state, node_id, t))

    def _report(self, state: _RunState, node_id: str, task: asyncio.Task[_NodeOutcome]) -> None:
        if task.cancelled():
            outcome = _NodeOutcome(TaskStatus.CANCELLED, state.attempts[node_id], error="cancelled")
        elif (exc := task.exception()) is not None:
            if isinstance(exc, StoreUnavailableError):
                outcome = _NodeOutcome(
                    TaskStatus.FAILED, state.attempts[node_id], error=str(exc), store_error=exc
                )
            else:
                _log.error(
                    "task crashed", exc_info=exc, extra={"run_id": state.run_id, "node_id": node_id}
                )
                outcome = _NodeOutcome(
                    TaskStatus.FAILED, state.attempts[node_id], error=f"internal error: {exc!r}"
                )
        else:
            outcome = task.result()
        state.completions.put_nowait((node_id, outcome))

    def _task_done(self, state: _RunState, node_id: str, outcome: _NodeOutcome) -> None:
        del state.running[node_id]
        state.in_flight_calls.pop(node_id, None)
        if outcome.store_error is not None:
            raise outcome.store_error
        state.statuses[node_id] = outcome.status
        state.attempts[node_id] = outcome.attempts
        if outcome.error is not None:
            state.errors[node_id] = outcome.error
        if outcome.status is TaskStatus.SUCCEEDED:
            state.artifacts[node_id] = outcome.artifacts
            state.consumers_left[node_id] = len(state.dag.dependents(node_id))
            if state.consumers_left[node_id] == 0:
                state.artifacts[node_id] = [a.without_content() for a in outcome.artifacts]
            state.scheduler.mark_completed(node_id)
        else:
            skipped = state.scheduler.mark_failed(node_id)
            if outcome.status is TaskStatus.FAILED and state.spec.fail_fast:
                state.dispatching = False
            for skipped_id in skipped or ():
                if state.statuses[skipped_id] is TaskStatus.PENDING:
                    state.statuses[skipped_id] = TaskStatus.SKIPPED
                    state.errors[skipped_id] = (
                        f"skipped: upstream task {node_id!r} {outcome.status}"
                    )
                    self._emit_finished(state, skipped_id)
        self._emit_finished(state, node_id)

    def _request_cancel(self, state: _RunState) -> None:
        if state.cancel_requested or state.done.is_set():
            return
        _log.info("run cancellation requested", extra={"run_id": state.run_id})
        state.cancel_requested = True
        state.dispatching = False
        state.cancelled.set()
        self._cancel_pending(state, "cancelled: the run was cancelled")
        for call in state.in_flight_calls.values():
            call.cancel()

    async def _stop_everything(self, state: _RunState) -> None:
        """After a run-level failure: cancel what runs and wait, so nothing is left behind."""
        state.dispatching = False
        state.cancelled.set()
        for task in state.running.values():
            task.cancel()
        if state.running:
            await asyncio.gather(*state.running.values(), return_exceptions=True)
        for node_id in list(state.running):
            state.statuses[node_id] = TaskStatus.CANCELLED
            state.errors[node_id] = "cancelled: " + (state.run_error or "the run failed")
        state.running.clear()

    def _cancel_pending(self, state: _RunState, reason: str) -> None:
        for node_id in state.scheduler.cancel_pending():
            if state.statuses[node_id] is TaskStatus.PENDING:
                state.statuses[node_id] = TaskStatus.CANCELLED
                state.errors[node_id] = reason
                self._emit_finished(state, node_id)

    async def _finish(self, state: _RunState) -> None:
        reason = (
            "cancelled: the run was cancelled"
            if state.cancel_requested
            else "cancelled: fail_fast stopped the run after a failure"
            if state.run_error is None
            else f"cancelled: {state.run_error}"
        )
        self._cancel_pending(state, reason)
        for node_id, task_status in state.statuses.items():  # anything not reached at all
            if not task_status.is_final:
                state.statuses[node_id] = TaskStatus.CANCELLED
                state.errors.setdefault(node_id, reason)
        if state.run_error is not None:
            run_status = RunStatus.FAILED
        elif state.cancel_requested:
            run_status = RunStatus.CANCELLED
        elif all(s is TaskStatus.SUCCEEDED for s in state.statuses.values()):
            run_status = RunStatus.SUCCEEDED
        else:
            run_status = RunStatus.FAILED
        error = state.run_error
        if error is None and run_status is RunStatus.FAILED:
            failed = [n for n, s in state.statuses.items() if s is TaskStatus.FAILED]
            error = f"{len(failed)} task(s) failed: {', '.join(failed[:5])}" + (
                " ..." if len(failed) > 5 else ""
            )
        nodes = self._node_summaries(state)
        summary = RunSummary(
            run_id=state.run_id,
            status=run_status,
            nodes=nodes,
            name=state.record.name,
            trace_id=state.trace_id,
            error=error,
        )
        state.record = dataclasses.replace(
            state.record, status=run_status, finished_at=utc_now(), error=error, nodes=nodes
        )
        state.summary = summary
        try:
            await self._save_run(state)
        except StoreUnavailableError:
            _log.error(
                "final run status not recorded yet; retrying in the background",
                extra={"run_id": state.run_id},
            )
            self._spawn(self._save_run_eventually(state))
        state.events.append(
            RunEventKind.RUN_FINISHED, run_status=run_status, error=error, summary=summary
        )
        self._active.pop(state.run_id, None)
        self._finished[state.run_id] = state
        while len(self._finished) > _FINISHED_RUNS_KEPT:
            self._finished.popitem(last=False)
        state.done.set()
        _log.info("run finished", extra={"run_id": state.run_id, "status": str(run_status)})

    # ------------------------------------------------------------------ one workflow task

    async def _run_task(
        self, state: _RunState, node: TaskNode, inputs: list[Artifact]
    ) -> _NodeOutcome:
        """Make the attempts of one task until it succeeds, fails for good or is cancelled."""
        input_ids = [a.artifact_id for a in inputs if a.artifact_id]
        policy = node.retry
        attempt = 0
        while True:
            attempt += 1
            state.attempts[node.id] = attempt
            task = dataclasses.replace(node, attempt=attempt)
            started_at = utc_now()
            state.events.append(
                RunEventKind.TASK_STARTED, node_id=node.id, attempt=attempt, agent=node.agent
            )
            running_write = self._schedule_running_record(state, task, started_at, input_ids)
            error: str
            retry_after: float | None = None
            retryable = True
            with_record = False
            try:
                outputs = await self._call_adapter(state, task, inputs)
                with_record = self._records_with_outputs(outputs)
                if not with_record:
                    stored = await self._store_outputs(state, node.id, outputs)
            except asyncio.CancelledError:
                if not state.cancel_requested:
                    raise
                await self._settle(running_write)
                await self._record(
                    state,
                    task,
                    started_at,
                    TaskStatus.CANCELLED,
                    input_ids,
                    error="cancelled: the run was cancelled",
                )
                return _NodeOutcome(
                    TaskStatus.CANCELLED, attempt, error="cancelled: the run was cancelled"
                )
            except StoreUnavailableError:
                await self._settle(running_write)
                raise
            except AdapterNotFoundError as exc:
                error, retryable = str(exc), False
            except NonRetryableError as exc:
                error, retryable = _describe(exc), False
            except ResourceExhaustedError as exc:
                error, retry_after = _describe(exc), exc.retry_after
            except Exception as exc:  # an adapter's failure is the attempt's failure
                error = _describe(exc)
            else:
                await self._settle(running_write)
                if not with_record:
                    await self._record(
                        state,
                        task,
                        started_at,
                        TaskStatus.SUCCEEDED,
                        input_ids,
                        outputs=[a.artifact_id or "" for a in stored],
                    )
                    return _NodeOutcome(TaskStatus.SUCCEEDED, attempt, artifacts=stored)
                try:
                    stored = await self._record_with_outputs(
                        state, task, started_at, input_ids, outputs
                    )
                except ValueError as exc:  # an invalid output fails the attempt, as store() does
                    error = _describe(exc)
                else:
                    return _NodeOutcome(TaskStatus.SUCCEEDED, attempt, artifacts=stored)

            await self._settle(running_write)
            await self._record(state, task, started_at, TaskStatus.FAILED, input_ids, error=error)
            will_retry = retryable and attempt < policy.max_attempts and not state.cancel_requested
            delay = 0.0
            if will_retry:
                delay = backoff_delay(policy, attempt)
                if retry_after is not None:
                    delay = max(delay, retry_after)
            state.events.append(
                RunEventKind.ATTEMPT_FAILED,
                node_id=node.id,
                attempt=attempt,
                agent=node.agent,
                error=error,
                will_retry=will_retry,
                retry_delay=delay,
            )
            _log.warning(
                "attempt failed" + (f"; retrying in {delay:.2f}s" if will_retry else ""),
                extra={
                    "run_id": state.run_id,
                    "node_id": node.id,
                    "attempt": attempt,
                    "trace_id": state.trace_id,
                    "error": error,
                },
            )
            if not will_retry:
                return _NodeOutcome(TaskStatus.FAILED, attempt, error=error)
            if await _wait_or_cancelled(state.cancelled, delay):
                return _NodeOutcome(
                    TaskStatus.CANCELLED, attempt, error="cancelled: the run was cancelled"
                )

    async def _call_adapter(
        self, state: _RunState, task: TaskNode, inputs: list[Artifact]
    ) -> list[Artifact]:
        """One adapter call under the task's timeout; cancellable by `cancel_run`."""
        call = asyncio.ensure_future(self._dispatch_with_timeout(task, inputs, state.trace_id))
        state.in_flight_calls[task.id] = call
        try:
            outputs = await call
        finally:
            state.in_flight_calls.pop(task.id, None)
        if not isinstance(outputs, list) or not all(isinstance(a, Artifact) for a in outputs):
            raise TypeError(
                f"adapter for agent {task.agent!r} returned {type(outputs).__name__}, "
                "expected a list of Artifact"
            )
        return outputs

    async def _dispatch_with_timeout(
        self, task: TaskNode, inputs: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        if not getattr(self._dispatcher, "accepts_references", False):
            inputs = await self._with_content(inputs)
        if task.timeout is None or getattr(self._dispatcher, "applies_timeouts", False):
            return await self._dispatcher.dispatch(task, inputs, trace_id)
        try:
            async with asyncio.timeout(task.timeout):
                return await self._dispatcher.dispatch(task, inputs, trace_id)
        except TimeoutError as exc:
            raise AttemptTimeoutError(task.id, task.attempt, task.timeout) from exc

    async def _with_content(self, inputs: list[Artifact]) -> list[Artifact]:
        """Load the content of inputs held only by reference (for in-process adapters)."""
        if all(a.content is not None for a in inputs):
            return inputs
        return [
            a
            if a.content is not None or a.artifact_id is None
            else await self._durable(
                functools.partial(self._artifact_store.load, a.artifact_id),
                f"loading input artifact {a.artifact_id}",
            )
            for a in inputs
        ]

    async def _store_outputs(
        self, state: _RunState, node_id: str, outputs: list[Artifact]
    ) -> list[Artifact]:
        async def store_one(artifact: Artifact) -> Artifact:
            if artifact.artifact_id is not None and artifact.content is None:
                return artifact  # already in the store (streamed there by the adapter)
            stamped = dataclasses.replace(artifact, run_id=state.run_id, node_id=node_id)
            stored = await self._durable(
                lambda: self._artifact_store.store(stamped), f"storing artifact {artifact.name!r}"
            )
            return dataclasses.replace(stored, content=artifact.content)

        if len(outputs) == 1:
            return [await store_one(outputs[0])]
        return list(await asyncio.gather(*(store_one(a) for a in outputs)))

    def _records_with_outputs(self, outputs: list[Artifact]) -> bool:
        """Whether the outputs go to the store with the attempt's record, in one write."""
        if self._outcome_recorder is None:
            return False
        total = 0
        for artifact in outputs:
            if artifact.content is None:
                return False  # already in the store (streamed there by the adapter)
            total += len(artifact.content)
        return total <= _OUTCOME_INLINE_BYTES

    async def _record_with_outputs(
        self,
        state: _RunState,
        task: TaskNode,
        started_at: datetime,
        input_ids: list[str],
        outputs: list[Artifact],
    ) -> list[Artifact]:
        """Store the outputs and record the succeeded attempt in one durable write."""
        recorder = self._outcome_recorder
        assert recorder is not None
        stamped = [dataclasses.replace(a, run_id=state.run_id, node_id=task.id) for a in outputs]
        record = ExecutionRecord(
            run_id=state.run_id,
            node_id=task.id,
            attempt=task.attempt,
            agent=task.agent,
            status=TaskStatus.SUCCEEDED,
            started_at=started_at,
            finished_at=utc_now(),
            error=None,
            trace_id=state.trace_id,
            input_artifact_ids=list(input_ids),
            output_artifact_ids=[],
        )
        return await self._durable(
            functools.partial(recorder.record_outcome, record, stamped),
            f"recording task {task.id!r} attempt {task.attempt} with its outputs",
        )

    def _schedule_running_record(
        self, state: _RunState, task: TaskNode, started_at: datetime, input_ids: list[str]
    ) -> _DelayedWrite:
        return _DelayedWrite(
            self._running_record_after,
            lambda: self._record(
                state, task, started_at, TaskStatus.RUNNING, input_ids, final=False
            ),
        )

    async def _settle(self, write: _DelayedWrite) -> None:
        """Cancel a `running` write not yet started, or await one in flight (one writer a key)."""
        await write.settle()

    async def _record(
        self,
        state: _RunState,
        task: TaskNode,
        started_at: datetime,
        status: TaskStatus,
        input_ids: list[str],
        *,
        outputs: list[str] | None = None,
        error: str | None = None,
        final: bool = True,
    ) -> None:
        record = ExecutionRecord(
            run_id=state.run_id,
            node_id=task.id,
            attempt=task.attempt,
            agent=task.agent,
            status=status,
            started_at=started_at,
            finished_at=utc_now() if final else None,
            error=error,
            trace_id=state.trace_id,
            input_artifact_ids=list(input_ids),
            output_artifact_ids=outputs or [],
        )
        await self._durable(
            lambda: self._execution_store.record(record),
            f"recording task {task.id!r} attempt {task.attempt}",
        )

    # ------------------------------------------------------------------ summaries and events

    def _node_summaries(self, state: _RunState) -> dict[str, NodeSummary]:
        return {
            node_id: NodeSummary(
                status=status,
                attempts=state.attempts[node_id],
                artifacts=[a.without_content() for a in state.artifacts.get(node_id, ())],
                error=state.errors.get(node_id) if status is not TaskStatus.SUCCEEDED else None,
            )
            for node_id, status in state.statuses.items()
        }

    def _emit_finished(self, state: _RunState, node_id: str) -> None:
        status = state.statuses[node_id]
        state.events.append(
            RunEventKind.TASK_FINISHED,
            node_id=node_id,
            agent=state.dag.nodes[node_id].agent,
            task_status=status,
            attempts=state.attempts[node_id],
            error=state.errors.get(node_id) if status is not TaskStatus.SUCCEEDED else None,
            artifacts=tuple(a.without_content() for a in state.artifacts.get(node_id, ())),
        )

    # ------------------------------------------------------------------ run records and leases

    async def _save_run(self, state: _RunState) -> None:
        async with state.save_lock:  # one writer per run record
            record = state.record
            if not RunStatus(record.status).is_final:
                record = dataclasses.replace(record, lease_expires_at=utc_now() + self._lease)
                state.record = record
            await self._durable(
                lambda: self._execution_store.save_run(record), f"saving run {state.run_id}"
            )

    async def _save_run_eventually(self, state: _RunState) -> None:
        while True:
            try:
                await self._save_run(state)
                _log.info("final run status recorded", extra={"run_id": state.run_id})
                return
            except StoreUnavailableError:
                await asyncio.sleep(5.0)

    def _ensure_lease_renewer(self) -> None:
        if self._lease_renewer is None or self._lease_renewer.done():
            self._lease_renewer = asyncio.create_task(
                self._renew_leases(), name="dagwire-lease-renewer"
            )

    async def _renew_leases(self) -> None:
        interval = max(self._lease.total_seconds() / 3, 0.05)
        while self._active:
            await asyncio.sleep(interval)
            for state in list(self._active.values()):
                if state.summary is None:
                    try:
                        await self._save_run(state)
                    except StoreUnavailableError:
                        _log.warning("could not renew run lease", extra={"run_id": state.run_id})

    async def _durable(self, operation: Callable[[], Awaitable[_T]], what: str) -> _T:
        """Run a store operation, retrying while the store is unavailable (bounded, with backoff).

        Raises:
            StoreUnavailableError: the store stayed unavailable for `store_retry_seconds`.
        """
        deadline = time.monotonic() + self._store_retry_seconds
        delay = 0.1
        while True:
            try:
                return await operation()
            except StoreUnavailableError as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailableError(f"{what}: {exc}") from exc
                _log.warning("store unavailable; retrying", extra={"what": what, "error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class _DelayedWrite:
    """Starts a write after `delay` seconds unless settled first; settling awaits a started one."""

    def __init__(self, delay: float, write: Callable[[], Awaitable[None]]) -> None:
        self._write = write
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(delay, self._start)

    def _start(self) -> None:
        self._task = asyncio.ensure_future(self._write())

    async def settle(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            # the outcome write that follows retries and reports on its own
            with contextlib.suppress(StoreUnavailableError):
                await asyncio.shield(self._task)


async def _wait_or_cancelled(cancelled: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` seconds; True if the run was cancelled meanwhile."""
    if cancelled.is_set():
        return True
    try:
        async with asyncio.timeout(delay):
            await cancelled.wait()
    except TimeoutError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    text = str(exc)
    # dagwire's own errors (and an adapter's status relayed over gRPC) already read as a
    # sentence; a class-name prefix helps only for an in-process adapter's plain exception.
    if isinstance(exc, DagwireError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
