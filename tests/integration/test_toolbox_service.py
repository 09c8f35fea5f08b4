"""The toolbox adapter over gRPC, byte for byte per docs/contracts.md §8, through a real dispatcher.

Store, dispatcher and toolbox run as separate processes on free loopback ports (the toolbox
binds port 0 and registers the port it got), as `dagwire up` runs them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from dagwire.errors import NonRetryableError
from dagwire.models import Artifact, TaskNode
from dagwire.rpc.dispatcher_client import RemoteDispatcher
from dagwire.rpc.status import RemoteError
from dagwire.rpc.store_client import RemoteArtifactStore
from tests.servers import REPO_ROOT, find_free_port, log_tail, stop_process, tcp_port_open

MIB = 1 << 20


@dataclass
class Stack:
    store_addr: str
    dispatcher_addr: str
    toolbox: subprocess.Popen[bytes]
    logs: Path


def _spawn(module: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=REPO_ROOT,
            env=os.environ | {"DAGWIRE_LOG_FORMAT": "json"} | env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while not tcp_port_open("127.0.0.1", port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.args!r} did not start:\n{log_tail(log)}")
        time.sleep(0.05)


def _registered(dispatcher_addr: str) -> list[Any]:
    async def listed() -> list[Any]:
        client = RemoteDispatcher(dispatcher_addr)
        try:
            return await client.list_adapters()
        finally:
            await client.aclose()

    return asyncio.run(listed())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("toolbox-stack")
    store_port, dispatcher_port = find_free_port(), find_free_port()
    store = _spawn(
        "dagwire_services.store",
        logs / "store.log",
        DAGWIRE_LISTEN_ADDR=f"127.0.0.1:{store_port}",
        DAGWIRE_DATA_DIR=str(logs / "data"),
    )
    dispatcher = _spawn(
        "dagwire_services.dispatcher",
        logs / "dispatcher.log",
        DAGWIRE_LISTEN_ADDR=f"127.0.0.1:{dispatcher_port}",
    )
    processes = [store, dispatcher]
    try:
        _wait_port(store_port, store, logs / "store.log")
        _wait_port(dispatcher_port, dispatcher, logs / "dispatcher.log")
        toolbox = _spawn(
            "dagwire_services.adapters.toolbox",
            logs / "toolbox.log",
            DAGWIRE_LISTEN_ADDR="127.0.0.1:0",
            DAGWIRE_DISPATCHER_ADDR=f"127.0.0.1:{dispatcher_port}",
            DAGWIRE_STORE_ADDR=f"127.0.0.1:{store_port}",
        )
        processes.append(toolbox)
        deadline = time.monotonic() + 30
        while not _registered(f"127.0.0.1:{dispatcher_port}"):
            if toolbox.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"toolbox did not register:\n{log_tail(logs / 'toolbox.log')}")
            time.sleep(0.1)
        yield Stack(f"127.0.0.1:{store_port}", f"127.0.0.1:{dispatcher_port}", toolbox, logs)
    finally:
        for process in reversed(processes):
            stop_process(process)


@pytest.fixture
async def dispatcher(stack: Stack) -> AsyncIterator[RemoteDispatcher]:
    client = RemoteDispatcher(stack.dispatcher_addr, store_address=stack.store_addr)
    yield client
    await client.aclose()


@pytest.fixture
async def store(stack: Stack) -> AsyncIterator[RemoteArtifactStore]:
    client = RemoteArtifactStore(stack.store_addr)
    yield client
    await client.aclose()


def task(agent: str, params: Any = None, *, attempt: int = 1) -> TaskNode:
    return TaskNode(id=f"{agent}-task", agent=agent, params=params, attempt=attempt)


def inputs(*contents: bytes) -> list[Artifact]:
    return [Artifact(name=f"in{n}", content=c) for n, c in enumerate(contents)]


def blob_digest(size: int, seed: int = 0) -> str:
    """sha256 of the blob, recomputed from docs/contracts.md §8's definition (not the toolbox's
    code)."""
    digest, produced, i = hashlib.sha256(), 0, 0
    while produced < size:
        piece = hashlib.sha256(f"{seed}:{i}".encode()).digest()[: size - produced]
        digest.update(piece)
        produced += len(piece)
        i += 1
    return digest.hexdigest()


async def one(dispatcher: RemoteDispatcher, node: TaskNode, given: list[Artifact]) -> Artifact:
    outputs = await dispatcher.dispatch(node, given, "trace-toolbox")
    assert len(outputs) == 1 and outputs[0].name == "out"
    return outputs[0]


# ---------------------------------------------------------------------- text agents


@pytest.mark.parametrize(
    ("agent", "params", "given", "expected"),
    [
        ("echo", {"text": "héllo"}, [], "héllo"),
        ("echo", None, [b"ab", b"cd"], "abcd"),
        ("echo", {"text": "param wins"}, [b"ignored"], "param wins"),
        ("upper", {"text": "shout"}, [], "SHOUT"),
        ("upper", None, [b"a", b"\xc3\xa9"], "AÉ"),
        ("concat", None, [b"x", b"y", b"z"], "xyz"),
        ("concat", {"sep": ", "}, [b"x", b"y", b"z"], "x, y, z"),
        ("echo", None, [b"ok\xff\xfe"], "ok\ufffd\ufffd"),
        ("sleep", {"seconds": 0.05, "text": "slept"}, [], "slept"),
        ("sleep", {"seconds": 0}, [b"in"], "in"),
        ("fail", {"times": 1}, [b"recovered"], "recovered"),  # attempt 2 > times
    ],
)
async def test_toolbox_text_agents_byte_for_byte(
    dispatcher: RemoteDispatcher, agent: str, params: Any, given: list[bytes], expected: str
) -> None:
    node = task(agent, params, attempt=2 if agent == "fail" else 1)
    out = await one(dispatcher, node, inputs(*given))
    assert out.content == expected.encode("utf-8")
    assert out.media_type == "text/plain"


async def test_toolbox_fail_fails_retryably_with_its_default_message(
    dispatcher: RemoteDispatcher,
) -> None:
    with pytest.raises(RemoteError) as caught:
        await dispatcher.dispatch(task("fail"), [], "t")
    assert caught.value.code == grpc.StatusCode.UNKNOWN
    assert str(caught.value) == "failed on purpose"


async def test_toolbox_fail_with_times_fails_attempts_up_to_k_then_echoes(
    dispatcher: RemoteDispatcher,
) -> None:
    params = {"times": 2, "message": "not yet", "text": "done"}
    for attempt in (1, 2):
        with pytest.raises(RemoteError, match="not yet"):
            await dispatcher.dispatch(task("fail", params, attempt=attempt), [], "t")
    out = await one(dispatcher, task("fail", params, attempt=3), [])
    assert out.content == b"done"


async def test_toolbox_sleep_sleeps_its_seconds(dispatcher: RemoteDispatcher) -> None:
    started = time.monotonic()
    await one(dispatcher, task("sleep", {"seconds": 0.4}), [])
    assert time.monotonic() - started >= 0.4


async def test_toolbox_input_by_reference_reaches_the_agent(
    dispatcher: RemoteDispatcher, store: RemoteArtifactStore
) -> None:
    big = b"r" * (2 * MIB)
    stored = await store.store(Artifact(name="big", content=big, run_id="run-ref"))
    out = await one(dispatcher, task("upper"), [stored])
    assert out.content is None and out.artifact_id  # 2 MiB output: by reference too
    assert (await store.load(out.artifact_id)).content == big.upper()


# ---------------------------------------------------------------------- blob


@pytest.mark.parametrize(("size", "seed"), [(0, 0), (1, 0), (33, 7), (MIB + 5, 3)])
async def test_toolbox_blob_is_the_definition_byte_for_byte(
    dispatcher: RemoteDispatcher, store: RemoteArtifactStore, size: int, seed: int
) -> None:
    out = await one(dispatcher, task("blob", {"size": size, "seed": seed}), [])
    assert out.media_type == "application/octet-stream"
    assert out.artifact_id and out.content is None
    assert (out.size, out.sha256) == (size, blob_digest(size, seed))
    loaded = await store.load(out.artifact_id)
    assert hashlib.sha256(loaded.content or b"").hexdigest() == blob_digest(size, seed)


async def test_toolbox_blob_of_64_mib_streams_through_the_store_with_bounded_memory(
    stack: Stack, dispatcher: RemoteDispatcher, store: RemoteArtifactStore
) -> None:
    size = 64 * MIB
    process = psutil.Process(stack.toolbox.pid)
    before = process.memory_info().rss
    peak = before
    call = asyncio.create_task(
        dispatcher.dispatch(task("blob", {"size": size, "seed": 42}), [], "t")
    )
    while not call.done():
        peak = max(peak, process.memory_info().rss)
        await asyncio.sleep(0.02)
    [out] = call.result()
    expected = blob_digest(size, 42)
    assert (out.size, out.sha256) == (size, expected)
    digest = hashlib.sha256()
    async for chunk in store.open(out.artifact_id or ""):
        digest.update(chunk)
    assert digest.hexdigest() == expected
    assert peak - before < 100 * MIB, f"toolbox RSS grew by {(peak - before) / MIB:.0f} MiB"


@pytest.mark.parametrize("params", [{"size": -1}, {"size": 4 * 1024**3 + 1}, {"size": "1"}])
async def test_toolbox_blob_with_a_bad_size_is_non_retryable(
    dispatcher: RemoteDispatcher, params: Any
) -> None:
    with pytest.raises(NonRetryableError, match=r"params\.size"):
        await dispatcher.dispatch(task("blob", params), [], "t")


# ---------------------------------------------------------------------- process


def test_toolbox_registers_its_bound_port_and_capacity_500(stack: Stack) -> None:
    [info] = _registered(stack.dispatcher_addr)
    assert info.capacity == 500
    assert set(info.agents) == {"echo", "upper", "concat", "fail", "sleep", "blob"}
    host, port = info.address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    connections = psutil.Process(stack.toolbox.pid).net_connections(kind="tcp")
    assert any(c.status == psutil.CONN_LISTEN and c.laddr.port == int(port) for c in connections)


def test_toolbox_sigterm_deregisters_and_exits_0(stack: Stack, tmp_path: Path) -> None:
    extra = _spawn(
        "dagwire_services.adapters.toolbox",
        tmp_path / "extra.log",
        DAGWIRE_LISTEN_ADDR="127.0.0.1:0",
        DAGWIRE_DISPATCHER_ADDR=stack.dispatcher_addr,
        DAGWIRE_STORE_ADDR=stack.store_addr,
    )
    try:
        deadline = time.monotonic() + 30
        while len(_registered(stack.dispatcher_addr)) < 2:
            assert time.monotonic() < deadline, log_tail(tmp_path / "extra.log")
            time.sleep(0.1)
        extra.send_signal(15)
        assert extra.wait(timeout=20) == 0
        assert len(_registered(stack.dispatcher_addr)) == 1
    finally:
        stop_process(extra)
