"""The orchestrator service's gRPC layer: decode each request, call the core, encode the reply."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import grpc.aio

from dagwire.auth import check_namespace
from dagwire.errors import (
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    StoreUnavailableError,
    WorkflowValidationError,
)
from dagwire.models import DEFAULT_NAMESPACE, RunRecord, RunStatus, WorkflowSpec
from dagwire.quotas import QuotaBook, Quotas
from dagwire.rpc.auth import current_principal
from dagwire.rpc.convert import (
    RunEventEncoder,
    run_status_from_proto,
    run_status_to_proto,
    run_summary_to_proto,
    run_to_proto,
)
from dagwire.rpc.paging import decode_page_token, encode_page_token, fit_to_budget, page_size
from dagwire.rpc.serve import Service
from dagwire.rpc.status import InvalidArgumentError
from dagwire.rpc.uploads import check_required
from dagwire.runtime.orchestrator import (
    Orchestrator,
    PreparedRun,
    prepare_run,
    run_id_for_request,
)
from dagwire.v1 import common_pb2, orchestrator_service_pb2, orchestrator_service_pb2_grpc
from dagwire.v1.orchestrator_service_pb2 import (
    CancelRunRequest,
    CancelRunResponse,
    GetRunRequest,
    GetRunResponse,
    ListRunsRequest,
    ListRunsResponse,
    RunWorkflowRequest,
    RunWorkflowResponse,
    StartRunRequest,
    StartRunResponse,
    WatchRunRequest,
    WatchRunResponse,
)

__all__ = ["OrchestratorServicer", "orchestrator_services", "parse_spec"]

Context = grpc.aio.ServicerContext[Any, Any]


def parse_spec(text: str) -> WorkflowSpec:
    """A workflow spec from its YAML or JSON text (JSON when it starts with ``{``).

    Raises:
        WorkflowValidationError: the spec is invalid; the message starts with its line.
    """
    if not text.strip():
        raise WorkflowValidationError(
            "the spec is empty: send the workflow spec v1 as YAML or JSON text", field="spec"
        )
    if text.lstrip().startswith("{"):
        return WorkflowSpec.from_json(text)
    return WorkflowSpec.from_yaml(text)


class OrchestratorServicer(orchestrator_service_pb2_grpc.OrchestratorServiceServicer):
    """`OrchestratorService` over one core `Orchestrator` (which owns every run it starts).

    A client that goes away during `RunWorkflow` or `WatchRun` does not cancel the run: it
    goes on, and `WatchRun` (or `RunWorkflow` with the same request_id) re-attaches to it.
    """

    def __init__(self, orchestrator: Orchestrator, quotas: QuotaBook | None = None) -> None:
        self._orchestrator = orchestrator
        self._quotas = QuotaBook.from_env() if quotas is None else quotas

    async def StartRun(self, request: StartRunRequest, context: Context) -> StartRunResponse:
        namespace = _namespace_for(request.namespace)
        run_id = await self._start(
            request.spec, dict(request.user_vars), request.request_id, namespace
        )
        run = await self._orchestrator.get_run(run_id)
        return StartRunResponse(run_id=run_id, trace_id=run.trace_id)

    async def RunWorkflow(
        self, request: RunWorkflowRequest, context: Context
    ) -> RunWorkflowResponse:
        namespace = _namespace_for(request.namespace)
        run_id = await self._start(
            request.spec, dict(request.user_vars), request.request_id, namespace
        )
        summary = await self._orchestrator.wait_run(run_id)
        record: RunRecord | None
        try:
            record = await self._orchestrator.get_run(run_id)
        except StoreUnavailableError:  # the summary alone still says how the run ended
            record = None
        return RunWorkflowResponse(run=run_summary_to_proto(summary, record))

    async def GetRun(self, request: GetRunRequest, context: Context) -> GetRunResponse:
        run = await self._visible_run(check_required(request.run_id, "run_id"))
        return GetRunResponse(run=run_to_proto(run))

    async def ListRuns(self, request: ListRunsRequest, context: Context) -> ListRunsResponse:
        size = page_size(request.page_size)
        status = None if request.status == 0 else run_status_from_proto(request.status)
        namespaces: tuple[str, ...] | None
        if request.all_namespaces:
            principal = current_principal()
            if principal is not None and not principal.is_admin:
                raise PermissionDeniedError(
                    f"principal {principal.name!r} (role {principal.role_names}) may not list "
                    "every namespace (admins only): name one with namespace"
                )
            namespaces = None
        else:
            namespaces = (_namespace_for(request.namespace),)
        scope = str(status or "") + "/" + ",".join(namespaces or ("*",))
        after = (
            str(decode_page_token(request.page_token, "runs", scope))
            if request.page_token
            else None
        )
        runs = await self._orchestrator.execution_store.list_runs(
            status=status, limit=size + 1, after=after, details=False, namespaces=namespaces
        )
        messages = [_listed(r) for r in runs[:size]]
        # one large run must not make the listing fail for everyone: a page ends early when
        # the next run would take it past the byte budget (docs/limits.md)
        count = fit_to_budget(messages)
        more = len(runs) > count
        token = encode_page_token("runs", scope, runs[count - 1].run_id) if more else ""
        return ListRunsResponse(runs=messages[:count], next_page_token=token)

    async def CancelRun(self, request: CancelRunRequest, context: Context) -> CancelRunResponse:
        run_id = check_required(request.run_id, "run_id")
        await self._check_visible(run_id)
        status = await self._orchestrator.cancel_run(run_id)
        return CancelRunResponse(status=run_status_to_proto(status))

    async def WatchRun(
        self, request: WatchRunRequest, context: Context
    ) -> AsyncIterator[WatchRunResponse]:
        run_id = check_required(request.run_id, "run_id")
        if request.after_sequence < 0:
            raise InvalidArgumentError(
                f"after_sequence must be 0 (from the start) or a sequence already seen, "
                f"got {request.after_sequence}",
                field="after_sequence",
            )
        await self._check_visible(run_id)
        # encoded from the first event, so durations of tasks started earlier are known
        encoder = RunEventEncoder()
        async for event in self._orchestrator.watch_run(run_id):
            message = encoder.encode(event)
            if event.sequence > request.after_sequence:
                yield WatchRunResponse(event=message)

    async def _start(
        self, spec: str, user_vars: dict[str, str], request_id: str, namespace: str
    ) -> str:
        quotas = self._quotas.of(namespace)
        size = len(spec.encode("utf-8", errors="replace"))
        if size > quotas.spec_bytes:
            raise InvalidArgumentError(
                f"the spec is {size} bytes, over the spec_bytes quota of {quotas.spec_bytes} "
                f"bytes of namespace {namespace!r}",
                field="spec",
            )
        # Parsing, validating and resolving a spec is CPU work that can take a while for a
        # large one: it runs in a thread so that no request can stall the runs this
        # orchestrator drives (or make it miss a lease renewal). docs/limits.md
        prepared = await asyncio.to_thread(_prepare, spec, user_vars, quotas, namespace)
        if self._quotas.path is not None:
            await self._check_concurrent_runs(namespace, quotas, request_id)
        return await self._orchestrator.start_run(
            prepared, request_id=request_id or None, namespace=namespace
        )

    async def _check_concurrent_runs(self, namespace: str, quotas: Quotas, request_id: str) -> None:
        """Refuse a new run while the namespace has `concurrent_runs` running (a repeated
        request_id of a run that exists is its own run, never refused).

        Raises:
            ResourceExhaustedError: naming the quota, its value and the namespace.
        """
        limit = quotas.concurrent_runs
        running = await self._orchestrator.execution_store.list_runs(
            status=RunStatus.RUNNING, limit=limit, details=False, namespaces=(namespace,)
        )
        if len(running) < limit:
            return
        if request_id:
            existing = await self._orchestrator.execution_store.get_run(
                run_id_for_request(request_id, namespace)
            )
            if existing is not None:
                return
        raise ResourceExhaustedError(
            f"namespace {namespace!r} has {len(running)} runs running, its concurrent_runs "
            f"quota of {limit}: start this run when one of them has finished",
            retry_after=5.0,
        )

    async def _check_visible(self, run_id: str) -> None:
        """NOT_FOUND, exactly as for an unknown id, when the caller may not see the run's
        namespace; nothing at all with auth off (watching a run this orchestrator drives must
        not need the store: it may be down)."""
        principal = current_principal()
        if principal is None:
            return
        namespace = await self._orchestrator.run_namespace(run_id)
        if not principal.sees_namespace(namespace):
            raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)

    async def _visible_run(self, run_id: str) -> RunRecord:
        """The run, when the caller may see its namespace; otherwise NOT_FOUND exactly as for
        an unknown id, so that a run id of another namespace tells nothing (docs/security.md)."""
        run = await self._orchestrator.get_run(run_id)
        principal = current_principal()
        if principal is not None and not principal.sees_namespace(run.namespace):
            raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
        return run


def _namespace_for(requested: str) -> str:
    """The namespace a call acts in: the one requested, else the caller's first (``default``
    with auth off).

    Raises:
        InvalidArgumentError: it is not a valid namespace name.
        PermissionDeniedError: the caller may not use it.
    """
    principal = current_principal()
    namespace = requested or (principal.namespaces[0] if principal else DEFAULT_NAMESPACE)
    try:
        check_namespace(namespace)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc), field="namespace") from None
    if principal is not None and not principal.sees_namespace(namespace):
        raise PermissionDeniedError(
            f"principal {principal.name!r} may not use namespace {namespace!r} (its "
            f"namespaces: {', '.join(principal.namespaces)})"
        )
    return namespace


def _prepare(text: str, user_vars: dict[str, str], quotas: Quotas, namespace: str) -> PreparedRun:
    """`parse_spec`, `prepare_run` and the quotas on tasks and params: everything a StartRun
    does before any I/O, once.

    Raises:
        WorkflowValidationError: the spec is invalid.
        InvalidArgumentError: it is over the tasks_per_run or params_bytes_per_task quota.
    """
    prepared = prepare_run(parse_spec(text), user_vars)
    tasks = prepared.resolved.tasks
    if len(tasks) > quotas.tasks_per_run:
        raise InvalidArgumentError(
            f"the workflow has {len(tasks)} tasks, over the tasks_per_run quota of "
            f"{quotas.tasks_per_run} of namespace {namespace!r}",
            field="spec.tasks",
        )
    for index, task in enumerate(tasks):
        size = len(json.dumps(task.params, ensure_ascii=False).encode())
        if size > quotas.params_bytes_per_task:
            raise InvalidArgumentError(
                f"task {task.id!r} has {size} bytes of params, over the params_bytes_per_task "
                f"quota of {quotas.params_bytes_per_task} bytes of namespace {namespace!r}",
                field=f"spec.tasks[{index}].params",
            )
    return prepared


def _listed(run: RunRecord) -> common_pb2.Run:
    """A run as `ListRuns` returns it: without spec_json and nodes."""
    message = run_to_proto(dataclasses.replace(run, nodes={}))
    message.ClearField("spec_json")
    return message


def orchestrator_services(orchestrator: Orchestrator) -> list[Service]:
    """The orchestrator service's gRPC service over a core `Orchestrator`.

    Args:
        orchestrator: the core orchestrator that runs the workflows.

    Returns:
        Services for `dagwire.rpc.serve.create_server`/`start_server`.
    """
    name = orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
    return [
        Service(
            name,
            partial(
                orchestrator_service_pb2_grpc.add_OrchestratorServiceServicer_to_server,
                OrchestratorServicer(orchestrator),
            ),
        )
    ]
