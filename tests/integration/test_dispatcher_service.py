"""The dispatcher service on loopback: registration, leases, routing, capacity, failures.

The dispatcher runs in the test's event loop (bound to 127.0.0.1:0); adapters are SDK servers
in-process, or toolbox processes when a test kills one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psutil
import pytest

from dagwire.errors import (
    AdapterNotFoundError,
    AttemptTimeoutError,
    NoHealthyAdapterError,
    NonRetryableError,
    NotFoundError,
)
from dagwire.models import Artifact, TaskNode
from dagwire.rpc.dispatcher_client import RemoteDispatcher
from dagwire.rpc.serve import RunningServer, start_server
from dagwire.rpc.status import InvalidArgumentError, RemoteError
from dagwire.sdk import AdapterServer, StreamedArtifact
from dagwire.settings import AdapterSettings, DispatcherSettings
from dagwire.v1 import dispatcher_service_pb2 as pb
from dagwire.v1 import dispatcher_service_pb2_grpc as pb_grpc
from dagwire_services.adapters.toolbox.servicer import toolbox_agents
from dagwire_services.dispatcher.main import build_pool
from dagwire_services.dispatcher.pool import AdapterPool
from dagwire_services.dispatcher.servicer import dispatcher_services
from tests.servers import REPO_ROOT, find_free_port, stop_process

# ---------------------------------------------------------------------- fixtures


class Dispatcher:
    """A dispatcher service in this test's loop, and a client of it."""

    def __init__(self, running: RunningServer, pool: AdapterPool) -> None:
        self.running = running
        self.pool = pool
        self.client = RemoteDispatcher(self.address)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def stop(self) -> None:
        await self.client.aclose()
        await self.running.stop(None)
        await self.pool.aclose()


async def start_dispatcher(**settings: Any) -> Dispatcher:
    pool = build_pool(DispatcherSettings(listen_addr="127.0.0.1:0", **settings))
    await pool.start()
    running = await start_server("127.0.0.1:0", dispatcher_services(pool))
    return Dispatcher(running, pool)


@pytest.fixture
async def dispatcher() -> AsyncIterator[Dispatcher]:
    service = await start_dispatcher(lease_seconds=3.0)
    yield service
    await service.stop()


@pytest.fixture
async def adapters(
    dispatcher: Dispatcher,
) -> AsyncIterator[Callable[..., Awaitable[AdapterServer]]]:
    """Starts SDK adapter servers that register with the dispatcher (stopped afterwards)."""
    started: list[AdapterServer] = []

    async def start(agents: Any = None, **options: Any) -> AdapterServer:
        settings = AdapterSettings(listen_addr="127.0.0.1:0", dispatcher_addr=dispatcher.address)
        server = AdapterServer(agents or toolbox_agents(), settings=settings, **options)
        await server.start()
        started.append(server)
        assert server.registration is not None
        await asyncio.wait_for(server.registration.registered.wait(), 10)
        return server

    yield start
    for server in started:
        await server.stop(None)


def echo(text: str = "hi", *, node: str = "n", timeout: float | None = None) -> TaskNode:
    return TaskNode(id=node, agent="echo", params={"text": text}, timeout=timeout)


class Gate:
    """An agent that records arrival order and concurrency, and sleeps `params.seconds`."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.running = 0
        self.most = 0

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> Sequence[Artifact | StreamedArtifact]:
        self.order.append(task.id)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(float(task.params.get("seconds", 0.05)))
        finally:
            self.running -= 1
        return [Artifact(name="out", content=task.id.encode())]


async def until(predicate: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- registration


async def test_register_heartbeat_list_and_deregister_over_the_wire(dispatcher: Dispatcher) -> None:
    client = dispatcher.client
    lease = await client.register_adapter("i-1", "127.0.0.1:7001", ["echo", "upper"], 4)
    assert lease.seconds == pytest.approx(3.0)
    renewed = await client.heartbeat("i-1")
    assert renewed.expires_at >= lease.expires_at
    [info] = await client.list_adapters()
    assert (info.instance_id, info.address, info.agents, info.capacity) == (
        "i-1",
        "127.0.0.1:7001",
        ("echo", "upper"),
        4,
    )
    assert info.healthy and info.in_flight == 0 and info.last_heartbeat is not None
    await client.deregister_adapter("i-1")
    await client.deregister_adapter("i-1")  # unknown ids are fine
    assert await client.list_adapters() == []
    with pytest.raises(NotFoundError, match="register again"):
        await client.heartbeat("i-1")


@pytest.mark.parametrize(
    ("address", "agents", "capacity", "field"),
    [
        ("0.0.0.0:7001", ["echo"], 1, "address"),
        ("[::]:7001", ["echo"], 1, "address"),
        ("127.0.0.1:0", ["echo"], 1, "address"),
        ("no-port", ["echo"], 1, "address"),
        ("127.0.0.1:7001", [], 1, "agents"),
        ("127.0.0.1:7001", [""], 1, "agents"),
        ("127.0.0.1:7001", ["echo"], 0, "capacity"),
    ],
)
async def test_register_adapter_refuses_an_invalid_field_naming_it(
    dispatcher: Dispatcher, address: str, agents: list[str], capacity: int, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await dispatcher.client.register_adapter("i-1", address, agents, capacity)
    assert caught.value.field == field
    assert field in str(caught.value)


async def test_a_lease_that_is_not_renewed_expires() -> None:
    service = await start_dispatcher(lease_seconds=0.3)
    try:
        await service.client.register_adapter("i-1", "127.0.0.1:7001", ["echo"], 1)
        await asyncio.sleep(0.5)
        assert await service.client.list_adapters() == []
        with pytest.raises(NotFoundError):
            await service.client.heartbeat("i-1")
    finally:
        await service.stop()


async def test_list_adapters_pages_and_filters_by_agent(dispatcher: Dispatcher) -> None:
    for n in range(5):
        await dispatcher.client.register_adapter(f"i-{n}", f"127.0.0.1:{7000 + n}", ["echo"], 1)
    await dispatcher.client.register_adapter("j", "127.0.0.1:7100", ["upper"], 1)
    async with grpc.aio.insecure_channel(dispatcher.address) as channel:
        stub = pb_grpc.DispatcherServiceStub(channel)
        first = await stub.ListAdapters(pb.ListAdaptersRequest(page_size=3, agent="echo"))
        second = await stub.ListAdapters(
            pb.ListAdaptersRequest(page_size=3, agent="echo", page_token=first.next_page_token)
        )
    ids = [a.instance_id for a in [*first.adapters, *second.adapters]]
    assert ids == [f"i-{n}" for n in range(5)]
    assert second.next_page_token == ""
    assert len(await dispatcher.client.list_adapters()) == 6


async def test_an_sdk_adapter_registers_and_deregisters_on_stop(
    dispatcher: Dispatcher, adapters: Any
) -> None:
    server = await adapters(capacity=500)
    [info] = await dispatcher.client.list_adapters()
    assert (info.address, info.capacity) == (f"127.0.0.1:{server.port}", 500)
    assert set(info.agents) == {"echo", "upper", "concat", "fail", "sleep", "blob"}
    await server.stop(None)
    assert await dispatcher.client.list_adapters() == []


async def test_an_adapter_re_registers_after_the_dispatcher_forgot_it() -> None:
    service = await start_dispatcher(lease_seconds=0.6)
    settings = AdapterSettings(listen_addr="127.0.0.1:0", dispatcher_addr=service.address)
    server = AdapterServer(toolbox_agents(), settings=settings)
    try:
        await server.start()

        async def listed() -> bool:
            return len(await service.client.list_adapters()) == 1

        await until(listed)
        await service.client.deregister_adapter(server.instance_id)  # forgotten
        await until(listed)  # the next heartbeat gets NOT_FOUND and registers again
    finally:
        await server.stop(None)
        await service.stop()


async def test_an_adapter_keeps_trying_while_the_dispatcher_is_down() -> None:
    port = find_free_port()
    settings = AdapterSettings(listen_addr="127.0.0.1:0", dispatcher_addr=f"127.0.0.1:{port}")
    server = AdapterServer(toolbox_agents(), settings=settings)
    await server.start()
    try:
        await asyncio.sleep(0.5)  # a few refused attempts, no crash
        pool = build_pool(DispatcherSettings(listen_addr="127.0.0.1:0"))
        running = await start_server(f"127.0.0.1:{port}", dispatcher_services(pool))
        try:
            assert server.registration is not None
            await asyncio.wait_for(server.registration.registered.wait(), 10)
            assert [i.instance_id for i in pool.registry.instances()] == [server.instance_id]
        finally:
            await running.stop(None)
            await pool.aclose()
    finally:
        await server.stop(None)


# ---------------------------------------------------------------------- routing


async def test_dispatch_round_robins_across_two_toolbox_instances(
    dispatcher: Dispatcher, adapters: Any
) -> None:
    a, b = await adapters(), await adapters()
    async with grpc.aio.insecure_channel(dispatcher.address) as channel:
        stub = pb_grpc.DispatcherServiceStub(channel)
        request = pb.DispatchRequest(agent="echo", params_json='{"text": "x"}', node_id="n")
        served = [(await stub.Dispatch(request)).instance_id for _ in range(6)]
    assert set(served) == {a.instance_id, b.instance_id}
    assert all(served[i] != served[i + 1] for i in range(5))


async def test_dispatch_returns_the_agents_output(dispatcher: Dispatcher, adapters: Any) -> None:
    await adapters()
    [out] = await dispatcher.client.dispatch(echo("hello"), [], "trace-1")
    assert (out.name, out.content, out.media_type) == ("out", b"hello", "text/plain")
    inputs = [Artifact(name="a", content=b"x"), Artifact(name="b", content=b"y")]
    [joined] = await dispatcher.client.dispatch(
        TaskNode(id="c", agent="concat", params={"sep": "-"}), inputs, "t"
    )
    assert joined.content == b"x-y"


async def test_capacity_is_respected_and_queued_calls_run_in_arrival_order(
    dispatcher: Dispatcher, adapters: Any
) -> None:
    gate = Gate()
    await adapters({"gate": gate}, capacity=1)
    calls = []
    for n in range(6):
        task = TaskNode(id=f"t{n}", agent="gate", params={"seconds": 0.05})
        calls.append(asyncio.create_task(dispatcher.client.dispatch(task, [], "t")))
        await asyncio.sleep(0.01)  # arrival order is the creation order
    results = await asyncio.gather(*calls)
    assert gate.most == 1
    assert gate.order == [f"t{n}" for n in range(6)]
    assert [r[0].content for r in results] == [f"t{n}".encode() for n in range(6)]


async def test_re_registering_an_instance_while_calls_are_in_flight_leaks_no_slot(
    dispatcher: Dispatcher, adapters: Any
) -> None:
    gate = Gate()
    server = await adapters({"gate": gate}, capacity=2)
    slow = [
        asyncio.create_task(
            dispatcher.client.dispatch(
                TaskNode(id=f"s{n}", agent="gate", params={"seconds": 0.5}), [], "t"
            )
        )
        for n in range(2)
    ]
    await until(lambda: _running(gate, 2))
    # the adapter registers again under its id (say, after its dispatcher lost it) mid-call
    await dispatcher.client.register_adapter(server.instance_id, server.address, ["gate"], 2)
    await asyncio.gather(*slow)
    listed = await dispatcher.client.list_adapters()
    assert [i.in_flight for i in listed] == [0]
    gate.most = 0
    again = [
        dispatcher.client.dispatch(
            TaskNode(id=f"a{n}", agent="gate", params={"seconds": 0.3}), [], "t"
        )
        for n in range(2)
    ]
    await asyncio.wait_for(asyncio.gather(*again), 10)
    assert gate.most == 2  # both slots are usable again


async def _running(gate: Gate, count: int) -> bool:
    return gate.running >= count


async def test_queue_time_does_not_count_against_the_attempt_timeout(
    dispatcher: Dispatcher, adapters: Any
) -> None:
    gate = Gate()
    await adapters({"gate": gate}, capacity=1)
    tasks = [
        TaskNode(id=f"t{n}", agent="gate", params={"seconds": 0.3}, timeout=0.6) for n in range(3)
    ]
    results = await asyncio.gather(*(dispatcher.client.dispatch(t, [], "t") for t in tasks))
    assert len(results) == 3  # the last one waited 0.6 s in the queue, then ran 0.3 s


async def test_an_attempt_past_its_timeout_is_attempt_timeout_error(
    dispatcher: Dispatcher, adapters: Any
) -> None:
    await adapters()
    task = TaskNode(id="slow", agent="sleep", params={"seconds": 5}, timeout=0.2, attempt=2)
    started = time.monotonic()
    with pytest.raises(AttemptTimeoutError) as caught:
        await dispatcher.client.dispatch(task, [], "t")
    assert time.monotonic() - started < 2
    assert (caught.value.node_id, caught.value.attempt) == ("slow", 2)


async def test_unknown_agent_key_is_adapter_not_found_naming_it(
    dispatcher: Dispatcher, adapters: Any
) -> None:
    await adapters()
    with pytest.raises(AdapterNotFoundError, match="'summarize'") as caught:
        await dispatcher.client.dispatch(TaskNode(id="n", agent="summarize"), [], "t")
    assert caught.value.agent_key == "summarize"


async def test_adapter_statuses_pass_through(dispatcher: Dispatcher, adapters: Any) -> None:
    await adapters()
    with pytest.raises(RemoteError) as failed:
        await dispatcher.client.dispatch(TaskNode(id="n", agent="fail"), [], "t")
    assert failed.value.code == grpc.StatusCode.UNKNOWN
    assert str(failed.value) == "failed on purpose"
    with pytest.raises(NonRetryableError, match=r"params\.size"):
        await dispatcher.client.dispatch(
            TaskNode(id="n", agent="blob", params={"size": -1}), [], "t"
        )


# ---------------------------------------------------------------------- failures


async def test_connection_refused_is_re_routed_without_failing_the_call(
    dispatcher: Dispatcher, adapters: Any
) -> None:
    dead = f"127.0.0.1:{find_free_port()}"
    await dispatcher.client.register_adapter("dead", dead, ["echo"], 10)
    live = await adapters()
    for n in range(4):
        [out] = await dispatcher.client.dispatch(echo(f"m{n}"), [], "t")
        assert out.content == f"m{n}".encode()
    health = {i.instance_id: i.healthy for i in await dispatcher.client.list_adapters()}
    assert health == {"dead": False, live.instance_id: True}


async def test_only_unreachable_instances_is_no_healthy_adapter_naming_the_address(
    dispatcher: Dispatcher,
) -> None:
    dead = f"127.0.0.1:{find_free_port()}"
    await dispatcher.client.register_adapter("dead", dead, ["echo"], 10)
    with pytest.raises(NoHealthyAdapterError, match=dead):
        await dispatcher.client.dispatch(echo(), [], "t")


async def test_a_non_grpc_server_at_the_address_fails_with_an_error_naming_it(
    dispatcher: Dispatcher,
) -> None:
    async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http1, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        await dispatcher.client.register_adapter("web", address, ["echo"], 10)
        with pytest.raises(NoHealthyAdapterError) as caught:
            await dispatcher.client.dispatch(echo(), [], "t")
        assert address in str(caught.value) and "http" in str(caught.value).lower()
    finally:
        server.close()


async def test_an_undecodable_execute_response_fails_the_attempt_naming_the_address(
    dispatcher: Dispatcher,
) -> None:
    async def garbage(request: bytes, context: Any) -> bytes:
        return b"\xff\xff\xff\xff not a protobuf"

    handler = grpc.method_handlers_generic_handler(
        "dagwire.v1.AgentAdapterService",
        {"Execute": grpc.unary_unary_rpc_method_handler(garbage)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await dispatcher.client.register_adapter("junk", f"127.0.0.1:{port}", ["echo"], 10)
        with pytest.raises(RemoteError) as caught:
            await dispatcher.client.dispatch(echo(), [], "t")
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert "ExecuteResponse" in str(caught.value)
    finally:
        await server.stop(None)


def spawn_toolbox(dispatcher_addr: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "DAGWIRE_LISTEN_ADDR": "127.0.0.1:0",
        "DAGWIRE_DISPATCHER_ADDR": dispatcher_addr,
        "DAGWIRE_LOG_FORMAT": "json",
    }
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dagwire_services.adapters.toolbox"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def test_a_killed_instance_fails_its_call_and_the_next_goes_to_the_survivor(
    dispatcher: Dispatcher, tmp_path: Path
) -> None:
    processes = [spawn_toolbox(dispatcher.address, tmp_path / f"toolbox{n}.log") for n in range(2)]
    try:

        async def both_registered() -> bool:
            return len(await dispatcher.client.list_adapters()) == 2

        await until(both_registered, 30)
        slow = asyncio.create_task(
            dispatcher.client.dispatch(
                TaskNode(id="slow", agent="sleep", params={"seconds": 30}), [], "t"
            )
        )

        async def busy() -> bool:
            return any(i.in_flight for i in await dispatcher.client.list_adapters())

        await until(busy)
        [victim] = [i for i in await dispatcher.client.list_adapters() if i.in_flight]
        port = int(victim.address.rsplit(":", 1)[1])
        pids = {p.pid: p for p in processes}
        owner = next(
            pid
            for pid in pids
            if any(c.laddr.port == port for c in psutil.Process(pid).net_connections())
        )
        os.kill(owner, signal.SIGKILL)
        with pytest.raises(RemoteError) as caught:
            await slow
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert victim.address in str(caught.value) and "during the call" in str(caught.value)
        for n in range(3):
            [out] = await dispatcher.client.dispatch(echo(f"after{n}"), [], "t")
            assert out.content == f"after{n}".encode()
    finally:
        for process in processes:
            stop_process(process)


async def test_static_adapters_from_settings_are_routed_and_probed(tmp_path: Path) -> None:
    adapter = AdapterServer(toolbox_agents(), capacity=500, register=False)
    await adapter.start()
    service = await start_dispatcher(static_adapters=f"echo=127.0.0.1:{adapter.port}")
    try:
        [info] = await service.client.list_adapters()
        assert (info.capacity, info.lease_expires_at, info.healthy) == (500, None, True)
        [out] = await service.client.dispatch(echo("static"), [], "t")
        assert out.content == b"static"
        await adapter.stop(None)
        with pytest.raises(NoHealthyAdapterError):
            await service.client.dispatch(echo(), [], "t")
        adapter = AdapterServer(
            toolbox_agents(),
            register=False,
            settings=AdapterSettings(listen_addr=info.address),
        )
        await adapter.start()

        async def back_in_rotation() -> bool:
            await service.pool.probe()  # what the periodic probe does
            return all(i.healthy for i in await service.client.list_adapters())

        await until(back_in_rotation)
        [out] = await service.client.dispatch(echo("back"), [], "t")
        assert out.content == b"back"
    finally:
        await adapter.stop(None)
        await service.stop()
