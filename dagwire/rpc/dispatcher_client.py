"""`RemoteDispatcher`: the orchestrator's `TaskDispatcher` over the dispatcher service, and
typed calls for adapter registration (register, heartbeat, deregister, list)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import grpc.aio
from google.protobuf import duration_pb2

from dagwire.errors import DagwireError
from dagwire.limits import WIRE_INLINE_OUTPUT_BYTES
from dagwire.models import Artifact, TaskNode
from dagwire.rpc.adapter_client import current_run_id, input_to_proto, output_from_proto
from dagwire.rpc.channels import client_channel
from dagwire.rpc.convert import datetime_from_proto
from dagwire.rpc.paging import MAX_PAGE_SIZE
from dagwire.rpc.status import error_from_rpc, trace_metadata
from dagwire.settings import DEFAULT_MAX_MESSAGE_BYTES
from dagwire.v1 import dispatcher_service_pb2 as pb
from dagwire.v1 import dispatcher_service_pb2_grpc as pb_grpc

__all__ = ["INLINE_LIMIT", "AdapterInfo", "Lease", "RemoteDispatcher"]

log = logging.getLogger(__name__)

INLINE_LIMIT = WIRE_INLINE_OUTPUT_BYTES
_DETAILS_KEY = "grpc-status-details-bin"
_CONTROL_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Lease:
    """A registration lease granted by the dispatcher.

    Attributes:
        seconds: how long a lease lasts (heartbeat at a third of it).
        expires_at: when it expires unless renewed.
    """

    seconds: float
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """One registered adapter instance as the dispatcher sees it."""

    instance_id: str
    address: str
    agents: tuple[str, ...]
    capacity: int
    in_flight: int
    healthy: bool
    last_heartbeat: datetime | None
    lease_expires_at: datetime | None


class RemoteDispatcher:
    """A `TaskDispatcher` served by the dispatcher service, over one long-lived channel.

    It enforces `task.timeout` on the adapter call only (`applies_timeouts`) and takes inputs
    held by reference (`accepts_references`): inputs of at most 1 MiB travel inline, others by
    reference to the store. The constructor does no I/O; `aclose()` closes the channel.
    """

    applies_timeouts = True
    accepts_references = True

    def __init__(
        self,
        address: str,
        *,
        store_address: str = "",
        channel: grpc.aio.Channel | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        inline_limit: int = INLINE_LIMIT,
    ) -> None:
        """Describe the client; does no I/O.

        Args:
            address: a gRPC target of the dispatcher service (``host:port``, ``dns:///name:port``,
                ``ipv4:A:P,B:P``; see docs/targets.md).
            store_address: the store service holding referenced inputs ("" = the adapter's
                own configured store).
            channel: an existing channel to use instead of opening one (borrowed).
            max_message_bytes: the channel's message size limit (when it opens one).
            inline_limit: inputs with more content than this go by reference when stored.
        """
        self.address = address
        self._store_address = store_address
        self._channel = channel
        self._owned = channel is None
        self._max_message_bytes = max_message_bytes
        self._inline_limit = inline_limit
        self._stub: Any = None

    @property
    def _api(self) -> pb_grpc.DispatcherServiceAsyncStub:
        if self._stub is None:
            if self._channel is None:
                self._channel = client_channel(
                    self.address, max_message_bytes=self._max_message_bytes
                )
            self._stub = pb_grpc.DispatcherServiceStub(self._channel)
        stub: pb_grpc.DispatcherServiceAsyncStub = self._stub
        return stub

    async def dispatch(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        """Run one attempt of `task` on an adapter (one Dispatch call).

        Args:
            task: the task; `task.timeout` limits the adapter call (not the queueing).
            input_artifacts: the inputs, with content or held in the store (`artifact_id`).
            trace_id: the run's trace id.

        Returns:
            The outputs: inline ones with `content`; ones the adapter put in the store with
            `content=None` and their `artifact_id`.

        Raises:
            AdapterNotFoundError: no adapter serves `task.agent`.
            NoHealthyAdapterError: adapters serve it, but none is healthy.
            AttemptTimeoutError: the adapter call passed `task.timeout`.
            NonRetryableError: the adapter refused the task for good.
            ResourceExhaustedError: the adapter is overloaded (`retry_after` set when asked).
            DagwireError: any other failure (retryable), with the remote message.
            ValueError: params are not JSON-serializable, or an input has no content or id.
        """
        try:
            params_json = json.dumps(task.params, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"task {task.id!r}: params are not JSON: {exc}") from None
        request = pb.DispatchRequest(
            agent=task.agent,
            params_json=params_json,
            input_artifacts=[
                input_to_proto(
                    a, store_address=self._store_address, inline_limit=self._inline_limit
                )
                for a in input_artifacts
            ],
            run_id=task.run_id or current_run_id(input_artifacts),
            node_id=task.id,
            attempt=task.attempt,
            trace_id=trace_id,
        )
        if task.timeout is not None:
            request.timeout.CopyFrom(_duration(task.timeout))
        metadata = trace_metadata(trace_id)
        try:
            response = await self._api.Dispatch(request, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if not _lost_with_its_replica(exc):
                raise self._error(exc) from None
            # The dispatcher replica died (or dropped the connection) mid-call: the adapter may
            # have run the attempt. Re-send it once, same attempt, so the same idempotency key
            # (run/node/attempt) lets the adapter tell; round-robin picks a live replica.
            log.warning(
                "dispatch of %s attempt %d lost with its dispatcher replica (%s); re-sending it "
                "once to another replica",
                task.id,
                task.attempt,
                exc.details() or exc.code().name,
                extra={"run_id": request.run_id, "node_id": task.id, "attempt": task.attempt},
            )
            # wait_for_ready: a replica that is (re)connecting takes it, rather than a fast
            # UNAVAILABLE while no replica is ready (the run's cancellation still ends the wait)
            response = await self._call(
                self._api.Dispatch(request, metadata=metadata, wait_for_ready=True)
            )
        return [output_from_proto(a) for a in response.output_artifacts]

    def _input(self, artifact: Artifact) -> Any:
        return input_to_proto(
            artifact, store_address=self._store_address, inline_limit=self._inline_limit
        )

    async def register_adapter(
        self, instance_id: str, address: str, agents: Sequence[str], capacity: int
    ) -> Lease:
        """Register (or renew) an adapter instance for one lease.

        Args:
            instance_id: the instance's id, stable for its process's life.
            address: where the dispatcher reaches it (``host:port``, never 0.0.0.0).
            agents: the agent keys it serves.
            capacity: how many calls it takes at once.

        Returns:
            The lease.

        Raises:
            InvalidArgumentError: a field is invalid (the message names it).
            DagwireError: the dispatcher cannot be reached (a retryable `RemoteError`).
        """
        request = pb.RegisterAdapterRequest(
            instance_id=instance_id, address=address, agents=list(agents), capacity=capacity
        )
        response = await self._call(self._api.RegisterAdapter(request, timeout=_CONTROL_TIMEOUT))
        return _lease(response)

    async def heartbeat(self, instance_id: str) -> Lease:
        """Renew an instance's lease.

        Raises:
            NotFoundError: the instance is not registered (its lease expired): register again.
            DagwireError: the dispatcher cannot be reached.
        """
        response = await self._call(
            self._api.Heartbeat(
                pb.HeartbeatRequest(instance_id=instance_id), timeout=_CONTROL_TIMEOUT
            )
        )
        return _lease(response)

    async def deregister_adapter(self, instance_id: str) -> None:
        """Remove an instance at once (unknown ids are fine).

        Raises:
            DagwireError: the dispatcher cannot be reached.
        """
        await self._call(
            self._api.DeregisterAdapter(
                pb.DeregisterAdapterRequest(instance_id=instance_id), timeout=_CONTROL_TIMEOUT
            )
        )

    async def list_adapters(self, *, agent: str = "") -> list[AdapterInfo]:
        """Every registered instance (all pages), ordered by instance id.

        Args:
            agent: only instances serving this key ("" = all).

        Raises:
            DagwireError: the dispatcher cannot be reached.
        """
        out: list[AdapterInfo] = []
        token = ""
        while True:
            response = await self._call(
                self._api.ListAdapters(
                    pb.ListAdaptersRequest(page_size=MAX_PAGE_SIZE, page_token=token, agent=agent),
                    timeout=_CONTROL_TIMEOUT,
                )
            )
            out += [_adapter_info(a) for a in response.adapters]
            token = response.next_page_token
            if not token:
                return out

    async def aclose(self) -> None:
        """Close the channel (when this client opened it)."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None and self._owned:
            await channel.close()

    async def _call(self, call: Any) -> Any:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.aio.AioRpcError) -> DagwireError:
        return error_from_rpc(exc, target=f"dispatcher at {self.address}")


def _lost_with_its_replica(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a Dispatch failed on the way to or from its dispatcher replica, not in it.

    UNAVAILABLE without the rich status details every dagwire server attaches to the errors it
    raises (`dagwire.rpc.status`): the connection dropped or could not be made. A dispatcher's
    own UNAVAILABLE (no healthy adapter) carries details and is the caller's to retry.
    """
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return not any(key == _DETAILS_KEY for key, _ in exc.trailing_metadata() or ())


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def _lease(response: Any) -> Lease:
    return Lease(
        seconds=response.lease_duration.ToNanoseconds() / 1e9,
        expires_at=datetime_from_proto(response.lease_expire_time),
    )


def _adapter_info(message: pb.AdapterInstance) -> AdapterInfo:
    return AdapterInfo(
        instance_id=message.instance_id,
        address=message.address,
        agents=tuple(message.agents),
        capacity=message.capacity,
        in_flight=message.in_flight,
        healthy=message.health == pb.ADAPTER_HEALTH_HEALTHY,
        last_heartbeat=(
            datetime_from_proto(message.last_heartbeat_time)
            if message.HasField("last_heartbeat_time")
            else None
        ),
        lease_expires_at=(
            datetime_from_proto(message.lease_expire_time)
            if message.HasField("lease_expire_time")
            else None
        ),
    )
