"""The dispatcher's routing of Dispatch calls over its `AdapterRegistry`: `AdapterPool`.

Re-route rule (see `dagwire.rpc.adapter_client.never_reached`): a call that failed while gRPC
was picking a connection never reached the adapter; the pool marks the instance unhealthy and
sends the call to another instance without using an attempt. Any other failure happened on an
established connection and fails the attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import grpc
import grpc.aio

from dagwire.errors import (
    AttemptTimeoutError,
    DagwireError,
    NoHealthyAdapterError,
)
from dagwire.grants import GrantKey
from dagwire.limits import MAX_TASK_TIMEOUT_SECONDS
from dagwire.models import utc_now
from dagwire.rpc.adapter_client import (
    DEFAULT_STATIC_CAPACITY,
    AdapterCallError,
    AdapterClient,
    AdapterUnreachableError,
)
from dagwire.rpc.convert import datetime_to_proto
from dagwire.rpc.status import InvalidArgumentError, RemoteError
from dagwire.runtime.routing import AdapterInstance, AdapterRegistry
from dagwire.settings import DEFAULT_MAX_MESSAGE_BYTES
from dagwire.v1 import adapter_service_pb2 as apb
from dagwire.v1 import dispatcher_service_pb2 as dpb

__all__ = ["AdapterPool"]

log = logging.getLogger("dagwire.rpc.adapter_client")


class AdapterPool:
    """Routes Dispatch calls over an `AdapterRegistry` to cached `AdapterClient`s.

    Each call takes a slot (`acquire`, FIFO when every instance is full), calls the instance
    with the attempt's deadline counted from the send, and releases the slot. Calls that never
    reached an instance are re-routed (module docstring); unhealthy instances are probed
    (Describe) and come back into rotation when they answer.
    """

    def __init__(
        self,
        registry: AdapterRegistry,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        probe_interval: float = 2.0,
        grants: GrantKey | None = None,
    ) -> None:
        """Describe the pool; does no I/O.

        Args:
            registry: the adapter registry (shared with the registration RPCs).
            max_message_bytes: send and receive limit per message to adapters.
            probe_interval: seconds between health probes of unhealthy and static instances.
            grants: signs each attempt's store grant (`ExecuteRequest.store_token`); default:
                the key of ``DAGWIRE_GRANT_KEY_FILE``, none when it is unset.
        """
        self._grants = GrantKey.from_env() if grants is None else grants
        self.registry = registry
        self._max_message_bytes = max_message_bytes
        self._probe_interval = probe_interval
        self._clients: dict[str, AdapterClient] = {}
        self._prober: asyncio.Task[None] | None = None

    def client(self, address: str) -> AdapterClient:
        """The cached client of an address (created on first use)."""
        client = self._clients.get(address)
        if client is None:
            client = AdapterClient(address, max_message_bytes=self._max_message_bytes)
            self._clients[address] = client
        return client

    def add_static(self, pairs: Iterable[tuple[str, str]]) -> list[AdapterInstance]:
        """Register ``(agent_key, address)`` pairs as static instances (one per address).

        Args:
            pairs: from ``DAGWIRE_STATIC_ADAPTERS``.

        Returns:
            The instances registered.
        """
        keys_by_address: dict[str, set[str]] = {}
        for key, address in pairs:
            keys_by_address.setdefault(address, set()).add(key)
        return [
            self.registry.register(
                f"static:{address}", address, keys, DEFAULT_STATIC_CAPACITY, static=True
            )
            for address, keys in keys_by_address.items()
        ]

    async def start(self) -> None:
        """Probe the static instances once (to learn their capacity), then keep probing."""
        await self.probe()
        if self._prober is None:
            self._prober = asyncio.create_task(self._probe_forever(), name="adapter-prober")

    async def dispatch(self, request: dpb.DispatchRequest, *, trace_id: str) -> Any:
        """Run one attempt on an instance serving `request.agent`.

        Args:
            request: the Dispatch request.
            trace_id: the call's trace id.

        Returns:
            A `DispatchResponse` with the adapter's outputs as it sent them.

        Raises:
            InvalidArgumentError: no agent key, or a negative timeout.
            AdapterNotFoundError: no instance serves the key.
            NoHealthyAdapterError: none of them is healthy (or reachable).
            AttemptTimeoutError: the attempt passed its timeout.
            AdapterCallError: the adapter's own error status (to pass through).
            RemoteError: the adapter died mid-call, or answered garbage.
        """
        if not request.agent:
            raise InvalidArgumentError("agent is required", field="agent")
        limit = _timeout_of(request)
        trace_id = trace_id or request.trace_id
        reroutes = 0
        while True:
            instance = await self.registry.acquire(request.agent)
            try:
                response = await self._call(instance, request, limit, trace_id)
            except AdapterUnreachableError as exc:
                self.registry.mark_unhealthy(instance, exc.reason)
                reroutes += 1
                log.warning(
                    "adapter instance %s at %s is unreachable (%s): re-routing the call",
                    instance.instance_id,
                    instance.address,
                    exc.reason,
                )
                if reroutes > max(8, 2 * len(self.registry.instances(request.agent))):
                    raise NoHealthyAdapterError(
                        request.agent,
                        f"no reachable adapter for agent key {request.agent!r} after "
                        f"{reroutes} tries; last: {exc}",
                    ) from None
                continue
            finally:
                self.registry.release(instance)
            return dpb.DispatchResponse(
                output_artifacts=response.output_artifacts, instance_id=instance.instance_id
            )

    async def _call(
        self,
        instance: AdapterInstance,
        request: dpb.DispatchRequest,
        limit: float | None,
        trace_id: str,
    ) -> apb.ExecuteResponse:
        execute = apb.ExecuteRequest(
            agent=request.agent,
            params_json=request.params_json,
            input_artifacts=request.input_artifacts,
            run_id=request.run_id,
            node_id=request.node_id,
            attempt=request.attempt,
            trace_id=trace_id,
            idempotency_key=f"{request.run_id}/{request.node_id}/{request.attempt}",
        )
        if limit is not None:
            execute.deadline.CopyFrom(datetime_to_proto(utc_now() + timedelta(seconds=limit)))
        if self._grants is not None:
            execute.store_token = self._grants.mint(
                request.run_id, request.node_id, request.attempt, seconds=limit
            )
        started = time.monotonic()
        try:
            return await self.client(instance.address).call(
                execute, time_limit=limit, trace_id=trace_id
            )
        except AdapterCallError as exc:
            elapsed = time.monotonic() - started
            if (
                exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
                and limit is not None
                and elapsed >= limit * 0.95
            ):
                raise AttemptTimeoutError(request.node_id, request.attempt, limit) from None
            if exc.code == grpc.StatusCode.UNAVAILABLE and not exc.has_status_details:
                raise RemoteError(
                    f"adapter instance {instance.instance_id} at {instance.address} failed "
                    f"during the call (after {elapsed:.3g} s): {exc}",
                    code=grpc.StatusCode.UNAVAILABLE,
                    reason="ADAPTER_FAILED_DURING_CALL",
                    metadata={"address": instance.address, "instance_id": instance.instance_id},
                ) from None
            raise
        except RemoteError as exc:
            if exc.reason == "ADAPTER_PROTOCOL_ERROR":
                exc.metadata["instance_id"] = instance.instance_id
            raise

    async def probe(self) -> None:
        """Describe every static or unhealthy instance once; mark each healthy or not."""
        targets = [i for i in self.registry.instances() if i.static or not i.healthy]
        if targets:
            await asyncio.gather(*(self._probe_one(i) for i in targets))
        self._close_idle_clients()

    async def _probe_one(self, instance: AdapterInstance) -> None:
        try:
            described = await self.client(instance.address).describe(time_limit=2.0)
        except AdapterUnreachableError as exc:
            self.registry.mark_unhealthy(instance, exc.reason)
            return
        except DagwireError as exc:
            if isinstance(exc, AdapterCallError) and exc.code == grpc.StatusCode.UNIMPLEMENTED:
                self.registry.mark_healthy(instance)  # it answers, it just has no Describe
            else:
                self.registry.mark_unhealthy(instance, str(exc))
            return
        if instance.static and described.capacity >= 1 and described.capacity != instance.capacity:
            self.registry.register(
                instance.instance_id,
                instance.address,
                instance.agent_keys,
                described.capacity,
                static=True,
            )
            log.info(
                "static adapter at %s declares capacity %d",
                instance.address,
                described.capacity,
            )
        else:
            self.registry.mark_healthy(instance)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval)
            try:
                await self.probe()
            except Exception:
                log.exception("probing adapters failed")

    def _close_idle_clients(self) -> None:
        live = {i.address for i in self.registry.instances()}
        for address in [
            a for a, c in self._clients.items() if a not in live and not c.active_calls
        ]:
            asyncio.create_task(self._clients.pop(address).aclose())  # noqa: RUF006

    async def aclose(self) -> None:
        """Stop probing and close every adapter channel."""
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
            self._prober = None
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


def _timeout_of(request: dpb.DispatchRequest) -> float | None:
    if not request.HasField("timeout"):
        return None
    seconds = request.timeout.ToNanoseconds() / 1e9  # any Duration (ToTimedelta may overflow)
    if seconds <= 0:
        raise InvalidArgumentError(
            f"timeout must be positive when set, got {seconds:g} s", field="timeout"
        )
    if seconds > MAX_TASK_TIMEOUT_SECONDS:
        raise InvalidArgumentError(
            f"timeout must be at most {MAX_TASK_TIMEOUT_SECONDS:.0f} s (100 years), "
            f"got {seconds:g} s",
            field="timeout",
        )
    return seconds
