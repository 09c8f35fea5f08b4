"""The dispatcher service's gRPC layer: decode each request, call the registry/pool, encode."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from typing import Any

import grpc.aio
from google.protobuf import duration_pb2

from dagwire.errors import NotFoundError, PermissionDeniedError
from dagwire.models import utc_now
from dagwire.rpc.adapter_client import AdapterCallError
from dagwire.rpc.auth import current_principal
from dagwire.rpc.convert import datetime_to_proto
from dagwire.rpc.logs import current_context
from dagwire.rpc.paging import decode_page_token, encode_page_token, page_size
from dagwire.rpc.serve import Service
from dagwire.rpc.status import InvalidArgumentError
from dagwire.rpc.uploads import check_required
from dagwire.runtime.routing import AdapterInstance, AdapterRegistry
from dagwire.runtime.shared_registry import SharedRegistry
from dagwire.v1 import dispatcher_service_pb2, dispatcher_service_pb2_grpc
from dagwire.v1.dispatcher_service_pb2 import (
    ADAPTER_HEALTH_HEALTHY,
    ADAPTER_HEALTH_UNHEALTHY,
    DeregisterAdapterRequest,
    DeregisterAdapterResponse,
    DispatchRequest,
    DispatchResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    ListAdaptersRequest,
    ListAdaptersResponse,
    RegisterAdapterRequest,
    RegisterAdapterResponse,
)
from dagwire.v1.dispatcher_service_pb2 import (
    AdapterInstance as AdapterInstanceMessage,
)
from dagwire_services.dispatcher.pool import AdapterPool

__all__ = ["DispatcherServicer", "check_adapter_address", "dispatcher_services"]

Context = grpc.aio.ServicerContext[Any, Any]
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "[::]", "[0:0:0:0:0:0:0:0]"})


def check_adapter_address(address: str, field: str = "address") -> str:
    """`address` if the dispatcher can dial it: ``host:port``, port 1-65535, not a wildcard.

    Raises:
        InvalidArgumentError: otherwise (names `field`).
    """
    match = _HOST_PORT.match(address)
    if match is None:
        raise InvalidArgumentError(
            f"{field} {address!r} is not host:port (for example 10.0.0.7:50060)", field=field
        )
    if match["host"] in _WILDCARD_HOSTS:
        raise InvalidArgumentError(
            f"{field} {address!r} is a wildcard the dispatcher cannot dial: register the "
            "adapter's reachable address (DAGWIRE_ADVERTISE_ADDR)",
            field=field,
        )
    if not 1 <= int(match["port"]) <= 65535:
        raise InvalidArgumentError(
            f"{field} {address!r}: the port must be 1-65535 (register the bound port)",
            field=field,
        )
    return address


class DispatcherServicer(dispatcher_service_pb2_grpc.DispatcherServiceServicer):
    """`DispatcherService` over an `AdapterRegistry` and an `AdapterPool`; with a
    `SharedRegistry`, registrations go through the store (docs/registry.md)."""

    def __init__(self, pool: AdapterPool, shared: SharedRegistry | None = None) -> None:
        self._pool = pool
        self._registry: AdapterRegistry = pool.registry
        self._shared = shared

    async def Dispatch(self, request: DispatchRequest, context: Context) -> DispatchResponse:
        trace_id = request.trace_id or str(current_context().get("trace_id", ""))
        try:
            response: DispatchResponse = await self._pool.dispatch(request, trace_id=trace_id)
        except AdapterCallError as exc:  # the adapter's own status, passed through unchanged
            await context.abort(exc.code, str(exc), exc.trailing_metadata)
        return response

    async def RegisterAdapter(
        self, request: RegisterAdapterRequest, context: Context
    ) -> RegisterAdapterResponse:
        instance_id = check_required(request.instance_id, "instance_id")
        address = check_adapter_address(request.address)
        if not request.agents or any(not key for key in request.agents):
            raise InvalidArgumentError(
                "agents must list at least one agent key, none of them empty", field="agents"
            )
        if request.capacity < 1:
            raise InvalidArgumentError(
                f"capacity must be at least 1, got {request.capacity}", field="capacity"
            )
        owner = await self._check_caller(instance_id, "register", agents=request.agents)
        if self._shared is not None:
            await self._shared.register(
                instance_id, address, list(request.agents), request.capacity, owner=owner
            )
        else:
            self._registry.register(
                instance_id, address, request.agents, request.capacity, owner=owner
            )
        duration, expires = self._lease()
        return RegisterAdapterResponse(lease_duration=duration, lease_expire_time=expires)

    async def Heartbeat(self, request: HeartbeatRequest, context: Context) -> HeartbeatResponse:
        instance_id = check_required(request.instance_id, "instance_id")
        await self._check_caller(instance_id, "renew")
        if self._shared is not None:
            found = await self._shared.heartbeat(instance_id)
        else:
            found = self._registry.heartbeat(instance_id)
        if found is None:
            raise NotFoundError(
                f"adapter instance {instance_id!r} is not registered (its lease expired, or "
                "the dispatcher restarted): register again",
                kind="adapter_instance",
                id=instance_id,
            )
        duration, expires = self._lease()
        return HeartbeatResponse(lease_duration=duration, lease_expire_time=expires)

    async def DeregisterAdapter(
        self, request: DeregisterAdapterRequest, context: Context
    ) -> DeregisterAdapterResponse:
        instance_id = check_required(request.instance_id, "instance_id")
        await self._check_caller(instance_id, "deregister")
        if self._shared is not None:
            await self._shared.deregister(instance_id)
        else:
            self._registry.deregister(instance_id)
        return DeregisterAdapterResponse()

    async def ListAdapters(
        self, request: ListAdaptersRequest, context: Context
    ) -> ListAdaptersResponse:
        size = page_size(request.page_size)
        after = (
            str(decode_page_token(request.page_token, "adapters", request.agent))
            if request.page_token
            else ""
        )
        instances = sorted(
            (i for i in self._registry.instances(request.agent or None) if i.instance_id > after),
            key=lambda i: i.instance_id,
        )
        page = instances[:size]
        token = (
            encode_page_token("adapters", request.agent, page[-1].instance_id)
            if len(instances) > size
            else ""
        )
        shared = self._shared
        return ListAdaptersResponse(
            adapters=[
                _instance(i, shared.reported_in_flight(i.instance_id) if shared else 0)
                for i in page
            ],
            next_page_token=token,
        )

    async def _check_caller(
        self, instance_id: str, action: str, *, agents: Sequence[str] = ()
    ) -> str:
        """The calling principal's name ("" with auth off), once it may `action` the instance:
        every agent key it registers is among its ``agents``, and an instance id someone else
        registered stays theirs (docs/security.md: adapters cannot hijack a key).

        Raises:
            PermissionDeniedError: it may not.
        """
        principal = current_principal()
        if principal is None:
            return ""
        refused = sorted(key for key in agents if not principal.may_serve(key))
        if refused:
            allowed = ", ".join(sorted(principal.agents)) or "none"
            raise PermissionDeniedError(
                f"principal {principal.name!r} may not serve agent key "
                f"{', '.join(repr(k) for k in refused)} (its agents: {allowed})"
            )
        if self._shared is not None:
            owner = await self._shared.owner_of(instance_id)
        else:
            owner = self._registry.owner_of(instance_id)
        if owner is not None and owner != principal.name and not principal.is_admin:
            raise PermissionDeniedError(
                f"principal {principal.name!r} may not {action} adapter instance "
                f"{instance_id!r}: another principal registered it"
            )
        return principal.name

    def _lease(self) -> tuple[duration_pb2.Duration, Any]:
        seconds = self._registry.lease_seconds
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(round(seconds * 1e9))
        return duration, datetime_to_proto(utc_now() + timedelta(seconds=seconds))


def _instance(instance: AdapterInstance, elsewhere: int = 0) -> AdapterInstanceMessage:
    """The wire form of an instance; `elsewhere`: calls other replicas last reported in
    flight on it (added to this replica's own)."""
    message = AdapterInstanceMessage(
        instance_id=instance.instance_id,
        address=instance.address,
        agents=sorted(instance.agent_keys),
        capacity=instance.capacity,
        in_flight=instance.in_flight + elsewhere,
        health=ADAPTER_HEALTH_HEALTHY if instance.healthy else ADAPTER_HEALTH_UNHEALTHY,
    )
    if not instance.static:
        message.last_heartbeat_time.CopyFrom(datetime_to_proto(instance.last_heartbeat))
        remaining = max(instance.lease_deadline - time.monotonic(), 0.0)
        message.lease_expire_time.CopyFrom(
            datetime_to_proto(utc_now() + timedelta(seconds=remaining))
        )
    return message


def dispatcher_services(pool: AdapterPool, shared: SharedRegistry | None = None) -> list[Service]:
    """The dispatcher's gRPC service over `pool`.

    Args:
        pool: the adapter pool (with its registry).
        shared: the registry shared with other replicas through the store, if any.

    Returns:
        Services for `dagwire.rpc.serve.start_server`/`run_server`.
    """
    name = dispatcher_service_pb2.DESCRIPTOR.services_by_name["DispatcherService"].full_name
    add = dispatcher_service_pb2_grpc.add_DispatcherServiceServicer_to_server
    return [Service(name, partial(add, DispatcherServicer(pool, shared)))]
