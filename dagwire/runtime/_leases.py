"""Leases and adoption: the lease keeper (renewals, cancel requests from other replicas, the
scan for orphaned runs), claiming an orphan's next lease epoch, and handing runs over on a
graceful stop (docs/durability.md, "Ownership and leases")."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time

from dagwire.errors import DagwireError, LeaseLostError, StoreUnavailableError
from dagwire.models import RunRecord, RunStatus, TaskStatus, utc_now
from dagwire.runtime._resume import ResumeMixin

__all__ = ["LeasesMixin"]

_log = logging.getLogger("dagwire.orchestrator")

#: How often the owner looks for cancellation requests made on other replicas.
_CANCEL_POLL_SECONDS = 0.5
#: Runs listed per page when looking for runs to adopt.
_ADOPTION_PAGE = 200


class LeasesMixin(ResumeMixin):
    """Keeps the leases of the runs driven here and adopts the runs whose owner's lease lapsed."""

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
        listed = {record.run_id for record in orphans}
        for run_id in [r for r in self._contested if r not in listed]:
            del self._contested[run_id]  # adopted (or ended) meanwhile
        adopted: list[str] = []
        for record in orphans:
            if self._closing:
                break
            try:
                if await self._adopt(record):
                    adopted.append(record.run_id)
            except StoreUnavailableError:
                raise
            except Exception:  # one bad run must not stop the others'; the next scan retries
                _log.exception("could not adopt run", extra={"run_id": record.run_id})
        return adopted

    async def _adopt(self, record: RunRecord) -> bool:
        ledger = self._ledger
        if ledger is None:
            await self._fail_orphan(
                record, f"orchestrator restarted: owner {record.owner or '(unknown)'} stopped"
            )
            return True
        run_id = record.run_id
        epoch = max(record.lease_epoch, 1) + 1
        contested = self._contested.get(run_id)
        if (
            contested is not None
            and contested[0] >= epoch
            and time.monotonic() - contested[1] > 2 * self._lease.total_seconds()
        ):
            epoch = contested[0] + 1  # its claimer never wrote the record: claim past it
        if not await ledger.claim_run(run_id, epoch, self.instance_id):
            if contested is None or contested[0] != epoch:
                self._contested[run_id] = (epoch, time.monotonic())
            return False  # another orchestrator adopted it first
        self._contested.pop(run_id, None)
        _log.warning(
            "adopting run: its owner's lease lapsed",
            extra={"run_id": run_id, "previous_owner": record.owner, "epoch": epoch},
        )
        adopted = dataclasses.replace(
            record,
            owner=self.instance_id,
            lease_epoch=epoch,
            lease_expires_at=utc_now() + self._lease,
        )
        try:
            # the record says who owns the run before its history is read: a claim whose
            # record never follows is a claimer that died within milliseconds
            await self._durable(
                functools.partial(self._execution_store.save_run, adopted),
                f"taking over run {run_id}",
            )
            await self._resume(adopted)
        except LeaseLostError:
            _log.warning("another orchestrator took the run over first", extra={"run_id": run_id})
            return False
        except StoreUnavailableError:
            raise
        except Exception as exc:  # a run that cannot be resumed is failed, under our epoch
            _log.exception("could not resume run", extra={"run_id": run_id})
            await self._fail_orphan(adopted, f"could not resume the run: {exc}")
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
