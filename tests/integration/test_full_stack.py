"""The whole service stack as real processes, and what happens when parts of it break.

Store, dispatcher, toolbox adapter(s) and orchestrator each run as their own process on free
loopback ports; every scenario runs on embedded storage (SQLite + local files) and on
FerretDB + MinIO. Scenarios the orchestrator service's own tests already cover (retries,
timeouts, fail-fast, cancellation, a store restart within the retry window) are not repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from dagwire.errors import StoreUnavailableError
from dagwire.models import RunStatus, TaskStatus
from dagwire.rpc.orchestrator_client import OrchestratorClient
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from dagwire.runtime import RunEvent, RunEventKind
from dagwire.v1 import store_service_pb2, store_service_pb2_grpc
from tests.servers import S3Endpoint
from tests.stack import (
    HELLO,
    Proc,
    collect_events,
    dispatcher_proc,
    first_event,
    free_address,
    list_adapters,
    orchestrator_proc,
    start_all,
    start_toolbox,
    started,
    toolbox_proc,
    until,
    wait_adapters,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
log = logging.getLogger(__name__)

BACKENDS = ("embedded", "ferretdb-minio")
GARBAGE_ADAPTER = Path(__file__).parent / "adapters" / "garbage_adapter.py"
BLOB_SIZE = 2_500_000  # above the 1 MiB inline limit: streamed to the store, passed by reference

SEED = (
    HELLO
    + f"""\
  - id: big
    agent: blob
    params: {{size: {BLOB_SIZE}, seed: 7}}
  - id: loud
    agent: upper
    depends_on: [big]
"""
)


def _spec(name: str, *tasks: dict[str, Any], **top: Any) -> str:
    return json.dumps({"name": name, "tasks": list(tasks), **top})


def _blob(size: int, seed: int) -> bytes:
    """The toolbox `blob` agent's bytes (docs/contracts.md §8)."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _executed(proc: Proc, run_id: str) -> list[tuple[str, int]]:
    """(node_id, attempt) of every call a debug-logging adapter process began for `run_id`."""
    return [
        (line["node_id"], int(line["attempt"]))
        for line in proc.log_lines()
        if line.get("message", "").startswith("executing") and line.get("run_id") == run_id
    ]


# ---------------------------------------------------------------------- the stack


@dataclass
class FullStack:
    """Store, dispatcher, adapters and orchestrator processes, and clients of them."""

    tmp: Path
    store: Proc
    dispatcher: Proc
    toolboxes: list[Proc]
    orchestrator: Proc
    extra: list[Proc] = field(default_factory=list)
    clients: list[Any] = field(default_factory=list)

    @property
    def procs(self) -> list[Proc]:
        return [self.store, self.dispatcher, *self.toolboxes, *self.extra, self.orchestrator]

    def client(self) -> OrchestratorClient:
        client = OrchestratorClient(self.orchestrator.address, reconnect_seconds=5)
        self.clients.append(client)
        return client

    def executions(self) -> RemoteExecutionStore:
        store = RemoteExecutionStore(self.store.address)
        self.clients.append(store)
        return store

    def artifacts(self) -> RemoteArtifactStore:
        store = RemoteArtifactStore(self.store.address)
        self.clients.append(store)
        return store

    async def close_clients(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.aclose()
        self.clients.clear()

    async def close(self) -> None:
        await self.close_clients()
        for proc in reversed(self.procs):
            proc.stop()


def _mongodb_uri_with_database(uri: str, database: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@pytest.fixture(scope="module", params=BACKENDS)
def storage(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The store process's storage flags and secret environment, per backend; a database
    and bucket of this module's own on FerretDB + MinIO, removed afterwards."""
    flags = ["--data-dir", str(tmp_path_factory.mktemp("data"))]
    if request.param == "embedded":
        yield flags, {}
        return
    uri: str = request.getfixturevalue("mongodb_uri")
    s3: S3Endpoint = request.getfixturevalue("s3_endpoint")
    suffix = uuid.uuid4().hex[:10]
    database = f"dagwire_test_full_stack_{suffix}"
    bucket = f"{s3.bucket_prefix}-full-stack-{suffix}"[:63]
    flags += [
        "--mongodb-uri",
        _mongodb_uri_with_database(uri, database),
        "--s3-endpoint",
        s3.endpoint,
        "--s3-access-key",
        s3.access_key,
        "--s3-bucket",
        bucket,
    ]
    yield flags, {"DAGWIRE_S3_SECRET_KEY": s3.secret_key}
    _drop_database(uri, database)
    _remove_bucket(s3, bucket)


def _drop_database(uri: str, database: str) -> None:
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(database)
    except Exception:  # cleanup only: never hide the tests' own outcome
        log.warning("could not drop database %s", database, exc_info=True)
    finally:
        client.close()


def _remove_bucket(s3: S3Endpoint, bucket: str) -> None:
    from minio import Minio

    client = Minio(
        endpoint=s3.host, access_key=s3.access_key, secret_key=s3.secret_key, secure=s3.secure
    )
    try:
        if client.bucket_exists(bucket_name=bucket):
            for obj in client.list_objects(bucket_name=bucket, recursive=True):
                if obj.object_name is not None:
                    client.remove_object(bucket_name=bucket, object_name=obj.object_name)
            client.remove_bucket(bucket_name=bucket)
    except Exception:  # cleanup only: never hide the tests' own outcome
        log.warning("could not remove bucket %s", bucket, exc_info=True)


async def _build(
    tmp: Path,
    storage: tuple[list[str], dict[str, str]],
    *,
    toolboxes: int = 1,
    garbage: bool = False,
    orchestrator_args: tuple[str, ...] = (),
) -> FullStack:
    """Start every process at once (peers retry until the others serve), wait until all serve
    and every adapter is registered."""
    flags, env = storage
    store_addr = free_address()
    store = Proc(
        "store",
        ["dagwire_services.store", "--listen-addr", store_addr, *flags],
        store_addr,
        tmp / "store.log",
        env=env,
    )
    extra: list[Proc] = []
    static = ""
    if garbage:
        address = free_address()
        extra.append(
            Proc(
                "garbage",
                [str(GARBAGE_ADAPTER), "--listen-addr", address],
                address,
                tmp / "garbage.log",
            )
        )
        static = f"bad_bytes={address},die_mid_call={address}"
    dispatcher = dispatcher_proc(tmp, static_adapters=static)
    tools = [
        toolbox_proc(tmp, dispatcher.address, store_addr, name=f"toolbox-{i}", debug=True)
        for i in range(toolboxes)
    ]
    orchestrator = orchestrator_proc(tmp, store_addr, dispatcher.address, *orchestrator_args)
    stack = FullStack(tmp, store, dispatcher, tools, orchestrator, extra)
    try:
        await start_all(*stack.procs)
        await until(lambda: _registered(stack), within=20)
    except BaseException:
        await stack.close()
        raise
    return stack


async def _registered(stack: FullStack) -> bool:
    from dagwire.v1 import dispatcher_service_pb2 as dpb

    healthy = {
        a.address
        for a in await list_adapters(stack.dispatcher.address)
        if a.health == dpb.ADAPTER_HEALTH_HEALTHY
    }
    return {p.address for p in stack.toolboxes + stack.extra} <= healthy


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_stack(
    storage: tuple[list[str], dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FullStack]:
    """One stack per backend for the whole module (process start-up dominates otherwise): a
    toolbox, the garbage adapter, and an orchestrator that gives up on the store after 1.5 s."""
    stack = await _build(
        tmp_path_factory.mktemp("stack"),
        storage,
        garbage=True,
        orchestrator_args=("--store-retry-seconds", "1.5"),
    )
    try:
        yield stack
    finally:
        await stack.close()


@pytest_asyncio.fixture(loop_scope="module")
async def full_stack(module_stack: FullStack) -> AsyncIterator[FullStack]:
    """The module's stack, its store serving (a test may have killed it); test clients closed
    after the test."""
    if module_stack.store.popen is None or module_stack.store.popen.poll() is not None:
        module_stack.store.start()
    await module_stack.store.wait_serving()
    try:
        yield module_stack
    finally:
        await module_stack.close_clients()


# ---------------------------------------------------------------------- data flow


async def test_seed_data_flow_end_to_end_with_a_large_artifact_passed_by_reference(
    full_stack: FullStack,
) -> None:
    client, artifacts = full_stack.client(), full_stack.artifacts()
    run_id = await client.start_run(SEED, user_vars={"topic": "wire"})
    events = await collect_events(client, run_id)
    summary = events[-1].summary
    assert summary is not None and summary.status is RunStatus.SUCCEEDED, summary
    run = await client.get_run(run_id)
    assert (summary.name, summary.trace_id) == ("hello", run.trace_id)  # on the wire

    blob = _blob(BLOB_SIZE, 7)
    expected = {
        "greet": b"hello wire",
        "shout": b"HELLO WIRE",
        "both": b"HELLO WIRE / hello wire",
        "big": blob,
        "loud": blob.decode("utf-8", errors="replace").upper().encode(),
    }
    listed = {a.node_id: a for a in await artifacts.list(run_id)}
    assert set(listed) == set(expected)
    for node_id, content in expected.items():
        (out,) = summary.nodes[node_id].artifacts
        assert out.artifact_id == listed[node_id].artifact_id
        assert (out.sha256, out.size) == (_sha(content), len(content)), node_id
        digest = hashlib.sha256()
        async for chunk in artifacts.open(out.artifact_id or ""):
            digest.update(chunk)
        assert digest.hexdigest() == _sha(content), f"{node_id}: bytes read back differ"

    records = {r.node_id: r for r in await full_stack.executions().list_records(run_id)}
    assert {n: r.status for n, r in records.items()} == dict.fromkeys(expected, "succeeded")
    assert records["loud"].input_artifact_ids == records["big"].output_artifact_ids
    assert {r.trace_id for r in records.values()} == {run.trace_id}

    finished = [e for e in events if e.kind is RunEventKind.TASK_FINISHED]
    assert all(e.duration is not None and e.duration >= 0 for e in finished)
    # every adapter call carried the run id and trace id, root tasks too
    calls = [line for line in full_stack.toolboxes[0].log_lines() if line.get("run_id") == run_id]
    assert {line["node_id"] for line in calls} == set(expected)
    assert {line["trace_id"] for line in calls} == {run.trace_id}


# ---------------------------------------------------------------------- adapters dying


async def test_two_toolboxes_share_load_and_one_killed_mid_run_fails_or_retries_its_tasks(
    full_stack: FullStack,
) -> None:
    stack = full_stack
    (survivor,) = stack.toolboxes
    victim = await start_toolbox(
        stack.tmp, stack.dispatcher.address, stack.store.address, name="victim", debug=True
    )
    stack.extra.append(victim)  # stopped with the stack
    await wait_adapters(stack.dispatcher.address, {victim.address})
    client = stack.client()
    retried = {"r1", "r2", "r3", "r4"}
    once = {"n1", "n2", "n3", "n4"}
    retry = {"max_attempts": 3, "initial_backoff": 0.05}
    sleepers = [
        {"id": i, "agent": "sleep", "params": {"seconds": 2, "text": i}}
        | ({"retry": retry} if i in retried else {})
        for i in ("r1", "r2", "n1", "n2", "r3", "r4", "n3", "n4")
    ]
    spec = _spec(
        "kill-one",
        *sleepers,
        {"id": "join", "agent": "concat", "depends_on": sorted(retried)},
        max_parallel=8,
    )
    run_id = await client.start_run(spec)
    async with asyncio.timeout(20):
        seen: set[str] = set()
        async for event in client.watch_run(run_id):
            if event.kind is RunEventKind.TASK_STARTED:
                seen.add(event.node_id)
            if len(seen) == 8:
                break
    await until(lambda: _in_flight(stack, victim.address, survivor.address), within=10)
    victim.stop(signal.SIGKILL)

    async with asyncio.timeout(60):
        events = await collect_events(client, run_id)
    summary = events[-1].summary
    assert summary is not None
    failed_attempts = [e for e in events if e.kind is RunEventKind.ATTEMPT_FAILED]
    hit = {e.node_id for e in failed_attempts}  # their first attempt died with the victim
    assert hit and all(e.attempt == 1 for e in failed_attempts), failed_attempts
    assert all(victim.address in (e.error or "") for e in failed_attempts), failed_attempts
    on_survivor = _executed(survivor, run_id)
    for node_id in retried | once:
        node = summary.nodes[node_id]
        if node_id not in hit:
            assert (node.status, node.attempts) == (TaskStatus.SUCCEEDED, 1), node_id
            assert (node_id, 1) in on_survivor or (node_id, 1) in _executed(victim, run_id)
        elif node_id in retried:  # retried on the survivor
            assert (node.status, node.attempts) == (TaskStatus.SUCCEEDED, 2), node_id
            assert (node_id, 2) in on_survivor
            assert (node_id, 1) not in on_survivor
        else:  # no retry policy: the attempt that died with the adapter was the only one
            assert (node.status, node.attempts) == (TaskStatus.FAILED, 1), node_id
            assert node.error, node_id
    assert summary.nodes["join"].status is TaskStatus.SUCCEEDED
    assert ("join", 1) in on_survivor  # later tasks go to the survivor
    expected_status = RunStatus.FAILED if hit & once else RunStatus.SUCCEEDED
    assert summary.status is expected_status

    after = await client.run_workflow(
        _spec("after-kill", *({"id": f"e{i}", "agent": "echo"} for i in range(4)))
    )
    assert after.status is RunStatus.SUCCEEDED
    assert all(n.attempts == 1 for n in after.nodes.values())  # the dead one costs no attempt


async def _in_flight(stack: FullStack, *addresses: str) -> bool:
    """True when each of the toolboxes at `addresses` has a call in flight."""
    load = {a.address: a.in_flight for a in await list_adapters(stack.dispatcher.address)}
    return all(load.get(address, 0) > 0 for address in addresses)


async def test_adapter_answering_garbage_or_dying_mid_call_fails_that_task_and_the_run_ends(
    full_stack: FullStack,
) -> None:
    client = full_stack.client()
    garbage = next(p for p in full_stack.extra if p.name == "garbage")
    retry = {"max_attempts": 2, "initial_backoff": 0.05}
    async with asyncio.timeout(30):
        bad = await client.run_workflow(
            _spec(
                "garbage",
                {"id": "bad", "agent": "bad_bytes", "retry": retry},
                {"id": "after_bad", "agent": "echo", "depends_on": ["bad"]},
                {"id": "fine", "agent": "echo", "params": {"text": "fine"}},
            )
        )
    assert bad.status is RunStatus.FAILED
    node = bad.nodes["bad"]
    assert (node.status, node.attempts) == (TaskStatus.FAILED, 2)
    assert "not a dagwire.v1.ExecuteResponse" in (node.error or ""), node.error
    assert garbage.address in (node.error or ""), node.error
    assert bad.nodes["after_bad"].status is TaskStatus.SKIPPED
    assert bad.nodes["fine"].status is TaskStatus.SUCCEEDED

    async with asyncio.timeout(30):
        died = await client.run_workflow(
            _spec(
                "dies",
                {"id": "dies", "agent": "die_mid_call", "retry": retry},
                {"id": "after_dies", "agent": "echo", "depends_on": ["dies"]},
                {"id": "fine", "agent": "echo", "params": {"text": "fine"}},
            )
        )
    assert garbage.popen is not None and garbage.popen.wait(10) == 3  # it got the call, died
    assert any(line["message"] == "executing die_mid_call" for line in garbage.log_lines())
    assert died.status is RunStatus.FAILED
    node = died.nodes["dies"]
    assert node.status is TaskStatus.FAILED and node.error, node
    assert "die_mid_call" in node.error, node.error  # the last attempt found no instance
    assert died.nodes["after_dies"].status is TaskStatus.SKIPPED
    assert died.nodes["fine"].status is TaskStatus.SUCCEEDED
    records = await full_stack.executions().list_records(died.run_id)
    first = next(r for r in records if (r.node_id, r.attempt) == ("dies", 1))
    assert first.status is TaskStatus.FAILED  # the call that died with it, naming where
    assert garbage.address in (first.error or ""), first.error


# ---------------------------------------------------------------------- the store going down


async def test_store_down_mid_run_is_unavailable_and_everything_recorded_before_is_kept(
    full_stack: FullStack,
) -> None:
    stack = full_stack
    client, executions, artifacts = stack.client(), stack.executions(), stack.artifacts()
    before = await client.run_workflow(SEED.split("  - id: big")[0], user_vars={"topic": "a"})
    assert before.status is RunStatus.SUCCEEDED
    quick = [{"id": f"q{i}", "agent": "echo", "params": {"text": f"q{i}"}} for i in range(4)]
    spec = _spec(
        "store-down",
        *quick,
        {"id": "slow", "agent": "sleep", "params": {"seconds": 1.0}},
        {"id": "end", "agent": "echo", "depends_on": ["slow", "q0"]},
    )
    run_id = await client.start_run(spec)
    done: list[RunEvent] = []
    async with asyncio.timeout(20):
        async for event in client.watch_run(run_id):
            if event.kind is RunEventKind.TASK_FINISHED:
                done.append(event)
            if len(done) == 4:
                break
    assert {e.node_id for e in done} == {"q0", "q1", "q2", "q3"}
    await first_event(client, run_id, started("slow"))
    stack.store.stop(signal.SIGKILL)

    async with grpc.aio.insecure_channel(stack.store.address) as chan:
        api = store_service_pb2_grpc.ExecutionStoreServiceStub(chan)
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await api.GetRunRecord(store_service_pb2.GetRunRecordRequest(run_id=run_id), timeout=5)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(StoreUnavailableError, match=stack.store.address):
        await executions.get_run(before.run_id)
    async with asyncio.timeout(30):
        events = await collect_events(client, run_id)  # the run still ends, from memory
    assert events[-1].run_status is RunStatus.FAILED
    assert "store unavailable" in (events[-1].error or "")

    stack.store.start()
    await stack.store.wait_serving()
    await until(lambda: _stored_status(executions, run_id, RunStatus.FAILED), within=30)
    stored = await executions.get_run(run_id)
    assert stored is not None and "store unavailable" in (stored.error or "")
    kept = {r.node_id: r for r in await executions.list_records(run_id)}
    for event in done:  # reported finished before the store went down: still recorded
        record = kept[event.node_id]
        assert record.status is TaskStatus.SUCCEEDED
        loaded = await artifacts.load(record.output_artifact_ids[0])
        assert loaded.content == event.node_id.encode()
        assert loaded.sha256 == event.artifacts[0].sha256 == _sha(loaded.content)
    earlier = await executions.list_records(before.run_id)
    assert [r.status for r in earlier] == [TaskStatus.SUCCEEDED] * 3
    both = await artifacts.load(before.nodes["both"].artifacts[0].artifact_id or "")
    assert both.content == b"HELLO A / hello a"
    assert (await client.get_run(before.run_id)).status is RunStatus.SUCCEEDED


async def _stored_status(executions: RemoteExecutionStore, run_id: str, status: RunStatus) -> bool:
    with contextlib.suppress(StoreUnavailableError):
        record = await executions.get_run(run_id)
        return record is not None and record.status == status
    return False
