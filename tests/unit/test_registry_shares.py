"""The adapter registry shared by dispatcher replicas through a store (SQLite here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest

from dagwire.errors import StoreUnavailableError
from dagwire.models import RegistryEntry
from dagwire.runtime.routing import AdapterInstance, AdapterRegistry
from dagwire.runtime.shared_registry import SharedRegistry, capacity_shares
from dagwire.stores.local import SqliteExecutionStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteExecutionStore]:
    store = SqliteExecutionStore(tmp_path / "executions.sqlite3")
    yield store
    await store.aclose()


def _replica(store: SqliteExecutionStore, name: str) -> SharedRegistry:
    return SharedRegistry(AdapterRegistry(), store, replica_id=name, refresh_seconds=0.5)


async def _settle(*replicas: SharedRegistry, rounds: int = 3) -> None:
    for _ in range(rounds):
        for replica in replicas:
            await replica.refresh()


async def _take_all(replica: SharedRegistry, key: str) -> list[AdapterInstance]:
    """Every slot the replica grants now for `key` (stops at the first that would wait)."""
    taken: list[AdapterInstance] = []
    while True:
        try:
            taken.append(await asyncio.wait_for(replica.registry.acquire(key), 0.05))
        except TimeoutError:
            return taken


@pytest.mark.parametrize(("capacity", "replicas"), [(1, 1), (4, 2), (5, 2), (7, 3), (2, 3)])
def test_capacity_shares_add_up_to_the_capacity(capacity: int, replicas: int) -> None:
    shares = capacity_shares("adapter-1", capacity, [f"r{i}" for i in range(replicas)])
    assert sum(shares.values()) == capacity
    assert max(shares.values()) - min(shares.values()) <= 1


async def test_an_adapter_registered_through_one_replica_is_routed_by_another(
    store: SqliteExecutionStore,
) -> None:
    a, b = _replica(store, "a"), _replica(store, "b")
    await a.register("tb-1", "127.0.0.1:7001", ["echo"], 4)
    await _settle(a, b)
    assert [i.instance_id for i in b.registry.instances("echo")] == ["tb-1"]
    assert (await asyncio.wait_for(b.registry.acquire("echo"), 1)).address == "127.0.0.1:7001"


async def test_two_replicas_together_never_exceed_the_capacity(
    store: SqliteExecutionStore,
) -> None:
    a, b = _replica(store, "a"), _replica(store, "b")
    await a.register("tb-1", "127.0.0.1:7001", ["echo"], 5)
    await _settle(a, b)
    held_a, held_b = await _take_all(a, "echo"), await _take_all(b, "echo")
    assert len(held_a) + len(held_b) == 5
    assert held_a and held_b


async def test_a_joining_replica_waits_for_the_calls_above_its_share_to_finish(
    store: SqliteExecutionStore,
) -> None:
    a = _replica(store, "a")
    await a.register("tb-1", "127.0.0.1:7001", ["echo"], 4)
    await _settle(a)
    held_a = await _take_all(a, "echo")
    assert len(held_a) == 4  # alone, the whole capacity
    b = _replica(store, "b")
    await _settle(a, b)
    assert await _take_all(b, "echo") == []  # a still has all four in flight
    for instance in held_a[:3]:
        a.registry.release(instance)
    await _settle(a, b)
    total = len(held_a) - 3 + len(await _take_all(a, "echo")) + len(await _take_all(b, "echo"))
    assert total == 4


async def test_a_dead_replicas_share_goes_to_the_others_after_its_entry_expires(
    store: SqliteExecutionStore,
) -> None:
    a, b = _replica(store, "a"), _replica(store, "b")
    a.replica_ttl = b.replica_ttl = 0.3
    await b.register("tb-1", "127.0.0.1:7001", ["echo"], 4)
    await _settle(a, b)
    assert len(await _take_all(a, "echo")) == 2
    await asyncio.sleep(0.4)  # b stops refreshing: its entry expires
    await _settle(a)
    assert len(await _take_all(a, "echo")) == 2  # the two more that were b's


async def test_deregistering_through_one_replica_removes_it_everywhere(
    store: SqliteExecutionStore,
) -> None:
    a, b = _replica(store, "a"), _replica(store, "b")
    await a.register("tb-1", "127.0.0.1:7001", ["echo"], 2)
    await _settle(a, b)
    await b.deregister("tb-1")
    await _settle(a, b)
    assert not a.registry.serves("echo")
    assert not b.registry.serves("echo")


async def test_heartbeat_through_another_replica_renews_the_registration(
    store: SqliteExecutionStore,
) -> None:
    a, b = _replica(store, "a"), _replica(store, "b")
    await a.register("tb-1", "127.0.0.1:7001", ["echo"], 2)
    assert await b.heartbeat("tb-1") is not None  # b has not refreshed yet: it reads the store
    assert await b.heartbeat("never-registered") is None


class UnreachableStore:
    """A `ServiceRegistry` whose store cannot be reached (every call fails as the client does)."""

    async def put_entry(self, entry: RegistryEntry) -> None:
        raise StoreUnavailableError("store service at 127.0.0.1:1 is unavailable")

    async def delete_entry(self, kind: str, key: str) -> None:
        raise StoreUnavailableError("store service at 127.0.0.1:1 is unavailable")

    async def list_entries(
        self, kind: str, *, after: str = "", limit: int = 1000
    ) -> list[RegistryEntry]:
        raise StoreUnavailableError("store service at 127.0.0.1:1 is unavailable")

    async def prune_entries(self, kind: str, expired_before: datetime) -> int:
        raise StoreUnavailableError("store service at 127.0.0.1:1 is unavailable")


async def test_a_replica_out_of_touch_with_the_store_starts_no_new_call(
    store: SqliteExecutionStore,
) -> None:
    a = _replica(store, "a")
    await a.register("tb-1", "127.0.0.1:7001", ["echo"], 4)
    await _settle(a)
    cut_off = SharedRegistry(a.registry, UnreachableStore(), replica_id="a")
    held = [await a.registry.acquire("echo")]
    with pytest.raises(StoreUnavailableError):
        await cut_off.refresh()  # its entry may expire for the others: fenced
    assert await _take_all(a, "echo") == []
    for instance in held:
        a.registry.release(instance)  # the call in flight still finishes
    assert a.registry.instances("echo")[0].in_flight == 0


async def test_a_replica_without_a_share_of_a_small_adapter_routes_to_another_instance(
    store: SqliteExecutionStore,
) -> None:
    a, b = _replica(store, "a"), _replica(store, "b")
    await a.register("small", "127.0.0.1:7001", ["echo"], 1)
    await a.register("big", "127.0.0.1:7002", ["echo"], 4)
    await _settle(a, b)
    held_a, held_b = await _take_all(a, "echo"), await _take_all(b, "echo")
    small = [i for i in held_a + held_b if i.instance_id == "small"]
    assert len(small) == 1  # capacity 1 holds over both replicas
    assert len(held_a) + len(held_b) == 5


async def test_a_capacity_below_the_replicas_moves_between_them_when_calls_wait(
    store: SqliteExecutionStore,
) -> None:
    a, b = _replica(store, "a"), _replica(store, "b")
    await a.register("one", "127.0.0.1:7001", ["echo"], 1)
    await _settle(a, b)
    held_a, held_b = await _take_all(a, "echo"), await _take_all(b, "echo")
    assert len(held_a) + len(held_b) == 1  # one replica has the only slot
    holder, other = (a, b) if held_a else (b, a)
    waiting = asyncio.create_task(other.registry.acquire("echo"))
    await asyncio.sleep(0)
    holder.registry.release((held_a + held_b)[0])
    await _settle(a, b, rounds=6)  # the waiting replica asks for the turn and gets it
    granted = await asyncio.wait_for(waiting, 1)
    assert granted.instance_id == "one"
    assert await _take_all(holder, "echo") == []  # still one call at a time over both
