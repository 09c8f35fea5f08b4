"""Two dispatcher processes sharing one store service: the adapter registry lives in the store.

An adapter registered through one replica is routed by the other, still after the first one
is killed; an adapter's declared capacity holds over both replicas together.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from dagwire.models import Artifact, TaskNode
from dagwire.rpc.dispatcher_client import RemoteDispatcher
from dagwire.sdk import AdapterServer
from dagwire.settings import AdapterSettings
from tests.stack import Proc, free_address, start_all, start_toolbox, until, wait_adapters


@dataclass
class Replicas:
    store: Proc
    a: Proc
    b: Proc
    extra: list[Proc] = field(default_factory=list)

    @property
    def procs(self) -> list[Proc]:
        return [self.store, self.a, self.b, *self.extra]


def _dispatcher(tmp: Path, name: str, store_addr: str) -> Proc:
    address = free_address()
    args = ["dagwire_services.dispatcher", "--listen-addr", address, "--store-addr", store_addr]
    return Proc(name, args, address, tmp / f"{name}.log")


@pytest.fixture(params=["embedded", "ferretdb"])
async def replicas(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Replicas]:
    """A store service (its registry in SQLite, or in FerretDB) and two dispatchers on it."""
    store_addr = free_address()
    flags = ["--data-dir", str(tmp_path / "d")]
    if request.param == "ferretdb":
        uri: str = request.getfixturevalue("mongodb_uri")
        database: str = request.getfixturevalue("mongodb_database_name")
        parts = urlsplit(uri)
        flags += ["--mongodb-uri", urlunsplit(parts._replace(path="/" + database))]
    store = Proc(
        "store",
        ["dagwire_services.store", "--listen-addr", store_addr, *flags],
        store_addr,
        tmp_path / "store.log",
    )
    stack = Replicas(
        store,
        _dispatcher(tmp_path, "dispatcher-a", store_addr),
        _dispatcher(tmp_path, "dispatcher-b", store_addr),
    )
    try:
        await start_all(*stack.procs)
        yield stack
    finally:
        for proc in reversed(stack.procs):
            proc.stop()


def _task(node_id: str, agent: str, **params: object) -> TaskNode:
    return TaskNode(id=node_id, agent=agent, params=params, run_id="run-shared")


async def test_an_adapter_registered_through_one_replica_is_reached_through_the_other(
    replicas: Replicas, tmp_path: Path
) -> None:
    toolbox = await start_toolbox(tmp_path, replicas.a.address, replicas.store.address)
    b = RemoteDispatcher(replicas.b.address)
    try:
        await wait_adapters(replicas.b.address, {toolbox.address})
        out = await b.dispatch(_task("greet", "echo", text="through b"), [], "")
        assert [a.content for a in out] == [b"through b"]

        replicas.a.stop(signal.SIGKILL)
        out = await b.dispatch(_task("again", "echo", text="a is gone"), [], "")
        assert [a.content for a in out] == [b"a is gone"]
        listed = await b.list_adapters()
        assert [(i.address, i.healthy) for i in listed] == [(toolbox.address, True)]
        assert "echo" in listed[0].agents

        # a replica started after A's death finds the registration in the store
        c_proc = _dispatcher(tmp_path, "dispatcher-c", replicas.store.address)
        await start_all(c_proc)
        replicas.extra.append(c_proc)
        await wait_adapters(c_proc.address, {toolbox.address})
        c = RemoteDispatcher(c_proc.address)
        try:
            out = await c.dispatch(_task("late", "echo", text="through c"), [], "")
            assert [a.content for a in out] == [b"through c"]
        finally:
            await c.aclose()
    finally:
        await b.aclose()
        toolbox.stop()


class CountingSleep:
    """Sleeps a little per call and remembers the most calls it ever had at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.calls = 0

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        self.running += 1
        self.calls += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.2)
        finally:
            self.running -= 1
        return [Artifact(name="out", content=task.id.encode())]


async def test_calls_in_flight_over_both_replicas_stay_within_the_adapters_capacity(
    replicas: Replicas,
) -> None:
    agent = CountingSleep()
    settings = AdapterSettings(
        listen_addr="127.0.0.1:0",
        dispatcher_addr=replicas.a.address,
        store_addr=replicas.store.address,
    )
    server = AdapterServer({"slow": agent}, settings=settings, capacity=3)
    await server.start()
    a, b = RemoteDispatcher(replicas.a.address), RemoteDispatcher(replicas.b.address)
    try:
        await wait_adapters(replicas.b.address, {server.address})
        for dispatcher in (a, b):  # each replica has its share once both agree on the members
            await until(partial(_answers, dispatcher), within=20)
        agent.most = 0
        calls = [
            dispatcher.dispatch(_task(f"t{i}", "slow"), [], "")
            for i in range(12)
            for dispatcher in (a, b)
        ]
        outputs = await asyncio.gather(*calls)
        assert len(outputs) == 24
        assert all(len(o) == 1 for o in outputs)
        assert 1 <= agent.most <= 3
    finally:
        await a.aclose()
        await b.aclose()
        await server.stop(grace=1)


async def _answers(dispatcher: RemoteDispatcher) -> bool:
    out = await dispatcher.dispatch(_task("probe", "slow"), [], "")
    return len(out) == 1
