"""Durability: store writes that wait out outages, and the journal that makes run events durable
before anyone sees them (docs/durability.md)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from dagwire.errors import LeaseLostError, StoreUnavailableError
from dagwire.models import RunEventRecord
from dagwire.runtime.events import EventLog
from dagwire.stores.base import RunLedger

__all__ = ["EventJournal", "StoreGuard"]

_log = logging.getLogger("dagwire.orchestrator")
_T = TypeVar("_T")

#: Longest wait between two tries of a store operation during an outage.
_MAX_RETRY_DELAY = 5.0


class StoreGuard:
    """Runs store operations, retrying while the store is unavailable (bounded backoff).

    Logs one warning when an outage starts and one line when it ends, whatever the number of
    operations waiting meanwhile, so a long outage does not flood the log.

    Args:
        retry_seconds: how long one operation keeps retrying before it gives up.
    """

    def __init__(self, retry_seconds: float) -> None:
        self.retry_seconds = retry_seconds
        self._outage_since: float | None = None

    @property
    def in_outage(self) -> bool:
        """True while the last store operation failed for unavailability."""
        return self._outage_since is not None

    async def run(
        self,
        operation: Callable[[], Awaitable[_T]],
        what: str,
        *,
        retry_seconds: float | None = None,
    ) -> _T:
        """`operation()`, retried while it raises `StoreUnavailableError`.

        Raises:
            StoreUnavailableError: the store stayed unavailable for `retry_seconds`.
        """
        limit = self.retry_seconds if retry_seconds is None else retry_seconds
        deadline = time.monotonic() + limit
        delay = 0.1
        while True:
            try:
                result = await operation()
            except StoreUnavailableError as exc:
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    _log.warning(
                        "store unavailable; runs wait for it (up to %g s)",
                        limit,
                        extra={"what": what, "error": str(exc)},
                    )
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailableError(f"{what}: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_DELAY)
                continue
            if self._outage_since is not None:
                _log.info(
                    "store available again after %.1f s",
                    time.monotonic() - self._outage_since,
                )
                self._outage_since = None
            return result


class EventJournal:
    """Writes a run's events to the store in order, one write in flight at a time, and
    publishes them to the run's `EventLog` readers once durable.

    One write at a time per run keeps the stored events a gap-free prefix of the numbering
    even if the orchestrator dies mid-write; events appended meanwhile go out together in the
    next write (batched with the other runs' by the store client).
    """

    def __init__(
        self,
        ledger: RunLedger,
        guard: StoreGuard,
        log: EventLog,
        epoch: int,
        *,
        on_lease_lost: Callable[[], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._on_lease_lost = on_lease_lost
        self._guard = guard
        self._log = log
        self.epoch = epoch
        #: Events up to this sequence are stored (the log may have published more: see
        #: `publish_all`), so what is left to write never depends on what readers saw.
        self.durable = log.published
        self._writer: asyncio.Task[None] | None = None
        self._stopped = False

    def flush_soon(self) -> None:
        """Write the events appended so far (returns at once)."""
        if self._stopped:
            return
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._write_all(), name=f"dagwire-events-{self._log.run_id}"
            )
            self._writer.add_done_callback(_retrieve)

    async def drain(self) -> None:
        """Wait until every event appended so far is durable and published.

        Raises:
            StoreUnavailableError: the store stayed unavailable for the guard's limit.
        """
        while not self._stopped and self.durable < len(self._log):
            self.flush_soon()
            writer = self._writer
            assert writer is not None
            await asyncio.shield(writer)

    def stop(self) -> None:
        """Write nothing more (the run was handed over to another orchestrator)."""
        self._stopped = True
        if self._writer is not None:
            self._writer.cancel()

    async def _write_all(self) -> None:
        # let the tasks started in the same tick as this writer (a finished task's dependents,
        # whose first act is their `task_started`) append first: one write carries them all
        await asyncio.sleep(0)
        while not self._stopped:
            batch = self._log.snapshot_all(self.durable)
            if not batch:
                return
            records = [
                RunEventRecord(self._log.run_id, e.sequence, self.epoch, e.to_json()) for e in batch
            ]
            try:
                await self._guard.run(
                    functools.partial(self._ledger.append_events, records),
                    f"storing events of run {self._log.run_id}",
                )
            except LeaseLostError:  # the store fenced this writer off: write nothing more
                self._stopped = True
                if self._on_lease_lost is not None:
                    self._on_lease_lost()
                raise
            self.durable = batch[-1].sequence
            self._log.publish(batch[-1].sequence)

    async def drain_eventually(self, retry_every: float = 5.0) -> None:
        """`drain`, tried again every `retry_every` seconds whatever fails, until every event
        is stored or the journal is stopped (the run was handed over)."""
        while True:
            try:
                await self.drain()
                return
            except Exception as exc:  # logged once per try; the run's record waits for it
                _log.warning(
                    "run events not stored yet; trying again in %g s",
                    retry_every,
                    extra={"run_id": self._log.run_id, "error": str(exc)},
                )
            await asyncio.sleep(retry_every)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a writer's failure as seen: `drain` reports it to whoever waits."""
    if not task.cancelled():
        task.exception()
