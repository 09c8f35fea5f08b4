"""Adapter routing: which adapter instance serves the next call of an agent key.

The dispatcher service keeps one `AdapterRegistry`: instances register (address, agent keys,
capacity) and renew a lease by heartbeat, or are configured statically. `acquire(key)` picks
a healthy instance round-robin among those with a free slot, or queues the caller in arrival
order until a slot frees; `release` frees it. An instance that stops answering is taken out of
rotation until it heartbeats again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from dagwire.errors import AdapterNotFoundError, NoHealthyAdapterError
from dagwire.models import utc_now

__all__ = ["AdapterInstance", "AdapterRegistry"]


@dataclass(eq=False)
class AdapterInstance:
    """One registered adapter process. `in_flight` never exceeds `capacity`, nor `limit` when
    set: this dispatcher replica's share of the capacity (docs/registry.md)."""

    instance_id: str
    address: str
    agent_keys: frozenset[str]
    capacity: int
    static: bool = False
    healthy: bool = True
    in_flight: int = 0
    lease_deadline: float = float("inf")
    last_heartbeat: datetime = field(default_factory=utc_now)
    unhealthy_reason: str = ""
    limit: int | None = None
    #: The principal that registered it ("" with auth off); only it (or an admin) may
    #: register the same instance id again, renew it or remove it (docs/security.md).
    owner: str = ""

    @property
    def slots(self) -> int:
        """How many calls this replica may have in flight on the instance."""
        return self.capacity if self.limit is None else min(self.limit, self.capacity)

    @property
    def has_free_slot(self) -> bool:
        return self.healthy and self.in_flight < self.slots


@dataclass(eq=False)
class _Waiter:
    agent_key: str
    future: asyncio.Future[AdapterInstance]


class AdapterRegistry:
    """Registered adapter instances, their leases, health and load.

    Args:
        lease_seconds: how long a registration lasts without a heartbeat.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self, *, lease_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._instances: dict[str, AdapterInstance] = {}
        self._by_key: dict[str, list[AdapterInstance]] = {}
        self._cursor: dict[str, int] = {}
        self._waiters: deque[_Waiter] = deque()

    # ------------------------------------------------------------------ membership

    def register(
        self,
        instance_id: str,
        address: str,
        agent_keys: Iterable[str],
        capacity: int,
        *,
        static: bool = False,
        owner: str = "",
    ) -> AdapterInstance:
        """Add an instance, or refresh it (same `instance_id`) keeping its in-flight count.

        Raises:
            ValueError: empty id/address/keys, or capacity < 1.
        """
        keys = frozenset(agent_keys)
        if not instance_id or not address:
            raise ValueError("instance_id and address must be non-empty")
        if not keys or any(not k for k in keys):
            raise ValueError(
                f"instance {instance_id!r} must serve at least one non-empty agent key"
            )
        if capacity < 1:
            raise ValueError(
                f"instance {instance_id!r}: capacity must be at least 1, got {capacity}"
            )
        deadline = float("inf") if static else self._clock() + self.lease_seconds
        instance = self._instances.get(instance_id)
        if instance is None:
            instance = AdapterInstance(
                instance_id=instance_id,
                address=address,
                agent_keys=keys,
                capacity=capacity,
                static=static,
                lease_deadline=deadline,
                owner=owner,
            )
            self._instances[instance_id] = instance
        else:
            # Updated in place: calls in flight hold this object and release their slots on
            # it, so a re-registration neither resets nor leaks the in-flight count.
            self._unlink(instance)
            instance.address = address
            instance.agent_keys = keys
            instance.capacity = capacity
            instance.static = static
            instance.lease_deadline = deadline
            instance.owner = owner
            instance.last_heartbeat = utc_now()
            instance.healthy = True
            instance.unhealthy_reason = ""
        for key in sorted(keys):
            self._by_key.setdefault(key, []).append(instance)
        self._serve_waiters()
        return instance

    def sync(
        self,
        instance_id: str,
        address: str,
        agent_keys: Iterable[str],
        capacity: int,
        *,
        lease_remaining: float,
        last_heartbeat: datetime | None = None,
        owner: str = "",
    ) -> AdapterInstance:
        """Take in a registration made through another dispatcher replica (read from the
        shared registry): add it with no share yet (`limit` 0), or update it in place keeping
        its health, load and share; its lease ends `lease_remaining` seconds from now."""
        keys = frozenset(agent_keys)
        instance = self._instances.get(instance_id)
        if instance is None:
            instance = self.register(instance_id, address, keys, capacity, owner=owner)
            instance.limit = 0
        elif (instance.address, instance.agent_keys, instance.capacity) != (
            address,
            keys,
            capacity,
        ):
            self._unlink(instance)
            instance.address = address
            instance.agent_keys = keys
            instance.capacity = capacity
            for key in sorted(keys):
                self._by_key.setdefault(key, []).append(instance)
        instance.owner = owner
        instance.lease_deadline = self._clock() + lease_remaining
        if last_heartbeat is not None:
            instance.last_heartbeat = last_heartbeat
        return instance

    def owner_of(self, instance_id: str) -> str | None:
        """The principal that registered the instance ("" with auth off); None if unknown."""
        instance = self._instances.get(instance_id)
        return None if instance is None else instance.owner

    def set_limits(self, limits: dict[str, int]) -> None:
        """Set this replica's share of each named instance's capacity, then grant slots."""
        for instance_id, limit in limits.items():
            instance = self._instances.get(instance_id)
            if instance is not None:
                instance.limit = max(limit, 0)
        self._serve_waiters()

    def heartbeat(self, instance_id: str) -> AdapterInstance | None:
        """Renew an instance's lease and put it back in rotation; None if it is not registered
        (the adapter should register again)."""
        self._sweep()
        instance = self._instances.get(instance_id)
        if instance is None:
            return None
        if not instance.static:
            instance.lease_deadline = self._clock() + self.lease_seconds
        instance.last_heartbeat = utc_now()
        if not instance.healthy:
            instance.healthy = True
            instance.unhealthy_reason = ""
            self._serve_waiters()
        return instance

    def deregister(self, instance_id: str) -> bool:
        """Remove an instance; calls in flight on it finish normally. False if unknown."""
        instance = self._instances.pop(instance_id, None)
        if instance is None:
            return False
        self._unlink(instance)
        self._fail_hopeless_waiters()
        return True

    def instances(self, agent_key: str | None = None) -> list[AdapterInstance]:
        """Live instances (expired leases dropped), optionally only those serving `agent_key`."""
        self._sweep()
        if agent_key is None:
            return list(self._instances.values())
        return list(self._by_key.get(agent_key, ()))

    def is_registered(self, instance_id: str) -> bool:
        """Whether a live (unexpired) instance has this id."""
        self._sweep()
        return instance_id in self._instances

    def serves(self, agent_key: str) -> bool:
        """True if any live instance (healthy or not) serves the key."""
        self._sweep()
        return bool(self._by_key.get(agent_key))

    # ------------------------------------------------------------------ health

    def mark_unhealthy(self, instance: AdapterInstance, reason: str) -> None:
        """Take an instance out of rotation until its next heartbeat (or `mark_healthy`)."""
        if self._instances.get(instance.instance_id) is not instance or not instance.healthy:
            return
        instance.healthy = False
        instance.unhealthy_reason = reason
        self._fail_hopeless_waiters()

    def mark_healthy(self, instance: AdapterInstance) -> None:
        """Put an instance back in rotation (e.g. a static one that answers a probe again)."""
        if self._instances.get(instance.instance_id) is instance and not instance.healthy:
            instance.healthy = True
            instance.unhealthy_reason = ""
            self._serve_waiters()

    # ------------------------------------------------------------------ load

    async def acquire(self, agent_key: str) -> AdapterInstance:
        """A slot on a healthy instance serving `agent_key`: round-robin among instances with a
        free slot; when all are full, wait in arrival order. Pair with `release`.

        Raises:
            AdapterNotFoundError: no live instance serves the key.
            NoHealthyAdapterError: instances serve the key but none is healthy.
        """
        self._sweep()
        self._check_servable(agent_key)
        if not any(w.agent_key == agent_key for w in self._waiters):
            instance = self._pick(agent_key)
            if instance is not None:
                instance.in_flight += 1
                return instance
        waiter = _Waiter(agent_key, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())  # granted just as we were cancelled
            else:
                self._remove_waiter(waiter)
            raise

    def release(self, instance: AdapterInstance) -> None:
        """Give back a slot taken by `acquire`."""
        if instance.in_flight > 0:
            instance.in_flight -= 1
        self._serve_waiters()

    def waiting_keys(self) -> set[str]:
        """The agent keys that calls are waiting for."""
        return {w.agent_key for w in self._waiters if not w.future.done()}

    @property
    def queued(self) -> int:
        """Calls waiting for a free slot."""
        return len(self._waiters)

    # ------------------------------------------------------------------ internals

    def _pick(self, agent_key: str) -> AdapterInstance | None:
        candidates = self._by_key.get(agent_key)
        if not candidates:
            return None
        start = self._cursor.get(agent_key, 0)
        count = len(candidates)
        for offset in range(count):
            instance = candidates[(start + offset) % count]
            if instance.has_free_slot:
                self._cursor[agent_key] = (start + offset + 1) % count
                return instance
        return None

    def _check_servable(self, agent_key: str) -> None:
        candidates = self._by_key.get(agent_key)
        if not candidates:
            known = ", ".join(repr(k) for k in sorted(self._by_key)) or "none"
            raise AdapterNotFoundError(
                agent_key,
                f"no adapter is registered for agent key {agent_key!r} (registered: {known})",
            )
        if not any(i.healthy for i in candidates):
            reasons = "; ".join(
                f"{i.address}: {i.unhealthy_reason or 'unhealthy'}" for i in candidates
            )
            raise NoHealthyAdapterError(
                agent_key, f"no healthy adapter for agent key {agent_key!r} ({reasons})"
            )

    def _serve_waiters(self) -> None:
        """Grant slots to waiters in arrival order; a waiter whose key is full keeps its place
        without blocking waiters of other keys."""
        if not self._waiters:
            return
        remaining: deque[_Waiter] = deque()
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.future.done():
                continue
            instance = self._pick(waiter.agent_key)
            if instance is None:
                remaining.append(waiter)
                continue
            instance.in_flight += 1
            waiter.future.set_result(instance)
        self._waiters = remaining

    def _fail_hopeless_waiters(self) -> None:
        remaining: deque[_Waiter] = deque()
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            try:
                self._check_servable(waiter.agent_key)
            except (AdapterNotFoundError, NoHealthyAdapterError) as exc:
                waiter.future.set_exception(exc)
                continue
            remaining.append(waiter)
        self._waiters = remaining

    def _remove_waiter(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _unlink(self, instance: AdapterInstance) -> None:
        for key in instance.agent_keys:
            members = self._by_key.get(key)
            if members is None:
                continue
            members[:] = [m for m in members if m is not instance]
            if not members:
                del self._by_key[key]
                self._cursor.pop(key, None)

    def _sweep(self) -> None:
        now = self._clock()
        expired = [i for i in self._instances.values() if i.lease_deadline < now]
        for instance in expired:
            del self._instances[instance.instance_id]
            self._unlink(instance)
        if expired:
            self._fail_hopeless_waiters()
