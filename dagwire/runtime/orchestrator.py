"""The `Orchestrator`: drives a workflow's DAG through a dispatcher and records every attempt.

This module is the thin public front. The work is split by job:

- `_driver`: the driver loop of one run (one asyncio task owning the run's scheduler; only it
  touches the graph, so no locks), outcomes, cancellation, the end of a run;
- `_attempts`: the attempts of one task (dispatch, outputs, records);
- `_durability` and `_core`: writes that wait out store outages, events made durable before
  they are published, the run record written by its owner under a lease;
- `_resume`: rebuilding a run from the store.

Leases, adoption and resume live here (docs/durability.md): each run is owned by one
orchestrator under a lease it renews; when an owner's lease lapses, any live orchestrator
claims the next lease epoch (an insert-only claim, so exactly one wins) and resumes the run
from its durable records and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from dagwire.errors import (
    DagwireError,
    NotFoundError,
    RunAlreadyFinishedError,
    StoreUnavailableError,
    WorkflowValidationError,
)
from dagwire.graph.dag import DAG
from dagwire.graph.scheduler import Scheduler
from dagwire.ids import new_id, new_trace_id
from dagwire.models import (
    ExecutionRecord,
    NodeSummary,
    RunEventRecord,
    RunRecord,
    RunStatus,
    RunSummary,
    TaskNode,
    TaskStatus,
    WorkflowSpec,
    utc_now,
)
from dagwire.runtime._core import LeaseLostError, OrchestratorCore
from dagwire.runtime._driver import DriverMixin
from dagwire.runtime._durability import EventJournal
from dagwire.runtime._resume import events_prefix, fold_events, replay_from_records
from dagwire.runtime._state import (
    LOST_ATTEMPT_ERROR,
    NodeHistory,
    NodeOutcome,
    RunState,
    backoff_delay,
)
from dagwire.runtime.dispatcher import Dispatcher, TaskDispatcher
from dagwire.runtime.events import EventLog, RunEvent, RunEventKind
from dagwire.stores.base import ArtifactStore, ExecutionStore

__all__ = ["Orchestrator", "PreparedRun", "backoff_delay", "prepare_run", "run_id_for_request"]

_log = logging.getLogger("dagwire.orchestrator")

#: Namespace of the run ids derived from request ids (`run_id_for_request`).
_REQUEST_NAMESPACE = uuid.UUID("6f1d0c4e-3b1a-5e07-9a39-7c2f4b8d2a61")
#: How often the owner looks for cancellation requests made on other replicas.
_CANCEL_POLL_SECONDS = 0.5
#: How often a replica that does not drive a run polls the store for its new events.
_EVENT_POLL_SECONDS = 0.1
#: Runs listed per page when looking for runs to adopt.
_ADOPTION_PAGE = 200


@dataclasses.dataclass(frozen=True, slots=True)
class PreparedRun:
    """A workflow checked, resolved and turned into its graph, ready for `start_run`.

    Made by `prepare_run`, which does every CPU-bound step of starting a run, so a server can
    make it off its event loop (in a thread) and the spec is parsed and resolved only once.
    """

    spec: WorkflowSpec
    resolved: WorkflowSpec
    dag: DAG
    spec_dict: dict[str, Any]
    user_vars: dict[str, str]


def prepare_run(
    workflow: Mapping[str, Any] | WorkflowSpec, user_vars: Mapping[str, str] | None = None
) -> PreparedRun:
    """Validate `workflow`, resolve its `${user.*}` placeholders and build its graph.

    Pure CPU work with no I/O and no event loop: safe to call in a worker thread.

    Raises:
        WorkflowValidationError: the spec or its variables are invalid.
    """
    spec = (
        workflow if isinstance(workflow, WorkflowSpec) else WorkflowSpec.from_dict(dict(workflow))
    )
    resolved = spec.resolve(dict(user_vars or {}))
    dag = DAG.from_workflow(resolved)
    stored = {str(k): str(v) for k, v in (user_vars or {}).items()}
    return PreparedRun(spec, resolved, dag, spec.to_dict(), stored)


def run_id_for_request(request_id: str) -> str:
    """The run id of a run started with `request_id`: a UUID derived from it (version 5).

    Deterministic, so a retried start finds the run in the store after a restart; runs started
    without a request id get a time-ordered UUIDv7 (listings sort by `created_at` either way).
    """
    return str(uuid.uuid5(_REQUEST_NAMESPACE, request_id))


class Orchestrator(DriverMixin):
    """Runs workflows: validates the spec, schedules its DAG, dispatches tasks, records results.

    With an execution store that keeps a run ledger (`RunLedger`: the SQLite, MongoDB and
    remote stores do), runs are durable: their events are stored before they are streamed,
    each attempt's start is recorded while it is dispatched, and a run whose owner died is
    adopted and resumed by any orchestrator on the same store (see `recover_orphans`).

    Args:
        artifact_store: where task outputs are stored.
        execution_store: where runs and per-attempt execution records are stored.
        dispatcher: routes tasks to adapters; a fresh in-process `Dispatcher()` when omitted.
        instance_id: this orchestrator's identity as the owner of its runs (generated if omitted).
        lease_seconds: how long a run's ownership lasts without renewal (renewed every third).
        store_retry_seconds: how long writes to an unavailable store are retried before the run
            fails with "store unavailable".
        running_record_after: attempts still running after this many seconds get a `running`
            execution record (default 0.5); the durable start of every attempt is its event.
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
        store_retry_seconds: float = 300.0,
        running_record_after: float | None = None,
        on_run_start: Callable[[RunRecord], None] | None = None,
    ) -> None:
        OrchestratorCore.__init__(
            self,
            artifact_store,
            execution_store,
            dispatcher if dispatcher is not None else Dispatcher(),
            instance_id=instance_id or f"orchestrator-{new_id()}",
            lease_seconds=lease_seconds,
            store_retry_seconds=store_retry_seconds,
            running_record_after=running_record_after,
            on_run_start=on_run_start,
        )
        self._keeper: asyncio.Task[None] | None = None
        self._adopting = False
        self._closing = False

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

    @property
    def active_run_ids(self) -> list[str]:
        """Runs this orchestrator is executing now."""
        return list(self._active)

    # ------------------------------------------------------------------ starting runs

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
        workflow: Mapping[str, Any] | WorkflowSpec | PreparedRun,
        *,
        user_vars: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> str:
        """Validate a workflow, record the run as `running` and start it; return its `run_id`.

        A repeated `request_id` returns the run started by the first call instead of a new one,
        also after a restart or from another orchestrator on the same store: the id of a run
        started with a `request_id` is derived from it (`run_id_for_request`), and the run
        record is created with a create-only insert, so of two orchestrators given one new
        request_id at the same instant exactly one starts the run.

        A `PreparedRun` (from `prepare_run`, e.g. made in a thread) is used as it is, with
        the variables it was resolved with; `user_vars` is then ignored.

        Raises:
            WorkflowValidationError: the spec or its variables are invalid; nothing was recorded.
            StoreUnavailableError: the run could not be recorded.
        """
        prepared = (
            workflow if isinstance(workflow, PreparedRun) else prepare_run(workflow, user_vars)
        )
        spec, resolved, dag = prepared.spec, prepared.resolved, prepared.dag
        run_id = run_id_for_request(request_id) if request_id else new_id()
        if request_id and (run_id in self._active or run_id in self._finished):
            return run_id
        ledger = self._ledger
        if request_id and ledger is None:
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
            spec=prepared.spec_dict,
            user_vars=dict(prepared.user_vars),
            request_id=request_id or run_id,
            trace_id=new_trace_id(),
            owner=self.instance_id,
            lease_expires_at=now + self._lease,
            lease_epoch=1 if ledger is not None else 0,
        )
        state = self._new_state(record, resolved, dag, prior=[])
        # active before it is saved: adoption must never see it as an orphan
        self._active[run_id] = state
        try:
            if ledger is not None:
                created = await self._durable(
                    lambda: ledger.create_run(record), f"creating run {run_id}"
                )
                if not created:  # another call with this request_id won
                    self._active.pop(run_id, None)
                    state.done.set()
                    return run_id
            else:
                await self._save_run(state)
        except BaseException:
            self._active.pop(run_id, None)
            state.done.set()  # releases `aclose()`, which waits for every active run
            raise
        self._start_driver(state)
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

    def _new_state(
        self, record: RunRecord, spec: WorkflowSpec, dag: DAG, *, prior: list[RunEvent]
    ) -> RunState:
        ledger = self._ledger
        events = EventLog(record.run_id, prior=prior, durable=ledger is not None)
        state = RunState(
            record=record,
            spec=spec,
            dag=dag,
            scheduler=Scheduler(dag),
            events=events,
            statuses=dict.fromkeys(dag.nodes, TaskStatus.PENDING),
            attempts=dict.fromkeys(dag.nodes, 0),
            errors={},
        )
        if ledger is not None:
            state.journal = EventJournal(ledger, self._guard, events, record.lease_epoch)
        return state

    def _start_driver(self, state: RunState) -> None:
        state.driver = asyncio.create_task(self._drive(state), name=f"dagwire-run-{state.run_id}")
        self._ensure_keeper()

    # ------------------------------------------------------------------ reading runs

    async def wait_run(self, run_id: str) -> RunSummary:
        """Wait for a run to finish and return its summary (wherever it is driven).

        Raises:
            NotFoundError: no such run.
        """
        while True:
            state = self._active.get(run_id) or self._finished.get(run_id)
            if state is not None:
                await state.done.wait()
                if state.summary is not None:
                    return state.summary
                await asyncio.sleep(_EVENT_POLL_SECONDS)  # handed over: its new owner ends it
                continue
            record = await self._execution_store.get_run(run_id)
            if record is None:
                raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
            if RunStatus(record.status).is_final:
                return record.summary()
            await asyncio.sleep(0.2)  # driven by another orchestrator (or adopted here soon)

    async def watch_run(self, run_id: str, *, after_sequence: int = 0) -> AsyncIterator[RunEvent]:
        """The run's events after `after_sequence`: first those already recorded, then live ones,
        always ending with `run_finished`.

        Works on any orchestrator for any run: the owner streams its events as they become
        durable; another replica polls the store for them (every 0.1 s), and follows the run
        across its owner's death and adoption with the same numbering. A run that kept no
        events (a store without a run ledger) is replayed from its records once finished.

        Raises:
            NotFoundError: no such run.
        """
        position = max(after_sequence, 0)
        while True:
            state = self._active.get(run_id) or self._finished.get(run_id)
            if state is not None:
                async for event in state.events.follow(position):
                    yield event
                    position = event.sequence
                    if event.kind is RunEventKind.RUN_FINISHED:
                        return
                if not state.events.handed_over:
                    return
            async for event in self._poll_events(run_id, position):
                yield event
                position = event.sequence
                if event.kind is RunEventKind.RUN_FINISHED:
                    return
            # `_poll_events` stops when the run became active here: follow it in memory

    async def _poll_events(self, run_id: str, after: int) -> AsyncIterator[RunEvent]:
        """A run's events from the store, until `run_finished` or until it is driven here."""
        ledger = self._ledger
        record = await self._execution_store.get_run(run_id)
        if record is None:
            raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
        position = after
        if ledger is None:
            summary = await self.wait_run(run_id)
            records = await self._execution_store.list_records(run_id)
            for event in replay_from_records(run_id, summary, records).snapshot(position):
                yield event
            return
        empty_checks = 0
        while run_id not in self._active:
            stored = await ledger.list_events(run_id, after=position, limit=1000)
            batch = events_prefix(run_id, stored, after=position)
            for event in batch:
                yield event
                position = event.sequence
                if event.kind is RunEventKind.RUN_FINISHED:
                    return
            if batch:
                continue
            empty_checks += 1
            if position == 0 and empty_checks % 20 == 1:
                record = await self._execution_store.get_run(run_id)
                if record is not None and RunStatus(record.status).is_final:
                    # finished without stored events (before the ledger existed): replay
                    records = await self._execution_store.list_records(run_id)
                    log = replay_from_records(run_id, record.summary(), records)
                    for event in log.snapshot(position):
                        yield event
                    return
            await asyncio.sleep(_EVENT_POLL_SECONDS)

    async def get_run(self, run_id: str) -> RunRecord:
        """The run's record, with live task statuses while it runs (on any orchestrator: a
        replica that does not drive the run folds its stored events).

        Raises:
            NotFoundError: no such run.
        """
        state = self._active.get(run_id)
        if state is not None:
            return dataclasses.replace(state.record, nodes=self._node_summaries(state))
        record = await self._execution_store.get_run(run_id)
        if record is None:
            raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
        if RunStatus(record.status).is_final or self._ledger is None:
            return record
        events = await self._all_events(run_id)
        pending = {
            str(task.get("id")): NodeSummary(status=TaskStatus.PENDING)
            for task in record.spec.get("tasks") or ()
            if isinstance(task, dict)
        }
        return dataclasses.replace(record, nodes=fold_events(events, pending))

    async def _all_events(self, run_id: str) -> list[RunEvent]:
        ledger = self._ledger
        assert ledger is not None
        stored: list[RunEventRecord] = []
        while True:
            page = await ledger.list_events(run_id, after=len(stored), limit=1000)
            stored += page
            if len(page) < 1000:
                return events_prefix(run_id, stored)

    async def cancel_run(self, run_id: str) -> RunStatus:
        """Cancel a running run: stop dispatching, cancel in-flight adapter calls, and end every
        unfinished task `cancelled`. Returns the run's status once it stopped (`cancelled`).

        Any orchestrator can cancel any run: for a run driven elsewhere the request is recorded
        in the store, where the owner finds it within half a second.

        Raises:
            NotFoundError: no such run.
            RunAlreadyFinishedError: the run already ended with another status.
        """
        state = self._active.get(run_id)
        if state is not None:
            self._request_cancel(state)
            return await self._stopped_status(run_id)
        finished = self._finished.get(run_id)
        if finished is not None and finished.summary is not None:
            status = finished.summary.status
        else:
            record = await self._execution_store.get_run(run_id)
            if record is None:
                raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
            status = RunStatus(record.status)
            if status is RunStatus.RUNNING:
                ledger = self._ledger
                if ledger is None:
                    raise RunAlreadyFinishedError(run_id, "running (owned by another orchestrator)")
                await self._durable(
                    lambda: ledger.request_cancel(run_id), f"cancelling run {run_id}"
                )
                return await self._stopped_status(run_id)
        if status is RunStatus.CANCELLED:
            return status
        raise RunAlreadyFinishedError(run_id, str(status))

    async def _stopped_status(self, run_id: str) -> RunStatus:
        summary = await self.wait_run(run_id)
        return summary.status

    # ------------------------------------------------------------------ leases and adoption

    async def recover_orphans(self) -> list[str]:
        """Adopt and resume the runs left `running` by orchestrators whose lease lapsed (or by
        this instance before a restart), and keep doing so every third of a lease.

        A run another live orchestrator owns is never touched. Without a run ledger in the
        execution store, orphans cannot be resumed and are marked `failed` instead.

        Returns:
            The ids of the runs adopted (or failed) by this scan.
        """
        self._adopting = True
        try:
            return await self._adopt_orphans()
        finally:
            self._ensure_keeper()  # later scans retry whatever this one could not do

    async def _adopt_orphans(self) -> list[str]:
        now = utc_now()
        orphans: list[RunRecord] = []
        after: str | None = None
        while True:
            page = await self._execution_store.list_runs(
                status=RunStatus.RUNNING, limit=_ADOPTION_PAGE, after=after
            )
            for record in page:
                if record.run_id in self._active or record.run_id in self._finished:
                    continue  # driven here, or ended here with its final record still pending
                lease_over = record.lease_expires_at is None or record.lease_expires_at <= now
                if lease_over or record.owner == self.instance_id:
                    orphans.append(record)
            if len(page) < _ADOPTION_PAGE:
                break
            after = page[-1].run_id
        adopted: list[str] = []
        for record in orphans:
            if self._closing:
                break
            try:
                if await self._adopt(record):
                    adopted.append(record.run_id)
            except StoreUnavailableError:
                raise
            except Exception as exc:  # one bad run must not stop the others' recovery
                _log.exception("could not resume run", extra={"run_id": record.run_id})
                await self._fail_orphan(record, f"could not resume the run: {exc}")
                adopted.append(record.run_id)
        return adopted

    async def _adopt(self, record: RunRecord) -> bool:
        ledger = self._ledger
        if ledger is None:
            await self._fail_orphan(
                record, f"orchestrator restarted: owner {record.owner or '(unknown)'} stopped"
            )
            return True
        epoch = max(record.lease_epoch, 1) + 1
        if not await ledger.claim_run(record.run_id, epoch, self.instance_id):
            return False  # another orchestrator adopted it first
        _log.warning(
            "adopting run: its owner's lease lapsed",
            extra={"run_id": record.run_id, "previous_owner": record.owner, "epoch": epoch},
        )
        await self._resume(
            dataclasses.replace(
                record,
                owner=self.instance_id,
                lease_epoch=epoch,
                lease_expires_at=utc_now() + self._lease,
            )
        )
        return True

    async def _fail_orphan(self, record: RunRecord, error: str) -> None:
        nodes = {
            node_id: node
            if node.status.is_final
            else dataclasses.replace(node, status=TaskStatus.FAILED, error=error)
            for node_id, node in record.nodes.items()
        }
        failed = dataclasses.replace(
            record, status=RunStatus.FAILED, finished_at=utc_now(), error=error, nodes=nodes
        )
        await self._durable(
            functools.partial(self._execution_store.save_run, failed),
            f"marking orphaned run {record.run_id} failed",
        )
        _log.warning("orphaned run marked failed", extra={"run_id": record.run_id, "error": error})

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

    def _ensure_keeper(self) -> None:
        if self._closing:
            return
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep(), name="dagwire-lease-keeper")

    async def _keep(self) -> None:
        """Renew the leases of the runs driven here, act on cancellation requests made on other
        replicas, and (once `recover_orphans` was called) adopt orphaned runs."""
        renew_every = max(self._lease.total_seconds() / 3, 0.05)
        tick = min(_CANCEL_POLL_SECONDS, renew_every)
        last_renewal = last_scan = time.monotonic()
        scan_failures = 0
        while self._active or self._adopting:
            await asyncio.sleep(tick)
            now = time.monotonic()
            try:  # nothing may stop the keeper: the leases of every run here depend on it
                with contextlib.suppress(StoreUnavailableError):
                    await self._poll_cancels()
                if now - last_renewal >= renew_every:
                    last_renewal = now
                    await self._renew_leases()
            except Exception:
                _log.exception("renewing leases or polling cancellations failed; trying again")
            if self._adopting and now - last_scan >= renew_every:
                last_scan = now
                try:
                    await self._adopt_orphans()
                    scan_failures = 0
                except Exception as exc:
                    scan_failures += 1
                    if scan_failures == 1 or scan_failures % 30 == 0:
                        _log.warning(
                            "looking for runs to adopt failed; retrying (%d in a row)",
                            scan_failures,
                            extra={"error": str(exc)},
                        )

    async def _poll_cancels(self) -> None:
        ledger = self._ledger
        if ledger is None or not self._active:
            return
        wanted = [r for r, s in self._active.items() if not s.cancel_requested]
        if not wanted:
            return
        for run_id in await ledger.cancel_requests(wanted):
            state = self._active.get(run_id)
            if state is not None:
                self._request_cancel(state)

    async def _renew_leases(self) -> None:
        for state in list(self._active.values()):
            if state.summary is not None or state.abandoned or state.finishing:
                continue  # a finishing run's final write renews the lease
            try:
                await self._save_run(state)
            except LeaseLostError:
                self._abandon(state)
            except DagwireError as exc:  # unavailable, or a store error that may pass
                if not isinstance(exc, StoreUnavailableError):
                    _log.warning(
                        "could not renew run lease",
                        extra={"run_id": state.run_id, "error": str(exc)},
                    )
                expires = state.record.lease_expires_at
                margin = self._lease / 3
                if expires is not None and utc_now() >= expires - margin:
                    self._abandon(state)  # stop before another orchestrator may adopt it
                else:
                    _log.warning("could not renew run lease", extra={"run_id": state.run_id})

    async def hand_over(self) -> list[str]:
        """Stop driving every run here and leave it for another orchestrator to adopt at once.

        For a replica that is being stopped (a rolling update): instead of cancelling its runs,
        it stops dispatching, cancels its in-flight adapter calls without recording them (the
        adopter records them lost and tries again, with the same idempotency key numbering),
        makes its events durable and writes each run's lease as lapsed, so the next scan of any
        live replica (within a third of a lease) adopts it. Runs whose outcome is decided are
        left to finish. Does nothing without a run ledger.

        Returns:
            The ids of the runs handed over.
        """
        if self._ledger is None:
            return []
        self._adopting = False  # never take back what is being handed over
        handed: list[str] = []
        for state in list(self._active.values()):
            if state.finishing or state.abandoned or state.done.is_set():
                continue
            state.abandoned = True  # from here on the driver lets the run go without writing
            state.dispatching = False
            if state.driver is not None:
                state.driver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await state.driver
            else:
                await self._let_go(state)
            try:
                if state.journal is not None:
                    await state.journal.drain()
                record = dataclasses.replace(state.record, lease_expires_at=utc_now())
                await self._save_run_as_is(state, record)
            except (StoreUnavailableError, LeaseLostError):
                _log.warning(
                    "could not hand the run over; its lease lapses on its own",
                    extra={"run_id": state.run_id},
                )
            if state.journal is not None:
                state.journal.stop()
            handed.append(state.run_id)
            _log.info("run handed over", extra={"run_id": state.run_id})
        return handed

    async def aclose(self) -> None:
        """Cancel the runs still in progress, wait for them to be recorded, stop background work."""
        self._closing = True
        self._adopting = False
        for state in list(self._active.values()):
            self._request_cancel(state)
        for state in list(self._active.values()):
            await state.done.wait()
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        for task in list(self._background):
            task.cancel()
