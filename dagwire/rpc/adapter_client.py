"""The client of adapters: `AdapterClient` (one address, an `AgentAdapter` over gRPC), and the
re-route rule the dispatcher's pool (`dagwire_services.dispatcher.pool`) relies on.

Re-route rule: a call whose status is UNAVAILABLE with a message starting "failed to connect
to all addresses" failed while gRPC was picking a connection, before any byte of the call was
written to an adapter (connection refused, a non-HTTP/2 server, a handshake that died). That
call never reached the adapter: the pool marks the instance unhealthy and sends the call to
another instance without using an attempt. Any other failure happened on an established
connection, after the request was sent (for example "Stream removed (Socket closed)" when the
adapter dies mid-call), and fails the attempt.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message

from dagwire.errors import (
    AttemptTimeoutError,
    DagwireError,
)
from dagwire.models import Artifact, TaskNode, utc_now
from dagwire.rpc.channels import client_channel
from dagwire.rpc.convert import artifact_from_proto, artifact_to_proto, datetime_to_proto
from dagwire.rpc.logs import current_context
from dagwire.rpc.status import RemoteError, error_from_rpc, trace_metadata
from dagwire.settings import DEFAULT_MAX_MESSAGE_BYTES
from dagwire.v1 import adapter_service_pb2 as apb

__all__ = [
    "DEFAULT_STATIC_CAPACITY",
    "AdapterCallError",
    "AdapterClient",
    "AdapterUnreachableError",
    "current_run_id",
    "input_to_proto",
    "never_reached",
    "output_from_proto",
]

log = logging.getLogger(__name__)

DEFAULT_STATIC_CAPACITY = 100
_EXECUTE = "/dagwire.v1.AgentAdapterService/Execute"
_DESCRIBE = "/dagwire.v1.AgentAdapterService/Describe"
_DETAILS_KEY = "grpc-status-details-bin"
# An adapter that comes back (a restart on the same address) is dialled again within a second,
# not after gRPC's default backoff of up to two minutes.
_RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
_M = TypeVar("_M", bound=Message)
_NEVER_REACHED_PREFIX = "failed to connect to all addresses"


class AdapterUnreachableError(DagwireError):
    """A call never reached the adapter (no connection could be made); safe to re-route.

    Attributes:
        address: the adapter's address.
        reason: why no connection could be made (gRPC's last connection error).
    """

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"adapter at {address} is unreachable: {reason}")
        self.address = address
        self.reason = reason


class AdapterCallError(RemoteError):
    """An adapter answered a call with an error status (kept whole, to pass it through).

    Attributes:
        address: the adapter's address.
        trailing_metadata: the status details trailer (``grpc-status-details-bin``), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        address: str,
        trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(message, code=code)
        self.address = address
        self.trailing_metadata = trailing_metadata

    @property
    def has_status_details(self) -> bool:
        """Whether the adapter itself sent a rich status (not a bare transport failure)."""
        return any(key == _DETAILS_KEY for key, _ in self.trailing_metadata)


def never_reached(exc: grpc.RpcError) -> bool:
    """Whether a failed call never reached its server (see the module's re-route rule).

    Args:
        exc: the error of a failed call.

    Returns:
        True for UNAVAILABLE raised while no connection could be made.
    """
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    return code == grpc.StatusCode.UNAVAILABLE and str(details or "").startswith(
        _NEVER_REACHED_PREFIX
    )


class AdapterClient:
    """One adapter address over one long-lived channel; an `AgentAdapter` too.

    The constructor does no I/O; the channel connects on first use and `aclose()` closes it.
    """

    def __init__(self, address: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        """Describe the client; does no I/O.

        Args:
            address: ``host:port`` of the adapter.
            max_message_bytes: send and receive limit per message.
        """
        self.address = address
        self._max_message_bytes = max_message_bytes
        self._channel: grpc.aio.Channel | None = None
        self._execute: Any = None
        self._describe: Any = None
        self.active_calls = 0

    def _open(self) -> None:
        # pick-first, not balanced: one adapter address, and the re-route rule reads the
        # status pick-first gives when no connection can be made
        self._channel = client_channel(
            self.address,
            max_message_bytes=self._max_message_bytes,
            balanced=False,
            options=_RECONNECT_OPTIONS,
        )
        # Responses stay bytes here so that garbage is reported with the adapter's address.
        self._execute = self._channel.unary_unary(
            _EXECUTE, request_serializer=apb.ExecuteRequest.SerializeToString
        )
        self._describe = self._channel.unary_unary(
            _DESCRIBE, request_serializer=apb.DescribeRequest.SerializeToString
        )

    async def call(
        self, request: apb.ExecuteRequest, *, time_limit: float | None, trace_id: str = ""
    ) -> apb.ExecuteResponse:
        """One Execute call.

        Args:
            request: the request, as sent.
            time_limit: the call's deadline in seconds from now (None: none).
            trace_id: sent in the ``x-dagwire-trace-id`` metadata.

        Returns:
            The adapter's response.

        Raises:
            AdapterUnreachableError: the call never reached the adapter.
            AdapterCallError: the adapter (or the connection, mid-call) failed the call.
            RemoteError: the response is not an ExecuteResponse (code INTERNAL).
        """
        if self._channel is None:
            self._open()
        self.active_calls += 1
        try:
            raw = await self._execute(
                request, timeout=time_limit, metadata=trace_metadata(trace_id or request.trace_id)
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        finally:
            self.active_calls -= 1
        return self._decode(raw, apb.ExecuteResponse, "Execute")

    async def describe(self, *, time_limit: float = 2.0) -> apb.DescribeResponse:
        """The adapter's Describe answer.

        Args:
            time_limit: seconds to wait for it.

        Raises:
            AdapterUnreachableError: no connection could be made.
            AdapterCallError: the adapter failed the call.
            RemoteError: the response is not a DescribeResponse.
        """
        if self._channel is None:
            self._open()
        try:
            raw = await self._describe(apb.DescribeRequest(), timeout=time_limit)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None
        return self._decode(raw, apb.DescribeResponse, "Describe")

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        """Run `task` on the adapter (the `AgentAdapter` protocol over gRPC).

        Args:
            task: the task; `task.timeout` becomes the call's deadline.
            input_artifacts: inputs, sent inline (content) or by reference (artifact_id).
            trace_id: the run's trace id.

        Returns:
            The outputs: inline ones with content, references with `content=None`.

        Raises:
            NonRetryableError: the adapter refused the task for good.
            ResourceExhaustedError: the adapter is overloaded (with its retry delay).
            AttemptTimeoutError: the call passed `task.timeout`.
            DagwireError: any other failure (retryable), with the adapter's message.
        """
        run_id = task.run_id or current_run_id(input_artifacts)
        request = apb.ExecuteRequest(
            agent=task.agent,
            params_json=json.dumps(task.params, ensure_ascii=False),
            input_artifacts=[input_to_proto(a) for a in input_artifacts],
            run_id=run_id,
            node_id=task.id,
            attempt=task.attempt,
            trace_id=trace_id,
            idempotency_key=f"{run_id}/{task.id}/{task.attempt}",
        )
        if task.timeout is not None:
            request.deadline.CopyFrom(
                datetime_to_proto(utc_now() + timedelta(seconds=task.timeout))
            )
        try:
            response = await self.call(request, time_limit=task.timeout, trace_id=trace_id)
        except AdapterCallError as exc:
            if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED and task.timeout is not None:
                raise AttemptTimeoutError(task.id, task.attempt, task.timeout) from None
            raise error_from_rpc(_AsRpcError(exc)) from None
        return [output_from_proto(a) for a in response.output_artifacts]

    def _error(self, exc: grpc.aio.AioRpcError) -> DagwireError:
        if never_reached(exc):
            return AdapterUnreachableError(self.address, _reason(exc.details() or ""))
        trailers = tuple(
            (key, value) for key, value in (exc.trailing_metadata() or ()) if key == _DETAILS_KEY
        )
        return AdapterCallError(
            exc.details() or exc.code().name,
            code=exc.code(),
            address=self.address,
            trailing_metadata=trailers,
        )

    def _decode(self, raw: Any, cls: type[_M], method: str) -> _M:
        try:
            return cls.FromString(raw)
        except (DecodeError, TypeError) as exc:
            raise RemoteError(
                f"adapter at {self.address} answered {method} with a response that is not a "
                f"dagwire.v1.{cls.__name__} ({exc}); is a dagwire adapter listening there?",
                code=grpc.StatusCode.INTERNAL,
                reason="ADAPTER_PROTOCOL_ERROR",
                metadata={"address": self.address},
            ) from None

    async def aclose(self) -> None:
        """Close the channel."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()


class _AsRpcError(grpc.RpcError):
    """An `AdapterCallError` in the shape `error_from_rpc` reads."""

    def __init__(self, error: AdapterCallError) -> None:
        super().__init__(str(error))
        self.error = error

    def code(self) -> grpc.StatusCode:
        return self.error.code

    def details(self) -> str:
        return str(self.error)

    def trailing_metadata(self) -> Any:
        return self.error.trailing_metadata


def current_run_id(input_artifacts: Sequence[Artifact] = ()) -> str:
    """The run a dispatch belongs to: bound in the logging context, else the inputs' run.

    Args:
        input_artifacts: the task's inputs (their `run_id` is the run's when set).

    Returns:
        The run id, or "" when unknown.
    """
    bound_run = current_context().get("run_id")
    if bound_run:
        return str(bound_run)
    return next((a.run_id for a in input_artifacts if a.run_id), "")


def _reason(details: str) -> str:
    """gRPC's last connection error, without the 'failed to connect' preamble."""
    _, sep, rest = details.partition("last error: ")
    return rest if sep else details


def input_to_proto(artifact: Artifact, *, store_address: str = "", inline_limit: int = -1) -> Any:
    """The wire form of an input artifact: inline, or by reference when held in the store.

    Args:
        artifact: the input.
        store_address: the store holding referenced content ("" = the receiver's own).
        inline_limit: content larger than this goes by reference when the artifact has an id
            (-1: always inline when content is there).

    Returns:
        A `dagwire.v1.Artifact`.

    Raises:
        ValueError: the artifact has neither content nor an `artifact_id`.
    """
    content = artifact.content
    by_reference = artifact.artifact_id is not None and (
        content is None or (inline_limit >= 0 and len(content) > inline_limit)
    )
    if content is None and not by_reference:
        raise ValueError(f"input artifact {artifact.name!r} has neither content nor an artifact_id")
    message = artifact_to_proto(artifact, with_content=not by_reference)
    if by_reference:
        message.reference.store_address = store_address
    return message


def output_from_proto(message: Any) -> Artifact:
    """The model of an output artifact: inline content, or a reference (`content=None`).

    Args:
        message: a `dagwire.v1.Artifact` from an adapter.

    Returns:
        The artifact; one with neither content nor reference nor id has empty content.
    """
    artifact = artifact_from_proto(message)
    if artifact.content is None and message.WhichOneof("body") is None and not artifact.artifact_id:
        return dataclasses.replace(artifact, content=b"")
    return artifact
