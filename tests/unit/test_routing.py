"""Adapter routing: round-robin, capacity, FIFO queueing, leases and health."""

from __future__ import annotations

import asyncio

import pytest

from dagwire.errors import AdapterNotFoundError, NoHealthyAdapterError
from dagwire.runtime.routing import AdapterRegistry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_acquire_round_robins_across_instances_of_a_key() -> None:
    registry = AdapterRegistry()
    registry.register("a", "127.0.0.1:1", ["echo"], capacity=10)
    registry.register("b", "127.0.0.1:2", ["echo"], capacity=10)
    picked = [(await registry.acquire("echo")).instance_id for _ in range(4)]
    assert picked == ["a", "b", "a", "b"]


async def test_acquire_keeps_each_instance_within_its_capacity() -> None:
    registry = AdapterRegistry()
    small = registry.register("small", "127.0.0.1:1", ["echo"], capacity=1)
    big = registry.register("big", "127.0.0.1:2", ["echo"], capacity=3)
    got = [await registry.acquire("echo") for _ in range(4)]
    assert sorted(i.instance_id for i in got) == ["big", "big", "big", "small"]
    assert (small.in_flight, big.in_flight) == (1, 3)


async def test_acquire_queues_in_arrival_order_when_every_instance_is_full() -> None:
    registry = AdapterRegistry()
    only = registry.register("only", "127.0.0.1:1", ["echo"], capacity=1)
    await registry.acquire("echo")
    order: list[int] = []

    async def wait(n: int) -> None:
        instance = await registry.acquire("echo")
        order.append(n)
        registry.release(instance)

    waiters = [asyncio.create_task(wait(n)) for n in range(5)]
    await asyncio.sleep(0)
    assert registry.queued == 5
    registry.release(only)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2, 3, 4]
    assert only.in_flight == 0


async def test_a_full_key_does_not_block_waiters_of_another_key() -> None:
    registry = AdapterRegistry()
    registry.register("e", "127.0.0.1:1", ["echo"], capacity=1)
    registry.register("u", "127.0.0.1:2", ["upper"], capacity=1)
    await registry.acquire("echo")
    blocked = asyncio.create_task(registry.acquire("echo"))
    await asyncio.sleep(0)
    upper = await asyncio.wait_for(registry.acquire("upper"), 1)
    assert upper.instance_id == "u"
    blocked.cancel()


async def test_acquire_unknown_key_raises_naming_it_and_the_known_keys() -> None:
    registry = AdapterRegistry()
    registry.register("a", "127.0.0.1:1", ["echo", "upper"], capacity=1)
    with pytest.raises(AdapterNotFoundError) as caught:
        await registry.acquire("ecoh")
    assert str(caught.value) == (
        "no adapter is registered for agent key 'ecoh' (registered: 'echo', 'upper')"
    )


async def test_unhealthy_instance_leaves_rotation_until_its_heartbeat() -> None:
    registry = AdapterRegistry()
    a = registry.register("a", "127.0.0.1:1", ["echo"], capacity=5)
    registry.register("b", "127.0.0.1:2", ["echo"], capacity=5)
    registry.mark_unhealthy(a, "connection refused")
    picked = {(await registry.acquire("echo")).instance_id for _ in range(4)}
    assert picked == {"b"}
    registry.heartbeat("a")
    picked = {(await registry.acquire("echo")).instance_id for _ in range(4)}
    assert picked == {"a", "b"}


async def test_no_healthy_instance_raises_no_healthy_adapter() -> None:
    registry = AdapterRegistry()
    a = registry.register("a", "127.0.0.1:1", ["echo"], capacity=5)
    registry.mark_unhealthy(a, "connection refused")
    with pytest.raises(NoHealthyAdapterError, match=r"127\.0\.0\.1:1: connection refused"):
        await registry.acquire("echo")


async def test_waiters_fail_when_the_last_instance_of_their_key_goes_away() -> None:
    registry = AdapterRegistry()
    registry.register("a", "127.0.0.1:1", ["echo"], capacity=1)
    await registry.acquire("echo")
    waiter = asyncio.create_task(registry.acquire("echo"))
    await asyncio.sleep(0)
    registry.deregister("a")
    with pytest.raises(AdapterNotFoundError):
        await waiter


async def test_leases_expire_without_heartbeats_but_static_instances_stay() -> None:
    clock = FakeClock()
    registry = AdapterRegistry(lease_seconds=10, clock=clock)
    registry.register("dyn", "127.0.0.1:1", ["echo"], capacity=1)
    registry.register("static", "127.0.0.1:2", ["upper"], capacity=1, static=True)
    clock.now += 9
    assert registry.heartbeat("dyn") is not None
    clock.now += 9
    assert {i.instance_id for i in registry.instances()} == {"dyn", "static"}
    clock.now += 2
    assert {i.instance_id for i in registry.instances()} == {"static"}
    assert registry.heartbeat("dyn") is None  # expired: the adapter must register again
    assert not registry.serves("echo")


async def test_re_registering_keeps_the_in_flight_count() -> None:
    registry = AdapterRegistry()
    registry.register("a", "127.0.0.1:1", ["echo"], capacity=2)
    await registry.acquire("echo")
    again = registry.register("a", "127.0.0.1:1", ["echo", "upper"], capacity=2)
    assert again.in_flight == 1
    assert registry.serves("upper")


async def test_re_registering_while_calls_are_in_flight_gives_their_slots_back() -> None:
    registry = AdapterRegistry()
    registry.register("a", "127.0.0.1:1", ["echo"], capacity=2)
    held = [await registry.acquire("echo"), await registry.acquire("echo")]
    registry.register("a", "127.0.0.1:1", ["echo"], capacity=2)  # say, after a lost lease
    for instance in held:
        registry.release(instance)  # the calls in flight finish after the re-registration
    assert [i.in_flight for i in registry.instances("echo")] == [0]
    again = [await asyncio.wait_for(registry.acquire("echo"), 1) for _ in range(2)]
    assert {i.instance_id for i in again} == {"a"}


async def test_cancelled_waiter_gives_up_its_place() -> None:
    registry = AdapterRegistry()
    only = registry.register("only", "127.0.0.1:1", ["echo"], capacity=1)
    await registry.acquire("echo")
    waiter = asyncio.create_task(registry.acquire("echo"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    registry.release(only)
    assert registry.queued == 0
    assert only.in_flight == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"agent_keys": []}, "at least one non-empty agent key"),
        ({"capacity": 0}, "capacity must be at least 1, got 0"),
        ({"address": ""}, "must be non-empty"),
    ],
)
def test_register_rejects_bad_registrations(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "instance_id": "a",
        "address": "127.0.0.1:1",
        "agent_keys": ["echo"],
        "capacity": 1,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        AdapterRegistry().register(**args)  # type: ignore[arg-type]
