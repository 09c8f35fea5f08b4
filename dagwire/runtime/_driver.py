"""The driver loop of one run: it alone touches the run's scheduler, starts tasks as they become
ready, takes their outcomes, and ends the run.

Events come in causal order: a task's `task_finished` precedes the events it causes (its
dependents' `skipped` outcomes, their `task_started`), and `run_finished` is last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from dagwire.errors import DagwireError, LeaseLostError, StoreUnavailableError
from dagwire.graph.dag import DAG
from dagwire.graph.scheduler import Scheduler
from dagwire.models import (
    Artifact,
    NodeSummary,
    RunRecord,
    RunStatus,
    RunSummary,
    TaskStatus,
    WorkflowSpec,
    utc_now,
)
from dagwire.runtime._attempts import AttemptsMixin
from dagwire.runtime._durability import EventJournal
from dagwire.runtime._state import FINISHED_RUNS_KEPT, NodeOutcome, RunState
from dagwire.runtime.events import EventLog, RunEvent, RunEventKind

_log = logging.getLogger("dagwire.orchestrator")


class DriverMixin(AttemptsMixin):
    """Drives runs: the scheduling loop, outcomes, cancellation and the end of a run."""

    async def _drive(self, state: RunState) -> None:
        if self._on_run_start is not None:
            self._on_run_start(state.record)
        try:
            await self._schedule(state)
        except LeaseLostError:
            state.abandoned = True
        except StoreUnavailableError as exc:
            if not state.abandoned:
                state.run_error = f"store unavailable: {exc}"
                _log.error("run failed: store unavailable", extra={"run_id": state.run_id})
                await self._stop_everything(state)
        except asyncio.CancelledError:
            if not state.abandoned:
                raise
        except Exception as exc:  # a bug, not a user mistake: keep the run's record truthful
            state.run_error = state.redact(f"internal error in the orchestrator: {exc!r}")
            _log.exception("run failed: internal error", extra={"run_id": state.run_id})
            await self._stop_everything(state)
        finally:
            if state.abandoned:
                await self._let_go(state)
            else:
                await self._finish(state)

    async def _schedule(self, state: RunState) -> None:
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

    def _start_task(self, state: RunState, node_id: str) -> None:
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

    def _report(self, state: RunState, node_id: str, task: asyncio.Task[NodeOutcome]) -> None:
        if task.cancelled():
            outcome = NodeOutcome(TaskStatus.CANCELLED, state.attempts[node_id], error="cancelled")
        elif (exc := task.exception()) is not None:
            if isinstance(exc, LeaseLostError):  # the store refused a write: not ours any more
                self._abandon(state)
                outcome = NodeOutcome(TaskStatus.CANCELLED, state.attempts[node_id], error=str(exc))
            elif isinstance(exc, StoreUnavailableError):
                outcome = NodeOutcome(
                    TaskStatus.FAILED, state.attempts[node_id], error=str(exc), store_error=exc
                )
            else:
                _log.error(
                    "task crashed", exc_info=exc, extra={"run_id": state.run_id, "node_id": node_id}
                )
                outcome = NodeOutcome(
                    TaskStatus.FAILED,
                    state.attempts[node_id],
                    error=state.redact(f"internal error: {exc!r}"),
                )
        else:
            outcome = task.result()
        state.completions.put_nowait((node_id, outcome))

    def _task_done(self, state: RunState, node_id: str, outcome: NodeOutcome) -> None:
        del state.running[node_id]
        state.in_flight_calls.pop(node_id, None)
        if outcome.store_error is not None:
            raise outcome.store_error
        self._settle_node(state, node_id, outcome)

    def _settle_node(self, state: RunState, node_id: str, outcome: NodeOutcome) -> None:
        """Apply a task's final outcome to the scheduler and say so, then what it caused."""
        state.statuses[node_id] = outcome.status
        state.attempts[node_id] = outcome.attempts
        if outcome.error is not None:
            state.errors[node_id] = outcome.error
        skipped: list[str] = []
        if outcome.status is TaskStatus.SUCCEEDED:
            state.artifacts[node_id] = outcome.artifacts
            state.consumers_left[node_id] = len(state.dag.dependents(node_id))
            if state.consumers_left[node_id] == 0:
                state.artifacts[node_id] = [a.without_content() for a in outcome.artifacts]
            state.scheduler.mark_completed(node_id)
        else:
            skipped = state.scheduler.mark_failed(node_id) or []
            if outcome.status is TaskStatus.FAILED and state.spec.fail_fast:
                state.dispatching = False
        self._emit_finished(state, node_id)
        for skipped_id in skipped:
            if state.statuses[skipped_id] is TaskStatus.PENDING:
                state.statuses[skipped_id] = TaskStatus.SKIPPED
                state.errors[skipped_id] = f"skipped: upstream task {node_id!r} {outcome.status}"
                self._emit_finished(state, skipped_id)

    def _request_cancel(self, state: RunState) -> None:
        if state.cancel_requested or state.done.is_set():
            return
        _log.info("run cancellation requested", extra={"run_id": state.run_id})
        state.cancel_requested = True
        state.dispatching = False
        state.cancelled.set()
        self._cancel_pending(state, "cancelled: the run was cancelled")
        for call in state.in_flight_calls.values():
            call.cancel()

    def _abandon(self, state: RunState) -> None:
        """Stop driving a run whose lease this orchestrator lost: write nothing more for it;
        its new owner records what became of the attempts in flight."""
        if state.abandoned or state.done.is_set():
            return
        _log.warning(
            "lost the lease of a run; handing it over",
            extra={"run_id": state.run_id, "epoch": state.epoch},
        )
        state.abandoned = True
        state.dispatching = False
        if state.journal is not None:
            state.journal.stop()
        for task in state.running.values():
            task.cancel()
        if state.driver is not None and not state.finishing:
            # a finishing driver is left to end (it writes nothing more: the journal is
            # stopped and `_save_run` refuses), so that the run's waiters are released
            state.driver.cancel()

    async def _let_go(self, state: RunState) -> None:
        for task in state.running.values():
            task.cancel()
        if state.running:
            await asyncio.gather(*state.running.values(), return_exceptions=True)
        state.running.clear()
        state.events.hand_over()
        self._active.pop(state.run_id, None)
        state.done.set()

    async def _stop_everything(self, state: RunState) -> None:
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

    def _cancel_pending(self, state: RunState, reason: str) -> None:
        for node_id in state.scheduler.cancel_pending():
            if state.statuses[node_id] is TaskStatus.PENDING:
                state.statuses[node_id] = TaskStatus.CANCELLED
                state.errors[node_id] = reason
                self._emit_finished(state, node_id)

    async def _finish(self, state: RunState) -> None:
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
        state.finishing = True
        self._emit(
            state, RunEventKind.RUN_FINISHED, run_status=run_status, error=error, summary=summary
        )
        drained = True
        if state.journal is not None:
            try:  # run_finished is durable before the record says so: an adopter finishes it
                await state.journal.drain()
            except Exception as exc:  # keep trying in the background, then record the end
                drained = False
                _log.error(
                    "run events not stored yet; the final status is recorded once they are",
                    extra={"run_id": state.run_id, "error": str(exc)},
                )
        state.record = dataclasses.replace(
            state.record, status=run_status, finished_at=utc_now(), error=error, nodes=nodes
        )
        state.summary = summary
        if not drained:
            self._spawn(self._record_end_eventually(state))
        else:
            try:
                await self._save_run(state)
                self._unfence(state)
            except LeaseLostError:
                _log.warning(
                    "final run status not recorded: another orchestrator owns the run now",
                    extra={"run_id": state.run_id, "epoch": state.epoch},
                )
            except DagwireError:
                _log.error(
                    "final run status not recorded yet; retrying in the background",
                    extra={"run_id": state.run_id},
                )
                self._spawn(self._save_run_eventually(state))
        state.events.publish(len(state.events))
        self._active.pop(state.run_id, None)
        self._finished[state.run_id] = state
        while len(self._finished) > FINISHED_RUNS_KEPT:
            self._finished.popitem(last=False)
        state.done.set()
        _log.info("run finished", extra={"run_id": state.run_id, "status": str(run_status)})

    def _node_summaries(self, state: RunState) -> dict[str, NodeSummary]:
        return {
            node_id: NodeSummary(
                status=status,
                attempts=state.attempts[node_id],
                artifacts=[a.without_content() for a in state.artifacts.get(node_id, ())],
                error=state.errors.get(node_id) if status is not TaskStatus.SUCCEEDED else None,
            )
            for node_id, status in state.statuses.items()
        }

    def _emit_finished(self, state: RunState, node_id: str) -> None:
        status = state.statuses[node_id]
        self._emit(
            state,
            RunEventKind.TASK_FINISHED,
            node_id=node_id,
            agent=state.dag.nodes[node_id].agent,
            task_status=status,
            attempts=state.attempts[node_id],
            error=state.errors.get(node_id) if status is not TaskStatus.SUCCEEDED else None,
            artifacts=tuple(a.without_content() for a in state.artifacts.get(node_id, ())),
        )

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
            state.journal = EventJournal(
                ledger,
                self._guard,
                events,
                record.lease_epoch,
                on_lease_lost=lambda: self._abandon(state),
            )
            if self._fenced is not None:
                self._fenced.fence(record.run_id, record.lease_epoch)
        return state

    def _start_driver(self, state: RunState) -> None:
        state.driver = asyncio.create_task(self._drive(state), name=f"dagwire-run-{state.run_id}")
        self._ensure_keeper()
