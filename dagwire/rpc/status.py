"""The one mapping between dagwire exceptions and gRPC status (+ `google.rpc` details), both ways.

Server side, `StatusInterceptor` (installed by `dagwire.rpc.serve.create_server`) turns what a
handler raises into a status with an `ErrorInfo` (domain ``dagwire``) and, for overload, a
`RetryInfo`; it also binds the call's trace id for logging. Client side, `error_from_rpc`
turns a failed call back into the same exception class with the same fields.

| exception                  | gRPC code           | ErrorInfo.reason                        |
|----------------------------|---------------------|-----------------------------------------|
| WorkflowValidationError    | INVALID_ARGUMENT    | SPEC_INVALID                            |
| AdapterNotFoundError       | NOT_FOUND           | AGENT_NOT_REGISTERED                    |
| NoHealthyAdapterError      | UNAVAILABLE         | NO_HEALTHY_ADAPTER                      |
| NotFoundError              | NOT_FOUND           | RUN_NOT_FOUND / ARTIFACT_NOT_FOUND / .. |
| RunAlreadyFinishedError    | FAILED_PRECONDITION | RUN_ALREADY_FINISHED                    |
| LeaseLostError             | ABORTED             | LEASE_SUPERSEDED                        |
| StoreUnavailableError      | UNAVAILABLE         | STORE_UNAVAILABLE                       |
| AttemptTimeoutError        | DEADLINE_EXCEEDED   | ATTEMPT_TIMEOUT                         |
| ResourceExhaustedError     | RESOURCE_EXHAUSTED  | RESOURCE_EXHAUSTED (+ RetryInfo)        |
| NonRetryableError          | FAILED_PRECONDITION | NON_RETRYABLE                           |
| UnauthenticatedError       | UNAUTHENTICATED     | UNAUTHENTICATED                         |
| PermissionDeniedError      | PERMISSION_DENIED   | PERMISSION_DENIED                       |
| ValueError (bad input)     | INVALID_ARGUMENT    | INVALID_ARGUMENT                        |
| RemoteError (from a peer)  | its own code        | its own reason                          |
| anything else              | INTERNAL            | INTERNAL (traceback only in the log)    |
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from dagwire.errors import (
    AdapterNotFoundError,
    AttemptTimeoutError,
    DagwireError,
    LeaseLostError,
    NoHealthyAdapterError,
    NonRetryableError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RunAlreadyFinishedError,
    StoreUnavailableError,
    UnauthenticatedError,
    WorkflowValidationError,
)
from dagwire.ids import new_trace_id
from dagwire.rpc.logs import bind
from dagwire.rpc.tls import explain_connect_failure

__all__ = [
    "DOMAIN",
    "TRACE_ID_KEY",
    "InvalidArgumentError",
    "RemoteError",
    "StatusInterceptor",
    "error_from_rpc",
    "rewrap_handler",
    "status_from_error",
    "trace_metadata",
]

log = logging.getLogger(__name__)

DOMAIN = "dagwire"
TRACE_ID_KEY = "x-dagwire-trace-id"
_DETAILS_KEY = "grpc-status-details-bin"
_MAX_MESSAGE_CHARS = 2000


class InvalidArgumentError(NonRetryableError, ValueError):
    """A service refused its input (INVALID_ARGUMENT that is not a spec error).

    Attributes:
        field: the offending request field, when the server named it.
    """

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class RemoteError(DagwireError):
    """A failed call whose status maps to no more specific dagwire error.

    Attributes:
        code: the gRPC status code.
        reason: `ErrorInfo.reason` when the server sent one, else ``""``.
        metadata: `ErrorInfo.metadata` (ids such as ``trace_id``).
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later (UNAVAILABLE, UNKNOWN, ABORTED, ...)."""
        return self.code in _RETRYABLE_CODES


_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)

_NOT_FOUND_REASONS = {"run": "RUN_NOT_FOUND", "artifact": "ARTIFACT_NOT_FOUND"}


@dataclass(frozen=True, slots=True)
class _Mapped:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    retry_after: float | None = None


def _classify(exc: BaseException) -> _Mapped | None:
    """The status of a known exception (the table in the module docstring), else None."""
    if isinstance(exc, WorkflowValidationError):
        return _Mapped(
            grpc.StatusCode.INVALID_ARGUMENT,
            "SPEC_INVALID",
            _ids(node_id=exc.node_id, field=exc.field, line=exc.line),
        )
    if isinstance(exc, AdapterNotFoundError):
        return _Mapped(
            grpc.StatusCode.NOT_FOUND, "AGENT_NOT_REGISTERED", _ids(agent_key=exc.agent_key)
        )
    if isinstance(exc, NoHealthyAdapterError):
        return _Mapped(
            grpc.StatusCode.UNAVAILABLE, "NO_HEALTHY_ADAPTER", _ids(agent_key=exc.agent_key)
        )
    if isinstance(exc, NotFoundError):
        reason = _NOT_FOUND_REASONS.get(exc.kind, f"{exc.kind.upper() or 'RESOURCE'}_NOT_FOUND")
        return _Mapped(grpc.StatusCode.NOT_FOUND, reason, _ids(kind=exc.kind, id=exc.id))
    if isinstance(exc, RunAlreadyFinishedError):
        return _Mapped(
            grpc.StatusCode.FAILED_PRECONDITION,
            "RUN_ALREADY_FINISHED",
            _ids(run_id=exc.run_id, status=exc.status),
        )
    if isinstance(exc, LeaseLostError):
        return _Mapped(
            grpc.StatusCode.ABORTED,
            "LEASE_SUPERSEDED",
            _ids(run_id=exc.run_id, epoch=str(exc.epoch)),
        )
    if isinstance(exc, StoreUnavailableError):
        return _Mapped(grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", {})
    if isinstance(exc, AttemptTimeoutError):
        return _Mapped(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "ATTEMPT_TIMEOUT",
            _ids(node_id=exc.node_id, attempt=exc.attempt, timeout=repr(exc.timeout)),
        )
    if isinstance(exc, ResourceExhaustedError):
        return _Mapped(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED", {}, exc.retry_after
        )
    if isinstance(exc, InvalidArgumentError):
        return _Mapped(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", _ids(field=exc.field))
    if isinstance(exc, UnauthenticatedError):
        return _Mapped(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", {})
    if isinstance(exc, PermissionDeniedError):
        return _Mapped(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", {})
    if isinstance(exc, NonRetryableError):
        return _Mapped(grpc.StatusCode.FAILED_PRECONDITION, "NON_RETRYABLE", {})
    if isinstance(exc, RemoteError):
        return _Mapped(exc.code, exc.reason, dict(exc.metadata))
    if isinstance(exc, ValueError):
        return _Mapped(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {})
    return None


def _ids(**values: object) -> dict[str, str]:
    return {key: str(value) for key, value in values.items() if value not in (None, "")}


def status_from_error(exc: BaseException, *, operation: str, trace_id: str = "") -> grpc.Status:
    """The gRPC status (with `ErrorInfo`/`RetryInfo` in its trailers) for an exception.

    Args:
        exc: what the handler raised.
        operation: the RPC, e.g. ``"PutArtifact"`` (named in an INTERNAL message).
        trace_id: the call's trace id (in every ErrorInfo's metadata, and INTERNAL's message).

    Returns:
        A `grpc.Status` for `context.abort(...)` (code, details, trailing metadata).
    """
    if isinstance(exc, grpc.aio.AioRpcError):
        exc = error_from_rpc(exc)
    mapped = _classify(exc)
    if mapped is None:
        message = (
            f"internal error in {operation} (trace id {trace_id or 'none'}); "
            "the server log has the details"
        )
        mapped = _Mapped(grpc.StatusCode.INTERNAL, "INTERNAL", _ids(operation=operation))
    else:
        message = str(exc) or type(exc).__name__
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 3] + "..."
    metadata = dict(mapped.metadata)
    if trace_id:
        metadata.setdefault("trace_id", trace_id)
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=mapped.reason, domain=DOMAIN, metadata=metadata))
    ]
    if mapped.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(max(mapped.retry_after, 0.0) * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    proto = status_pb2.Status(code=mapped.code.value[0], message=message, details=details)
    return cast(grpc.Status, rpc_status.to_status(proto))


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def error_from_rpc(
    exc: grpc.RpcError,
    *,
    unavailable: type[DagwireError] | None = None,
    target: str = "",
) -> DagwireError:
    """The dagwire exception a failed call stands for (the inverse of `status_from_error`).

    Args:
        exc: the error a call raised (`grpc.aio.AioRpcError`, or a sync `grpc.RpcError`).
        unavailable: the class to raise for an UNAVAILABLE status the server did not map itself
            (the peer is down or unreachable), e.g. `StoreUnavailableError`; None gives a
            `RemoteError`.
        target: what was called, e.g. ``"store service at 127.0.0.1:50053"``, named in the
            message of an unmapped UNAVAILABLE.

    Returns:
        The same class the server raised, with the same fields, when the status carries a
        dagwire `ErrorInfo`; otherwise the closest match (see the module table).
    """
    code = _code_of(exc)
    message = _details_of(exc)
    reason, meta, retry_after = "", dict[str, str](), None
    status = _status_of(exc)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                if info.domain == DOMAIN:
                    reason, meta = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    return _rebuild(code, message, reason, meta, retry_after, unavailable, target)


def _rebuild(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    meta: dict[str, str],
    retry_after: float | None,
    unavailable: type[DagwireError] | None,
    target: str,
) -> DagwireError:
    if reason == "SPEC_INVALID":
        line = meta.get("line")
        return WorkflowValidationError(
            message,
            node_id=meta.get("node_id"),
            field=meta.get("field"),
            line=int(line) if line and line.isdigit() else None,
        )
    if reason == "AGENT_NOT_REGISTERED":
        return AdapterNotFoundError(meta.get("agent_key", ""), message)
    if reason == "NO_HEALTHY_ADAPTER":
        return NoHealthyAdapterError(meta.get("agent_key", ""), message)
    if code == grpc.StatusCode.NOT_FOUND and (reason.endswith("NOT_FOUND") or not reason):
        return NotFoundError(message, kind=meta.get("kind", ""), id=meta.get("id", ""))
    if reason == "LEASE_SUPERSEDED" and "run_id" in meta:
        epoch = meta.get("epoch", "0")
        return LeaseLostError(meta["run_id"], int(epoch) if epoch.isdigit() else 0, message)
    if reason == "RUN_ALREADY_FINISHED" and "run_id" in meta:
        return RunAlreadyFinishedError(meta["run_id"], meta.get("status", ""))
    if reason == "STORE_UNAVAILABLE":
        return StoreUnavailableError(message)
    if reason == "ATTEMPT_TIMEOUT" and "node_id" in meta:
        try:
            return AttemptTimeoutError(
                meta["node_id"], int(meta.get("attempt", "0")), float(meta.get("timeout", "0"))
            )
        except ValueError:
            pass
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhaustedError(message, retry_after=retry_after)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return UnauthenticatedError(message)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(message)
    if code == grpc.StatusCode.FAILED_PRECONDITION and reason in ("NON_RETRYABLE", ""):
        return NonRetryableError(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT and reason in ("INVALID_ARGUMENT", ""):
        return InvalidArgumentError(message, field=meta.get("field", ""))
    if code == grpc.StatusCode.UNAVAILABLE and not reason:
        explained = explain_connect_failure(message)
        message = f"{explained}: {message}" if explained else message
    if code == grpc.StatusCode.UNAVAILABLE and unavailable is not None:
        where = f"{target} is unavailable: " if target else ""
        return unavailable(where + message)
    return RemoteError(message, code=code, reason=reason, metadata=meta)


def _code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    code = getattr(exc, "code", None)
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details_of(exc: grpc.RpcError) -> str:
    details = getattr(exc, "details", None)
    value = details() if callable(details) else None
    return value if isinstance(value, str) and value else str(exc)


def _status_of(exc: grpc.RpcError) -> status_pb2.Status | None:
    trailers = getattr(exc, "trailing_metadata", None)
    metadata = trailers() if callable(trailers) else None
    for key, value in metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a malformed trailer: fall back to code + message
                return None
    return None


def trace_metadata(trace_id: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a trace id (empty when there is none).

    Args:
        trace_id: the run's trace id.

    Returns:
        Metadata to pass as ``metadata=`` on a call.
    """
    return ((TRACE_ID_KEY, trace_id),) if trace_id else ()


def _trace_id_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == TRACE_ID_KEY and isinstance(value, str):
            return value
    return ""


_Behavior = Callable[..., Any]
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Applies the status table to every handler, and binds its trace id for logging.

    The trace id comes from the ``x-dagwire-trace-id`` metadata (a fresh one when absent) and
    is bound in the logging context of the call, so every log line of the call carries it.
    """

    def __init__(self) -> None:
        self._cache: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        """Wrap the method's handler (once per method; cached)."""
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cast("grpc.RpcMethodHandler[_Req, _Resp]", cached)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        wrapped = _wrap_handler(handler, method.rsplit("/", 1)[-1])
        self._cache[method] = wrapped
        return wrapped


def rewrap_handler(
    handler: grpc.RpcMethodHandler[_Req, _Resp], wrap: Callable[[_Behavior], _Behavior]
) -> grpc.RpcMethodHandler[_Req, _Resp]:
    """The same handler (kind and serializers) with its behaviour replaced by `wrap(behaviour)`:
    how the server interceptors put code around every call of a method."""
    serializers: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    wrapped: grpc.RpcMethodHandler[Any, Any]
    if handler.unary_unary is not None:
        wrapped = grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **serializers)
    elif handler.unary_stream is not None:
        wrapped = grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **serializers)
    elif handler.stream_unary is not None:
        wrapped = grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **serializers)
    elif handler.stream_stream is not None:
        wrapped = grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **serializers)
    else:
        return handler
    return cast("grpc.RpcMethodHandler[_Req, _Resp]", wrapped)


def _wrap_handler(
    handler: grpc.RpcMethodHandler[_Req, _Resp], operation: str
) -> grpc.RpcMethodHandler[_Req, _Resp]:
    return rewrap_handler(handler, lambda behavior: _wrap_behavior(behavior, operation))


def _wrap_behavior(behavior: _Behavior, operation: str) -> _Behavior:
    if inspect.isasyncgenfunction(behavior):

        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            trace_id = _start_call(context)
            try:
                async for response in behavior(request, context):
                    yield response
            except Exception as exc:
                await _abort(context, exc, operation, trace_id)

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        trace_id = _start_call(context)
        try:
            return await behavior(request, context)
        except Exception as exc:
            await _abort(context, exc, operation, trace_id)

    return call


def _start_call(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    trace_id = _trace_id_of(context) or new_trace_id()
    bind(trace_id=trace_id)  # each call runs in its own task, so this stays in the call
    return trace_id


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: Exception, operation: str, trace_id: str
) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    status = status_from_error(exc, operation=operation, trace_id=trace_id)
    if status.code == grpc.StatusCode.INTERNAL:
        log.error("%s failed: %s", operation, exc, exc_info=exc)
    elif status.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        log.warning("%s: %s: %s", operation, status.code.name, status.details)
    else:
        log.info("%s: %s: %s", operation, status.code.name, status.details)
    await context.abort(status.code, status.details, status.trailing_metadata)
