"""The attempts of one task: dispatch under its timeout, store the outputs, record each attempt.

An attempt's `running` record is written while the attempt is dispatched (so a resumed run
knows which attempts were in flight) and its outcome after; both go through one writer per
record key. Every dispatch carries the attempt as an explicit value (`TaskNode.run_id`,
`id`, `attempt`, deadline and trace id), never through ambient context.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from dagwire.errors import (
    AdapterNotFoundError,
    AttemptTimeoutError,
    DagwireError,
    NonRetryableError,
    NotFoundError,
    ResourceExhaustedError,
    StoreUnavailableError,
)
from dagwire.limits import OUTCOME_INLINE_BYTES
from dagwire.models import Artifact, ExecutionRecord, TaskNode, TaskStatus, utc_now
from dagwire.runtime._core import OrchestratorCore, secrets_namespace
from dagwire.runtime._state import (
    NodeOutcome,
    RunState,
    backoff_delay,
    describe,
    wait_or_cancelled,
)
from dagwire.runtime.events import RunEventKind

_log = logging.getLogger("dagwire.orchestrator")


class AdapterStoreUnavailableError(DagwireError):
    """An adapter (or the dispatcher) reported that it could not reach its store."""


class AttemptsMixin(OrchestratorCore):
    """Makes the attempts of one workflow task (`_run_task`)."""

    async def _run_task(
        self, state: RunState, node: TaskNode, inputs: list[Artifact]
    ) -> NodeOutcome:
        """Make the attempts of one task until it succeeds, fails for good or is cancelled.

        A resumed task continues its numbering; attempts lost with a dead orchestrator do not
        count against `max_attempts` (`RunState.history`).
        """
        input_ids = [a.artifact_id for a in inputs if a.artifact_id]
        policy = node.retry
        history = state.history.get(node.id)
        attempt = history.attempts_made if history is not None else 0
        counted = history.attempts_counted if history is not None else 0
        while True:
            attempt += 1
            counted += 1
            state.attempts[node.id] = attempt
            task = dataclasses.replace(node, attempt=attempt, run_id=state.run_id)
            started_at = utc_now()
            self._emit(
                state,
                RunEventKind.TASK_STARTED,
                node_id=node.id,
                attempt=attempt,
                agent=node.agent,
            )
            running_write = _DelayedWrite(
                self._running_record_after,
                lambda t=task, s=started_at: self._record(  # type: ignore[misc]
                    state, t, s, TaskStatus.RUNNING, input_ids, final=False
                ),
            )
            error: str
            retry_after: float | None = None
            retryable = True
            with_record = False
            try:
                try:
                    outputs = await self._call_adapter(
                        state, self._with_secrets(state, task), inputs
                    )
                except StoreUnavailableError as exc:
                    # the adapter could not reach *its* store: this attempt's failure, retried
                    # like any other; only this orchestrator's own writes (which wait out an
                    # outage) may stop the run for the store
                    raise AdapterStoreUnavailableError(str(exc)) from exc
                with_record = self._records_with_outputs(outputs)
                if not with_record:
                    stored = await self._store_outputs(state, node.id, outputs)
            except asyncio.CancelledError:
                if not state.cancel_requested or state.abandoned:
                    raise
                await running_write.settle()
                await self._record(
                    state,
                    task,
                    started_at,
                    TaskStatus.CANCELLED,
                    input_ids,
                    error="cancelled: the run was cancelled",
                )
                return NodeOutcome(
                    TaskStatus.CANCELLED, attempt, error="cancelled: the run was cancelled"
                )
            except StoreUnavailableError:
                await running_write.settle()
                raise
            except AdapterNotFoundError as exc:
                error, retryable = str(exc), False
            except NonRetryableError as exc:
                error, retryable = describe(exc), False
            except ResourceExhaustedError as exc:
                error, retry_after = describe(exc), exc.retry_after
            except Exception as exc:  # an adapter's failure is the attempt's failure
                error = describe(exc)
            else:
                await running_write.settle()
                if not with_record:
                    await self._record(
                        state,
                        task,
                        started_at,
                        TaskStatus.SUCCEEDED,
                        input_ids,
                        outputs=[a.artifact_id or "" for a in stored],
                    )
                    return NodeOutcome(TaskStatus.SUCCEEDED, attempt, artifacts=stored)
                try:
                    stored = await self._record_with_outputs(
                        state, task, started_at, input_ids, outputs
                    )
                except ValueError as exc:  # an invalid output fails the attempt, as store() does
                    error = describe(exc)
                else:
                    return NodeOutcome(TaskStatus.SUCCEEDED, attempt, artifacts=stored)

            error = state.redact(error)  # an adapter may echo a secret it got in its error
            await running_write.settle()
            await self._record(state, task, started_at, TaskStatus.FAILED, input_ids, error=error)
            will_retry = retryable and counted < policy.max_attempts and not state.cancel_requested
            delay = 0.0
            if will_retry:
                delay = backoff_delay(policy, counted)
                if retry_after is not None:
                    delay = max(delay, retry_after)
            self._emit(
                state,
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
                return NodeOutcome(TaskStatus.FAILED, attempt, error=error)
            if await wait_or_cancelled(state.cancelled, delay):
                return NodeOutcome(
                    TaskStatus.CANCELLED, attempt, error="cancelled: the run was cancelled"
                )

    def _with_secrets(self, state: RunState, task: TaskNode) -> TaskNode:
        """The attempt as the adapter gets it: `${secret.*}` filled with the current values.

        Only the adapter sees the copy; records, events and logs use `task`.

        Raises:
            SecretError: a secret cannot be read any more (the attempt fails, and is retried).
        """
        slots = state.spec.secret_slots(task.id)
        if not slots:
            return task
        params = self._secrets.fill(
            task.params, slots, secrets_namespace(state.record), state.redact
        )
        return dataclasses.replace(task, params=params)

    async def _call_adapter(
        self, state: RunState, task: TaskNode, inputs: list[Artifact]
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
        self, state: RunState, node_id: str, outputs: list[Artifact]
    ) -> list[Artifact]:
        async def store_one(artifact: Artifact) -> Artifact:
            if artifact.artifact_id is not None and artifact.content is None:
                return await self._check_uploaded(state, node_id, artifact)
            stamped = dataclasses.replace(artifact, run_id=state.run_id, node_id=node_id)
            stored = await self._durable(
                lambda: self._artifact_store.store(stamped), f"storing artifact {artifact.name!r}"
            )
            return dataclasses.replace(stored, content=artifact.content)

        if len(outputs) == 1:
            return [await store_one(outputs[0])]
        return list(await asyncio.gather(*(store_one(a) for a in outputs)))

    async def _check_uploaded(self, state: RunState, node_id: str, output: Artifact) -> Artifact:
        """An output the adapter uploaded itself and returned by reference: the store's own
        metadata (sha256, size), once it is known to exist and to belong to this task.

        Raises:
            ValueError: no such artifact, or it was uploaded for another run or task.
        """
        artifact_id = output.artifact_id
        assert artifact_id is not None
        try:
            stored = await self._durable(
                functools.partial(self._artifact_store.stat, artifact_id),
                f"checking output artifact {artifact_id}",
            )
        except NotFoundError:
            raise ValueError(
                f"output {output.name!r}: artifact {artifact_id} is not in the store "
                "(upload it with PutArtifact before returning its id)"
            ) from None
        if (stored.run_id and stored.run_id != state.run_id) or (
            stored.node_id and stored.node_id != node_id
        ):
            raise ValueError(
                f"output {output.name!r}: artifact {artifact_id} was uploaded for run "
                f"{stored.run_id!r} task {stored.node_id!r}, not this task "
                "(set run_id and node_id in the PutArtifact header)"
            )
        return dataclasses.replace(
            stored,
            name=output.name or stored.name,
            run_id=state.run_id,
            node_id=node_id,
        )

    def _records_with_outputs(self, outputs: list[Artifact]) -> bool:
        """Whether the outputs go to the store with the attempt's record, in one write."""
        if self._outcome_recorder is None:
            return False
        total = 0
        for artifact in outputs:
            if artifact.content is None:
                return False  # already in the store (streamed there by the adapter)
            total += len(artifact.content)
        return total <= OUTCOME_INLINE_BYTES

    async def _record_with_outputs(
        self,
        state: RunState,
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

    async def _record(
        self,
        state: RunState,
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


class _DelayedWrite:
    """Starts a write after `delay` seconds unless settled first; settling awaits a started one
    (one writer per record key)."""

    def __init__(self, delay: float, write: Callable[[], Awaitable[None]]) -> None:
        self._write = write
        self._task: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        if delay <= 0:
            self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
            self._start()
        else:
            self._timer = loop.call_later(delay, self._start)

    def _start(self) -> None:
        self._task = asyncio.ensure_future(self._write())

    async def settle(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            # the outcome write that follows retries and reports on its own
            with contextlib.suppress(StoreUnavailableError):
                await asyncio.shield(self._task)
