"""What every part of the orchestrator shares: its stores, its runs, durable writes, events."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from dagwire.errors import DagwireError, LeaseLostError
from dagwire.models import RunRecord, RunStatus, utc_now
from dagwire.runtime._durability import StoreGuard
from dagwire.runtime._state import RunState
from dagwire.runtime.dispatcher import TaskDispatcher
from dagwire.runtime.events import RunEvent, RunEventKind
from dagwire.runtime.secrets import DEFAULT_NAMESPACE, SecretResolver
from dagwire.stores.base import (
    ArtifactStore,
    ExecutionStore,
    FencedStore,
    OutcomeRecorder,
    RunLedger,
)

_log = logging.getLogger("dagwire.orchestrator")
_T = TypeVar("_T")


def secrets_namespace(record: RunRecord) -> str:
    """The namespace whose secrets a run uses (``DAGWIRE_SECRETS_DIR/<namespace>/NAME``).

    Every secrets call site of the orchestrator (the check at start, each dispatch) asks here:
    the run's own namespace, so a run reads only its namespace's secrets.
    """
    return record.namespace or DEFAULT_NAMESPACE


class OrchestratorCore:
    """The state and helpers the orchestrator's parts (`_attempts`, `_driver`, leases and
    resume in `orchestrator`) share."""

    def __init__(
        self,
        artifact_store: ArtifactStore,
        execution_store: ExecutionStore,
        dispatcher: TaskDispatcher,
        *,
        instance_id: str,
        lease_seconds: float,
        store_retry_seconds: float,
        running_record_after: float | None,
        on_run_start: Callable[[RunRecord], None] | None,
        secrets_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._artifact_store = artifact_store
        #: `${secret.NAME}` values, read at each dispatch (docs/security.md, "Secrets").
        self._secrets = SecretResolver(secrets_dir)
        self._execution_store = execution_store
        self._ledger: RunLedger | None = (
            execution_store if isinstance(execution_store, RunLedger) else None
        )
        #: Fences writes at the store (docs/durability.md): the owner needs no check of its own.
        self._fenced: FencedStore | None = (
            execution_store
            if self._ledger is not None and isinstance(execution_store, FencedStore)
            else None
        )
        self._dispatcher = dispatcher
        self.instance_id = instance_id
        self._lease = timedelta(seconds=lease_seconds)
        self._guard = StoreGuard(store_retry_seconds)
        # an attempt's durable start is its stored `task_started` event; a `running` record
        # is written too for attempts that outlast this delay (readers of the records see them)
        self._running_record_after = (
            running_record_after if running_record_after is not None else 0.5
        )
        self._on_run_start = on_run_start
        self._outcome_recorder: OutcomeRecorder | None = (
            execution_store
            if isinstance(execution_store, OutcomeRecorder)
            and execution_store.records_outputs_for(artifact_store)
            else None
        )
        self._active: dict[str, RunState] = {}
        self._finished: OrderedDict[str, RunState] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()
        self._keeper: asyncio.Task[None] | None = None  # the lease keeper (`_leases`)
        self._adopting = False  # scanning for orphaned runs (`recover_orphans` was called)
        self._closing = False
        #: Runs whose next epoch someone claimed without ever writing the run record (a
        #: claimer that died at once): run id → (the epoch, when first seen contested).
        self._contested: dict[str, tuple[int, float]] = {}

    def _ensure_keeper(self) -> None:
        """Have the lease keeper running (`_leases.LeasesMixin`; nothing to keep here)."""

    async def _durable(self, operation: Callable[[], Awaitable[_T]], what: str) -> _T:
        """Run a store operation, retrying while the store is unavailable (bounded, with backoff).

        Raises:
            StoreUnavailableError: the store stayed unavailable for `store_retry_seconds`.
        """
        return await self._guard.run(operation, what)

    def _emit(self, state: RunState, kind: RunEventKind, **fields: object) -> RunEvent:
        """Append an event to the run's log and have it written (published once durable)."""
        event = state.events.append(kind, **fields)
        if state.journal is not None:
            state.journal.flush_soon()
        return event

    async def _save_run(self, state: RunState) -> None:
        """Write the run record as its owner, with a renewed lease while it runs.

        Raises:
            LeaseLostError: another orchestrator claimed the run's next lease epoch.
            StoreUnavailableError: the store stayed unavailable.
        """
        async with state.save_lock:  # one writer per run record
            if state.abandoned:
                raise LeaseLostError(state.run_id, state.epoch)
            await self._check_lease(state)
            current = state.record
            record = current
            if not RunStatus(record.status).is_final:
                record = dataclasses.replace(record, lease_expires_at=utc_now() + self._lease)
            await self._durable(
                lambda: self._execution_store.save_run(record), f"saving run {state.run_id}"
            )
            # The driver may have replaced the record meanwhile (the run finished while a
            # lease renewal was in flight): keep its newer record, which its own save writes.
            if state.record is current:
                state.record = record

    async def _check_lease(self, state: RunState) -> None:
        """Raise `LeaseLostError` when another orchestrator claimed the run's next epoch.

        Only where the store does not fence the run's writes itself (an in-process store)."""
        ledger = self._ledger
        if ledger is None or not state.epoch or self._fenced is not None:
            return
        claimed = await self._durable(
            lambda: ledger.lease_claimed(state.run_id, state.epoch + 1),
            f"checking the lease of run {state.run_id}",
        )
        if claimed:
            raise LeaseLostError(state.run_id, state.epoch)

    async def _save_run_as_is(self, state: RunState, record: RunRecord) -> None:
        """Write `record` as the run's owner without renewing its lease (a hand-over).

        Raises:
            LeaseLostError: another orchestrator claimed the run's next lease epoch.
            StoreUnavailableError: the store stayed unavailable.
        """
        async with state.save_lock:
            await self._check_lease(state)
            before = state.record
            await self._durable(
                lambda: self._execution_store.save_run(record), f"saving run {state.run_id}"
            )
            if state.record is before:
                state.record = record

    async def _save_run_eventually(self, state: RunState) -> None:
        while True:
            try:
                await self._save_run(state)
                _log.info("final run status recorded", extra={"run_id": state.run_id})
                self._unfence(state)
                return
            except LeaseLostError:
                return
            except DagwireError:  # unavailable, or a store error that may pass
                await asyncio.sleep(5.0)

    async def _record_end_eventually(self, state: RunState) -> None:
        """Store the run's remaining events, then its final record (in that order: a record
        that says finished has its `run_finished` stored)."""
        if state.journal is not None:
            await state.journal.drain_eventually()
        await self._save_run_eventually(state)

    def _unfence(self, state: RunState) -> None:
        """The run's final record is durable: its writes need no lease epoch any more."""
        if self._fenced is not None and RunStatus(state.record.status).is_final:
            self._fenced.unfence(state.run_id)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
