"""Typed client of the orchestrator service: start, follow, list and cancel runs over gRPC."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from dagwire.errors import DagwireError
from dagwire.ids import new_trace_id
from dagwire.models import RunRecord, RunStatus, RunSummary, WorkflowSpec
from dagwire.rpc.channels import client_channel
from dagwire.rpc.convert import (
    run_event_from_proto,
    run_from_proto,
    run_status_from_proto,
    run_status_to_proto,
    run_summary_from_proto,
)
from dagwire.rpc.status import error_from_rpc, trace_metadata
from dagwire.runtime.events import RunEvent, RunEventKind
from dagwire.settings import DEFAULT_MAX_MESSAGE_BYTES
from dagwire.v1 import common_pb2
from dagwire.v1 import orchestrator_service_pb2 as pb
from dagwire.v1 import orchestrator_service_pb2_grpc as pb_grpc

__all__ = ["OrchestratorClient", "OrchestratorUnavailableError", "RunPage"]

log = logging.getLogger(__name__)

Spec = str | Mapping[str, Any] | WorkflowSpec


class OrchestratorUnavailableError(DagwireError):
    """The orchestrator service cannot be reached (down, or not at that address)."""


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of `OrchestratorClient.list_runs`: runs newest first, and the next token.

    Attributes:
        runs: the runs (without `spec` and `nodes`; `get_run` returns those).
        next_page_token: pass it back for the next page; empty when there are no more runs.
    """

    runs: list[RunRecord]
    next_page_token: str


class OrchestratorClient:
    """A client of the ``OrchestratorService`` over one long-lived channel.

    The constructor does no I/O: the channel connects on first use; `aclose()` closes it (a
    channel passed in is borrowed and left open). Every call sends a trace id in the
    ``x-dagwire-trace-id`` metadata (the one given, else a fresh one), and failures raise the
    dagwire exception the server raised (`error_from_rpc`): `WorkflowValidationError` for a
    bad spec, `NotFoundError` for an unknown run, `RunAlreadyFinishedError`, and
    `OrchestratorUnavailableError` when the service cannot be reached.

    Args:
        address: a gRPC target of the orchestrator service (``host:port``, ``dns:///name:port``,
            ``ipv4:A:P,B:P``; see docs/targets.md).
        channel: an existing channel to use instead of opening one.
        max_message_bytes: the channel's message size limit (when it opens one).
        reconnect_seconds: how long `watch_run` keeps reconnecting after the stream broke
            (UNAVAILABLE) before it gives up.
        call_timeout: gRPC deadline in seconds of `start_run`, `get_run` and `list_runs`
            (None: none); bound the others with `asyncio.timeout`.
    """

    def __init__(
        self,
        address: str,
        *,
        channel: grpc.aio.Channel | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reconnect_seconds: float = 30.0,
        call_timeout: float | None = None,
    ) -> None:
        self.address = address
        self._channel = channel
        self._owned = channel is None
        self._max_message_bytes = max_message_bytes
        self._reconnect_seconds = reconnect_seconds
        self._call_timeout = call_timeout
        self._stub: Any = None

    async def __aenter__(self) -> OrchestratorClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def _api(self) -> pb_grpc.OrchestratorServiceAsyncStub:
        if self._stub is None:
            if self._channel is None:
                self._channel = client_channel(
                    self.address, max_message_bytes=self._max_message_bytes
                )
            self._stub = pb_grpc.OrchestratorServiceStub(self._channel)
        stub: pb_grpc.OrchestratorServiceAsyncStub = self._stub
        return stub

    async def start_run(
        self,
        spec: Spec,
        *,
        user_vars: Mapping[str, str] | None = None,
        request_id: str | None = None,
        trace_id: str | None = None,
        namespace: str = "",
    ) -> str:
        """Validate a workflow and start a run of it; returns its run id at once.

        Args:
            spec: the workflow spec v1: YAML or JSON text, a dict, or a `WorkflowSpec`.
            user_vars: values for ``${user.NAME}`` placeholders.
            request_id: idempotency key; a retried call with the same key returns the same run
                (also after the orchestrator restarted: the run id derives from the key).
                Default: a fresh one, so that the channel's retry on another replica (see
                `dagwire.rpc.channels`) cannot start the run twice.
            trace_id: sent in the call's metadata (default: a fresh one).
            namespace: the run's namespace ("": the caller's first, ``default`` without auth).

        Returns:
            The run id.

        Raises:
            WorkflowValidationError: the spec or its variables are invalid; nothing ran.
            OrchestratorUnavailableError: the service cannot be reached.
        """
        request = pb.StartRunRequest(
            spec=_spec_text(spec),
            user_vars=dict(user_vars or {}),
            request_id=_request_id(request_id),
            namespace=namespace,
        )
        response = await self._unary(self._api.StartRun, request, trace_id, self._call_timeout)
        run_id: str = response.run_id
        return run_id

    async def run_workflow(
        self,
        spec: Spec,
        *,
        user_vars: Mapping[str, str] | None = None,
        request_id: str | None = None,
        trace_id: str | None = None,
        namespace: str = "",
    ) -> RunSummary:
        """Run a workflow to its end and return the summary (one long unary call).

        Prefer `start_run` + `watch_run` across proxies: they cut long calls. If this call
        is cut, the run goes on; call again with the same `request_id` to wait for it.

        Raises:
            WorkflowValidationError: the spec or its variables are invalid; nothing ran.
            OrchestratorUnavailableError: the service cannot be reached.
        """
        request = pb.RunWorkflowRequest(
            spec=_spec_text(spec),
            user_vars=dict(user_vars or {}),
            request_id=_request_id(request_id),
            namespace=namespace,
        )
        response = await self._unary(self._api.RunWorkflow, request, trace_id, None)
        return run_summary_from_proto(response.run)

    async def get_run(self, run_id: str, *, trace_id: str | None = None) -> RunRecord:
        """The run with every task's outcome so far (live while it runs).

        Raises:
            NotFoundError: no run has this id.
            OrchestratorUnavailableError: the service cannot be reached.
        """
        request = pb.GetRunRequest(run_id=run_id)
        response = await self._unary(self._api.GetRun, request, trace_id, self._call_timeout)
        return run_from_proto(response.run)

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        page_size: int = 0,
        page_token: str = "",
        trace_id: str | None = None,
        namespace: str = "",
        all_namespaces: bool = False,
    ) -> RunPage:
        """One page of runs, newest first.

        Args:
            status: only runs in this state (None: any).
            page_size: runs per page; 0 means the server default of 50, at most 1000.
            page_token: `next_page_token` of the previous page (same `status`).
            namespace: only runs of this namespace ("": the caller's first).
            all_namespaces: runs of every namespace (admins only, with auth on).

        Raises:
            InvalidArgumentError: a negative page size, or a token of another listing.
            OrchestratorUnavailableError: the service cannot be reached.
        """
        request = pb.ListRunsRequest(
            page_size=page_size,
            page_token=page_token,
            status=(
                common_pb2.RUN_STATUS_UNSPECIFIED if status is None else run_status_to_proto(status)
            ),
            namespace=namespace,
            all_namespaces=all_namespaces,
        )
        response = await self._unary(self._api.ListRuns, request, trace_id, self._call_timeout)
        return RunPage([run_from_proto(r) for r in response.runs], response.next_page_token)

    async def iter_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        page_size: int = 0,
        namespace: str = "",
        all_namespaces: bool = False,
    ) -> AsyncIterator[RunRecord]:
        """Every run, newest first, fetching pages as they are consumed.

        Raises:
            OrchestratorUnavailableError: the service cannot be reached.
        """
        token = ""
        while True:
            page = await self.list_runs(
                status=status,
                page_size=page_size,
                page_token=token,
                namespace=namespace,
                all_namespaces=all_namespaces,
            )
            for run in page.runs:
                yield run
            token = page.next_page_token
            if not token:
                return

    async def cancel_run(self, run_id: str, *, trace_id: str | None = None) -> RunStatus:
        """Cancel a run; returns its final status once it stopped (`cancelled`).

        Cancelling a run already cancelled is accepted.

        Raises:
            NotFoundError: no run has this id.
            RunAlreadyFinishedError: the run already finished otherwise.
            OrchestratorUnavailableError: the service cannot be reached.
        """
        request = pb.CancelRunRequest(run_id=run_id)
        response = await self._unary(self._api.CancelRun, request, trace_id, None)
        return run_status_from_proto(response.status)

    async def watch_run(
        self,
        run_id: str,
        *,
        after_sequence: int = 0,
        trace_id: str | None = None,
        on_reconnect: Callable[[int, str], None] | None = None,
    ) -> AsyncIterator[RunEvent]:
        """The run's events after `after_sequence`, then live ones, ending with `run_finished`.

        When the stream breaks (UNAVAILABLE: the connection dropped, or its orchestrator
        replica died), it reconnects with the last sequence seen, on any replica of the target
        (any replica replays the run's stored events), so no event is missed or repeated. It
        retries with a backoff from 0.1 s to 2 s and gives up after `reconnect_seconds`
        without a connection.

        Args:
            run_id: the run.
            after_sequence: replay the events after this sequence number (0: all).
            trace_id: sent in the call's metadata (default: a fresh one).
            on_reconnect: called once per break, before reconnecting, with the last sequence
                seen and gRPC's reason (the CLI writes one line on stderr).

        Raises:
            NotFoundError: no run has this id.
            OrchestratorUnavailableError: the service stayed unreachable.
        """
        last = after_sequence
        metadata = trace_metadata(trace_id or new_trace_id())
        broken_since: float | None = None
        delay = 0.1
        while True:
            call = self._api.WatchRun(
                pb.WatchRunRequest(run_id=run_id, after_sequence=last), metadata=metadata
            )
            try:
                async for response in call:
                    broken_since, delay = None, 0.1
                    event = run_event_from_proto(response.event)
                    if event.sequence <= last:
                        continue
                    last = event.sequence
                    yield event
                    if event.kind is RunEventKind.RUN_FINISHED:
                        return
                return  # the server ended the stream without run_finished: nothing more
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise self._error(exc) from None
                now = time.monotonic()
                if broken_since is None:
                    broken_since = now
                    if on_reconnect is not None:
                        on_reconnect(last, exc.details() or exc.code().name)
                if now - broken_since >= self._reconnect_seconds:
                    raise self._error(exc) from None
                log.info(
                    "WatchRun stream broke; reconnecting after sequence %d",
                    last,
                    extra={"run_id": run_id, "error": exc.details()},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                call.cancel()

    async def aclose(self) -> None:
        """Close the channel (when this client opened it)."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None and self._owned:
            await channel.close()
        elif not self._owned:
            self._channel = channel

    async def _unary(
        self, method: Any, request: Any, trace_id: str | None, deadline: float | None
    ) -> Any:
        try:
            return await method(
                request, metadata=trace_metadata(trace_id or new_trace_id()), timeout=deadline
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> DagwireError:
        return error_from_rpc(
            exc,
            unavailable=OrchestratorUnavailableError,
            target=f"orchestrator service at {self.address}",
        )


def _request_id(given: str | None) -> str:
    """The request id to send: the caller's, else a fresh one (so the call is safe to repeat)."""
    return given or str(uuid.uuid4())


def _spec_text(spec: Spec) -> str:
    """The spec as text for the wire: YAML/JSON text as given, else JSON."""
    if isinstance(spec, str):
        return spec
    data = spec.to_dict() if isinstance(spec, WorkflowSpec) else dict(spec)
    return json.dumps(data, ensure_ascii=False)
