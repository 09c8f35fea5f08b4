"""The adapter SDK over real gRPC on loopback: error mapping, params, deadlines, big outputs."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from dagwire.errors import (
    AttemptTimeoutError,
    NonRetryableError,
    ResourceExhaustedError,
)
from dagwire.models import Artifact, TaskNode
from dagwire.rpc.adapter_client import AdapterCallError, AdapterClient, input_to_proto
from dagwire.rpc.serve import RunningServer, start_server
from dagwire.rpc.status import RemoteError
from dagwire.rpc.store_client import RemoteArtifactStore
from dagwire.sdk import AdapterServer, StreamedArtifact, advertised_address
from dagwire.settings import AdapterSettings
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore
from dagwire.toolbox import EchoAgent
from dagwire.v1.adapter_service_pb2 import ExecuteRequest
from dagwire.v1.adapter_service_pb2_grpc import AgentAdapterServiceStub
from dagwire_services.store.servicer import store_services

MIB = 1 << 20


class Recorder:
    """Records what `execute` saw; behaves as the test says."""

    def __init__(self, behaviour: Any = None) -> None:
        self.behaviour = behaviour
        self.tasks: list[TaskNode] = []
        self.inputs: list[list[Artifact]] = []
        self.trace_ids: list[str] = []
        self.cancelled = asyncio.Event()

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> Sequence[Artifact | StreamedArtifact]:
        self.tasks.append(task)
        self.inputs.append(input_artifacts)
        self.trace_ids.append(trace_id)
        if isinstance(self.behaviour, BaseException):
            raise self.behaviour
        if callable(self.behaviour):
            try:
                result: Sequence[Artifact | StreamedArtifact] = await self.behaviour(task)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return result
        return [Artifact(name="out", content=b"ok", media_type="text/plain")]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(
        "127.0.0.1:0",
        store_services(
            LocalArtifactStore(tmp_path / "artifacts"), SqliteExecutionStore(tmp_path / "x.db")
        ),
    )
    yield running
    await running.stop(None)


def _settings(store_port: int = 1) -> AdapterSettings:
    return AdapterSettings(listen_addr="127.0.0.1:0", store_addr=f"127.0.0.1:{store_port}")


async def _serve(agent: Any, **options: Any) -> tuple[AdapterServer, AdapterClient]:
    options.setdefault("settings", _settings())
    server = AdapterServer({"x": agent}, register=False, **options)
    await server.start()
    return server, AdapterClient(f"127.0.0.1:{server.port}")


@pytest.fixture
async def serving() -> AsyncIterator[Any]:
    opened: list[tuple[AdapterServer, AdapterClient]] = []

    async def serve(agent: Any, **options: Any) -> AdapterClient:
        opened.append(await _serve(agent, **options))
        return opened[-1][1]

    yield serve
    for server, client in opened:
        await client.aclose()
        await server.stop(None)


def _task(params: Any = None, *, timeout: float | None = None, attempt: int = 1) -> TaskNode:
    return TaskNode(id="n1", agent="x", params=params, timeout=timeout, attempt=attempt)


async def test_sdk_non_retryable_error_comes_back_as_non_retryable_error(serving: Any) -> None:
    client = await serving(Recorder(NonRetryableError("bad params: size")))
    with pytest.raises(NonRetryableError, match="bad params: size"):
        await client.execute(_task(), [], "t1")


async def test_sdk_non_retryable_error_is_failed_precondition_on_the_wire(serving: Any) -> None:
    client = await serving(Recorder(NonRetryableError("never")))
    request = _execute_request()
    with pytest.raises(AdapterCallError) as caught:
        await client.call(request, time_limit=5)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_sdk_resource_exhausted_keeps_its_retry_delay(serving: Any) -> None:
    client = await serving(Recorder(ResourceExhaustedError("busy", retry_after=1.5)))
    with pytest.raises(ResourceExhaustedError) as caught:
        await client.execute(_task(), [], "t1")
    assert caught.value.retry_after == pytest.approx(1.5)


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), ValueError("disk on fire")])
async def test_sdk_any_other_exception_is_unknown_with_its_message_and_retryable(
    serving: Any, exc: Exception
) -> None:
    client = await serving(Recorder(exc))
    with pytest.raises(RemoteError) as caught:
        await client.execute(_task(), [], "t1")
    assert caught.value.code == grpc.StatusCode.UNKNOWN
    assert str(caught.value) == "disk on fire"
    assert caught.value.retryable
    assert not isinstance(caught.value, NonRetryableError)


async def test_sdk_params_keep_integers_as_integers(serving: Any) -> None:
    agent = Recorder()
    client = await serving(agent)
    params = {"n": 0, "big": 2**53 + 1, "f": 1.5, "nested": [1, {"k": 2}], "s": "x"}
    await client.execute(_task(params, attempt=3), [], "t1")
    seen = agent.tasks[0]
    assert seen.params == params
    assert type(seen.params["n"]) is int and type(seen.params["nested"][1]["k"]) is int
    assert (seen.id, seen.agent, seen.attempt) == ("n1", "x", 3)
    assert agent.trace_ids == ["t1"]


async def test_sdk_agent_sees_the_attempt_as_an_explicit_value(serving: Any) -> None:
    agent = Recorder()
    client = await serving(agent)
    task = dataclasses.replace(_task(timeout=60, attempt=2), run_id="run-7")
    before = datetime.now(UTC)
    await client.execute(task, [], "t9")
    seen = agent.tasks[0]
    assert (seen.run_id, seen.id, seen.attempt) == ("run-7", "n1", 2)
    assert seen.idempotency_key == "run-7/n1/2"  # the same key the dispatcher sent
    assert seen.deadline is not None
    assert (
        before + timedelta(seconds=50) < seen.deadline <= datetime.now(UTC) + timedelta(seconds=61)
    )
    await client.execute(_task(), [], "t9")
    assert agent.tasks[1].deadline is None  # no timeout, no deadline


async def test_sdk_deadline_cancels_execute(serving: Any) -> None:
    async def slow(task: TaskNode) -> list[Artifact]:
        await asyncio.sleep(30)
        return []

    agent = Recorder(slow)
    client = await serving(agent)
    with pytest.raises(AttemptTimeoutError):
        await client.execute(_task(timeout=0.3), [], "t1")
    await asyncio.wait_for(agent.cancelled.wait(), 5)


async def test_sdk_unknown_agent_key_is_non_retryable_naming_it(serving: Any) -> None:
    client = await serving(Recorder())
    with pytest.raises(NonRetryableError, match="'nope'"):
        await client.execute(TaskNode(id="n", agent="nope"), [], "t")


async def test_sdk_describe_declares_agent_keys_and_capacity(serving: Any) -> None:
    client = await serving(Recorder(), capacity=7, version="1.2")
    described = await client.describe()
    assert (list(described.agents), described.capacity, described.version) == (["x"], 7, "1.2")
    assert described.language == "python"


async def test_sdk_small_output_is_inline(serving: Any) -> None:
    client = await serving(EchoAgent())
    [out] = await client.execute(TaskNode(id="n", agent="x", params={"text": "hi"}), [], "t")
    assert (out.content, out.media_type, out.artifact_id) == (b"hi", "text/plain", None)


async def test_sdk_large_output_goes_to_the_store_by_reference(
    serving: Any, store: RunningServer
) -> None:
    content = bytes(range(256)) * (MIB // 256 * 2)  # 2 MiB

    async def big(task: TaskNode) -> list[Artifact]:
        return [Artifact(name="big.bin", content=content, metadata={"k": "v"})]

    client = await serving(Recorder(big), settings=_settings(store.port))
    [out] = await client.execute(_task(), [], "t")
    assert out.content is None and out.artifact_id
    assert (out.name, out.size, out.metadata) == ("big.bin", len(content), {"k": "v"})
    assert out.sha256 == hashlib.sha256(content).hexdigest()
    remote = RemoteArtifactStore(f"127.0.0.1:{store.port}")
    try:
        assert (await remote.load(out.artifact_id)).content == content
    finally:
        await remote.aclose()


async def test_sdk_streamed_artifact_from_a_plain_iterable_is_stored_by_reference(
    serving: Any, store: RunningServer
) -> None:
    chunks = [b"a" * MIB, b"b" * 10]

    async def streamed(task: TaskNode) -> list[StreamedArtifact]:
        return [StreamedArtifact("s", iter(chunks), media_type="text/plain")]

    client = await serving(Recorder(streamed), settings=_settings(store.port))
    [out] = await client.execute(_task(), [], "t")
    assert out.content is None and out.artifact_id
    assert (out.size, out.media_type) == (MIB + 10, "text/plain")
    assert out.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()


async def test_sdk_input_by_reference_reaches_execute_with_its_content(
    serving: Any, store: RunningServer
) -> None:
    remote = RemoteArtifactStore(f"127.0.0.1:{store.port}")
    try:
        stored = await remote.store(Artifact(name="in", content=b"referenced", run_id="r"))
    finally:
        await remote.aclose()
    agent = Recorder()
    client = await serving(agent, settings=_settings(store.port))
    reference = Artifact(name="in", artifact_id=stored.artifact_id)
    inline = Artifact(name="in2", content=b"inline")
    await client.execute(_task(), [reference, inline], "t")
    assert [a.content for a in agent.inputs[0]] == [b"referenced", b"inline"]


@pytest.mark.parametrize(
    ("listen", "advertise", "expected_prefix"),
    [("127.0.0.1:0", None, "127.0.0.1:"), ("127.0.0.1:0", "adapter-1:7000", "adapter-1:7000")],
)
def test_advertised_address_uses_the_bound_port_or_the_advertise_setting(
    listen: str, advertise: str | None, expected_prefix: str
) -> None:
    address = advertised_address(listen, 4321, advertise)
    assert address.startswith(expected_prefix)
    if advertise is None:
        assert address.endswith(":4321")


def test_advertised_address_of_a_wildcard_listen_address_is_never_the_wildcard() -> None:
    address = advertised_address("0.0.0.0:0", 4321)
    assert not address.startswith("0.0.0.0") and address.endswith(":4321")


def _execute_request() -> Any:
    from dagwire.v1 import adapter_service_pb2

    return adapter_service_pb2.ExecuteRequest(agent="x", params_json="null", node_id="n")


async def test_sdk_input_referencing_another_store_is_refused_and_that_store_never_dialed(
    serving: Any, store: RunningServer, tmp_path: Path
) -> None:
    # The caller names a store of its own choosing in the reference: the adapter must fetch
    # only from the store it is configured with, never dial the caller's address.
    other = await start_server(
        "127.0.0.1:0",
        store_services(
            LocalArtifactStore(tmp_path / "other"), SqliteExecutionStore(tmp_path / "other.db")
        ),
    )
    try:
        remote = RemoteArtifactStore(f"127.0.0.1:{other.port}")
        try:
            planted = await remote.store(Artifact(name="in", content=b"forged", run_id="r"))
        finally:
            await remote.aclose()
        agent = Recorder()
        server, client = await _serve(agent, settings=_settings(store.port))
        try:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            stub = AgentAdapterServiceStub(channel)
            reference = input_to_proto(
                Artifact(name="in", artifact_id=planted.artifact_id),
                store_address=f"127.0.0.1:{other.port}",
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Execute(
                    ExecuteRequest(agent="x", node_id="n1", attempt=1, input_artifacts=[reference]),
                    timeout=10,
                )
            await channel.close()
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            details = refused.value.details() or ""
            assert "input_artifacts[0].reference.store_address" in details
            assert f"127.0.0.1:{other.port}" in details and f"127.0.0.1:{store.port}" in details
            assert agent.tasks == []
            assert f"127.0.0.1:{other.port}" not in server.servicer._stores
        finally:
            await client.aclose()
            await server.stop(None)
    finally:
        await other.stop(None)


async def test_sdk_input_referencing_its_own_store_by_address_is_fetched(
    serving: Any, store: RunningServer
) -> None:
    remote = RemoteArtifactStore(f"127.0.0.1:{store.port}")
    try:
        stored = await remote.store(Artifact(name="in", content=b"mine", run_id="r"))
    finally:
        await remote.aclose()
    agent = Recorder()
    server, client = await _serve(agent, settings=_settings(store.port))
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        stub = AgentAdapterServiceStub(channel)
        reference = input_to_proto(
            Artifact(name="in", artifact_id=stored.artifact_id),
            store_address=f"127.0.0.1:{store.port}",
        )
        await stub.Execute(
            ExecuteRequest(agent="x", node_id="n1", attempt=1, input_artifacts=[reference]),
            timeout=10,
        )
        await channel.close()
        assert [a.content for a in agent.inputs[0]] == [b"mine"]
    finally:
        await client.aclose()
        await server.stop(None)
