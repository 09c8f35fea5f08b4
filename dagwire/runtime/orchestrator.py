"""The `Orchestrator`: drives a workflow's DAG through a dispatcher and records every attempt.

This module is the thin public front. The work is split by job:

- `_driver`: the driver loop of one run (one asyncio task owning the run's scheduler; only it
  touches the graph, so no locks), outcomes, cancellation, the end of a run;
- `_attempts`: the attempts of one task (dispatch, outputs, records);
- `_durability` and `_core`: writes that wait out store outages, events made durable before
  they are published, the run record written by its owner under a lease;
- `_resume`: rebuilding a run from the store (an adopted run's state, a non-owner's view);
- `_leases`: leases, adoption and hand-over (docs/durability.md): each run is owned by one
  orchestrator under a lease it renews; when an owner's lease lapses, any live orchestrator
  claims the next lease epoch (an insert-only claim, so exactly one wins) and resumes the run
  from its durable records and events.

Starting, reading, watching and cancelling runs live here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from dagwire.errors import (
    NotFoundError,
    RunAlreadyFinishedError,
)
from dagwire.graph.dag import DAG
from dagwire.ids import new_id, new_trace_id
from dagwire.models import (
    DEFAULT_NAMESPACE,
    NodeSummary,
    RunRecord,
    RunStatus,
    RunSummary,
    TaskStatus,
    WorkflowSpec,
    utc_now,
)
from dagwire.runtime._core import OrchestratorCore, secrets_namespace
from dagwire.runtime._leases import LeasesMixin
from dagwire.runtime._resume import events_prefix, fold_events, replay_from_records
from dagwire.runtime._state import (
    backoff_delay,
)
from dagwire.runtime.dispatcher import Dispatcher, TaskDispatcher
from dagwire.runtime.events import RunEvent, RunEventKind
from dagwire.stores.base import ArtifactStore, ExecutionStore

__all__ = ["Orchestrator", "PreparedRun", "backoff_delay", "prepare_run", "run_id_for_request"]

_log = logging.getLogger("dagwire.orchestrator")

#: Namespace of the run ids derived from request ids (`run_id_for_request`).
_REQUEST_NAMESPACE = uuid.UUID("6f1d0c4e-3b1a-5e07-9a39-7c2f4b8d2a61")
#: How often a replica that does not drive a run polls the store for its new events.
_EVENT_POLL_SECONDS = 0.1


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


def run_id_for_request(request_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The run id of a run started with `request_id` in `namespace`: a UUID derived from both
    (version 5).

    Deterministic, so a retried start finds the run in the store after a restart; runs started
    without a request id get a time-ordered UUIDv7 (listings sort by `created_at` either way).
    Scoped by namespace, so two namespaces may use one request_id: each namespace but
    ``default`` (whose ids stay those of runs made before namespaces) derives from its own
    UUID namespace, so no choice of request_id in one reaches another's run.
    """
    if namespace == DEFAULT_NAMESPACE:
        return str(uuid.uuid5(_REQUEST_NAMESPACE, request_id))
    scope = uuid.uuid5(_REQUEST_NAMESPACE, f"namespace:{namespace}")
    return str(uuid.uuid5(scope, request_id))


class Orchestrator(LeasesMixin):
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
        secrets_dir: where `${secret.NAME}` values are read, ``DIR/<namespace>/NAME``
            (`DAGWIRE_SECRETS_DIR` for the service); None: a spec that uses one is invalid.
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
        secrets_dir: str | os.PathLike[str] | None = None,
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
            secrets_dir=secrets_dir,
        )

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
        namespace: str = DEFAULT_NAMESPACE,
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
            WorkflowValidationError: the spec or its variables are invalid, or it names a
                secret that cannot be read (`${secret.NAME}`); nothing was recorded.
            StoreUnavailableError: the run could not be recorded.
        """
        prepared = (
            workflow if isinstance(workflow, PreparedRun) else prepare_run(workflow, user_vars)
        )
        spec, resolved, dag = prepared.spec, prepared.resolved, prepared.dag
        run_id = run_id_for_request(request_id, namespace) if request_id else new_id()
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
            namespace=namespace,
        )
        if resolved.uses_secrets:  # reads files: off the event loop
            await asyncio.to_thread(self._secrets.check, resolved, secrets_namespace(record))
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

    async def run_namespace(self, run_id: str) -> str:
        """The namespace of a run: from memory for a run this orchestrator drives or drove
        (no store read, so it answers while the store is down), else from its stored record.

        Raises:
            NotFoundError: no such run.
        """
        state = self._active.get(run_id) or self._finished.get(run_id)
        if state is not None:
            return state.record.namespace
        record = await self._execution_store.get_run(run_id)
        if record is None:
            raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
        return record.namespace

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
