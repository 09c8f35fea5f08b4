"""The store service through a real gRPC channel on loopback: the store contract and hostile input.

The contract suite (`tests.store_contract`) runs against `RemoteArtifactStore` /
`RemoteExecutionStore` talking to a store service over embedded storage, and over FerretDB +
MinIO when those backends (`dagwire.stores.mongo`, `dagwire.stores.s3`) are installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psutil
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dagwire.errors import NotFoundError, StoreUnavailableError
from dagwire.models import Artifact, ExecutionRecord, TaskStatus, utc_now
from dagwire.rpc.serve import RunningServer, channel_options, start_server
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from dagwire.stores.base import ArtifactStore, ExecutionStore
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore
from dagwire.v1 import store_service_pb2 as pb
from dagwire.v1 import store_service_pb2_grpc as pb_grpc
from dagwire_services.store.servicer import store_services
from tests.servers import REPO_ROOT, S3Endpoint, find_free_port
from tests.store_contract import *  # noqa: F403  (the contract's test functions)

MIB = 1 << 20
BACKENDS = ("embedded", "ferretdb+minio")


def _backends_installed() -> bool:
    return all(
        importlib.util.find_spec(m) is not None
        for m in ("dagwire.stores.mongo", "dagwire.stores.s3")
    )


# ---------------------------------------------------------------------- fixtures


@dataclass
class StoreService:
    """A store service running in this test's event loop, and how to reach it."""

    running: RunningServer
    artifacts: ArtifactStore
    executions: ExecutionStore

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"


BackendFactory = Callable[[], tuple[ArtifactStore, ExecutionStore]]


@pytest.fixture(params=BACKENDS)
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    """Builds fresh backends: embedded under tmp_path, or FerretDB + MinIO (when installed)."""
    if request.param == "embedded":
        return lambda: (
            LocalArtifactStore(tmp_path / "artifacts"),
            SqliteExecutionStore(tmp_path / "executions.sqlite3"),
        )
    if not _backends_installed():
        pytest.skip("dagwire.stores.mongo / dagwire.stores.s3 are not there yet")
    uri: str = request.getfixturevalue("mongodb_uri")
    database: str = request.getfixturevalue("mongodb_database_name")
    s3: S3Endpoint = request.getfixturevalue("s3_endpoint")
    bucket: str = request.getfixturevalue("s3_bucket_name")
    from dagwire.stores.mongo import MongoExecutionStore  # type: ignore[import-not-found]
    from dagwire.stores.s3 import S3ArtifactStore  # type: ignore[import-not-found]

    return lambda: (
        S3ArtifactStore(s3.endpoint, s3.access_key, s3.secret_key, bucket, secure=s3.secure),
        MongoExecutionStore(uri, database=database),
    )


async def _start(
    artifacts: ArtifactStore, executions: ExecutionStore, **options: Any
) -> StoreService:
    running = await start_server("127.0.0.1:0", store_services(artifacts, executions), **options)
    return StoreService(running, artifacts, executions)


async def _stop(service: StoreService) -> None:
    await service.running.stop(None)
    await service.artifacts.aclose()
    await service.executions.aclose()


@pytest.fixture
async def store_service(backend_factory: BackendFactory) -> AsyncIterator[StoreService]:
    service = await _start(*backend_factory())
    yield service
    await _stop(service)


@pytest.fixture
async def embedded_service(tmp_path: Path) -> AsyncIterator[StoreService]:
    service = await _start(
        LocalArtifactStore(tmp_path / "artifacts"),
        SqliteExecutionStore(tmp_path / "executions.sqlite3"),
    )
    yield service
    await _stop(service)


@pytest.fixture
async def channel(embedded_service: StoreService) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(embedded_service.address) as chan:
        yield chan


@pytest.fixture
def artifact_api(channel: grpc.aio.Channel) -> pb_grpc.ArtifactStoreServiceAsyncStub:
    return pb_grpc.ArtifactStoreServiceStub(channel)


@pytest.fixture
def execution_api(channel: grpc.aio.Channel) -> pb_grpc.ExecutionStoreServiceAsyncStub:
    return pb_grpc.ExecutionStoreServiceStub(channel)


# The contract suite's fixtures: remote clients of the store service.


@pytest.fixture
async def artifact_store(store_service: StoreService) -> AsyncIterator[RemoteArtifactStore]:
    client = RemoteArtifactStore(store_service.address)
    yield client
    await client.aclose()


@pytest.fixture
async def reopen_artifact_store(
    store_service: StoreService,
) -> AsyncIterator[Callable[[], RemoteArtifactStore]]:
    opened: list[RemoteArtifactStore] = []

    def reopen() -> RemoteArtifactStore:
        opened.append(RemoteArtifactStore(store_service.address))
        return opened[-1]

    yield reopen
    for client in opened:
        await client.aclose()


@pytest.fixture
async def execution_store(store_service: StoreService) -> AsyncIterator[RemoteExecutionStore]:
    client = RemoteExecutionStore(store_service.address)
    yield client
    await client.aclose()


@pytest.fixture
async def reopen_execution_store(
    store_service: StoreService,
) -> AsyncIterator[Callable[[], RemoteExecutionStore]]:
    opened: list[RemoteExecutionStore] = []

    def reopen() -> RemoteExecutionStore:
        opened.append(RemoteExecutionStore(store_service.address))
        return opened[-1]

    yield reopen
    for client in opened:
        await client.aclose()


# ---------------------------------------------------------------------- helpers


def _error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
    raise AssertionError(f"no ErrorInfo in the trailers of {exc!r}")


def _header(**fields: Any) -> pb.PutArtifactRequest:
    values: dict[str, Any] = {"name": "out.bin", "run_id": "run-1", "node_id": "a"}
    values.update(fields)
    return pb.PutArtifactRequest(header=pb.ArtifactHeader(**values))


async def _requests(*messages: pb.PutArtifactRequest) -> AsyncIterator[pb.PutArtifactRequest]:
    for message in messages:
        yield message


async def _put_expecting_error(
    api: pb_grpc.ArtifactStoreServiceAsyncStub, *messages: pb.PutArtifactRequest
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.PutArtifact(_requests(*messages))
    return caught.value


async def _listed(api: pb_grpc.ArtifactStoreServiceAsyncStub, run_id: str = "run-1") -> list[str]:
    response = await api.ListArtifacts(pb.ListArtifactsRequest(run_id=run_id))
    return [a.artifact_id for a in response.artifacts]


async def _until(predicate: Callable[[], Awaitable[bool]], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


# ---------------------------------------------------------------------- server foundation


async def test_store_service_health_is_serving_for_every_service_name(
    channel: grpc.aio.Channel,
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "dagwire.v1.ArtifactStoreService", "dagwire.v1.ExecutionStoreService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_store_service_reflection_lists_the_full_service_names(
    channel: grpc.aio.Channel,
) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for reply in stub.ServerReflectionInfo(one()):
        names |= {s.name for s in reply.list_services_response.service}
    assert {
        "dagwire.v1.ArtifactStoreService",
        "dagwire.v1.ExecutionStoreService",
        "grpc.health.v1.Health",
    } <= names


async def test_store_service_stop_turns_health_not_serving(embedded_service: StoreService) -> None:
    async with grpc.aio.insecure_channel(embedded_service.address) as chan:
        health = health_pb2_grpc.HealthStub(chan)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(embedded_service.running.stop(2.0))
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await stopping


async def test_store_service_busy_address_is_a_listen_error_naming_it(
    embedded_service: StoreService,
) -> None:
    from dagwire.rpc.serve import ListenError

    with pytest.raises(ListenError, match=embedded_service.address):
        await start_server(embedded_service.address, [])


# ---------------------------------------------------------------------- hostile input


@pytest.mark.parametrize("name", ["a/b", "../etc", "..", "bad\x00name", "/abs"])
async def test_put_artifact_name_with_slash_dotdot_or_nul_is_invalid_argument_naming_the_field(
    artifact_api: pb_grpc.ArtifactStoreServiceAsyncStub, name: str
) -> None:
    error = await _put_expecting_error(
        artifact_api, _header(name=name), pb.PutArtifactRequest(chunk=b"x")
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "header.name" in (error.details() or "")
    assert _error_info(error).metadata["field"] == "header.name"
    assert await _listed(artifact_api) == []


async def test_put_artifact_metadata_keys_with_dot_and_dollar_come_back_unchanged(
    artifact_api: pb_grpc.ArtifactStoreServiceAsyncStub,
) -> None:
    metadata = {"a.b": "1", "$set": "2", "x.$y": "3"}
    reply = await artifact_api.PutArtifact(
        _requests(_header(metadata=metadata), pb.PutArtifactRequest(chunk=b"data"))
    )
    stat = await artifact_api.StatArtifact(
        pb.StatArtifactRequest(artifact_id=reply.artifact.artifact_id)
    )
    assert dict(stat.artifact.metadata) == metadata


async def test_put_artifact_stream_without_header_is_invalid_argument_and_stores_nothing(
    artifact_api: pb_grpc.ArtifactStoreServiceAsyncStub,
) -> None:
    error = await _put_expecting_error(artifact_api, pb.PutArtifactRequest(chunk=b"x"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message of the stream must hold the header" in (error.details() or "")
    empty = await _put_expecting_error(artifact_api)
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_put_artifact_second_header_is_invalid_argument_and_stores_nothing(
    artifact_api: pb_grpc.ArtifactStoreServiceAsyncStub,
) -> None:
    error = await _put_expecting_error(
        artifact_api, _header(), pb.PutArtifactRequest(chunk=b"x"), _header()
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only the first message may hold a header" in (error.details() or "")
    assert await _listed(artifact_api) == []


async def test_put_artifact_declared_sha256_mismatch_is_invalid_argument_and_not_listed(
    artifact_api: pb_grpc.ArtifactStoreServiceAsyncStub,
) -> None:
    wrong = hashlib.sha256(b"other").hexdigest()
    error = await _put_expecting_error(
        artifact_api, _header(sha256=wrong), pb.PutArtifactRequest(chunk=b"content")
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"not the declared header.sha256 {wrong}" in (error.details() or "")
    assert await _listed(artifact_api) == []


@pytest.mark.parametrize("declared", [3, 100])
async def test_put_artifact_declared_size_mismatch_is_invalid_argument_and_not_listed(
    artifact_api: pb_grpc.ArtifactStoreServiceAsyncStub, declared: int
) -> None:
    error = await _put_expecting_error(
        artifact_api, _header(size=declared), pb.PutArtifactRequest(chunk=b"content")
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"declared header.size of {declared}" in (error.details() or "")
    assert await _listed(artifact_api) == []


async def test_put_artifact_matching_declared_sha256_and_size_is_stored(
    artifact_api: pb_grpc.ArtifactStoreServiceAsyncStub,
) -> None:
    content = b"content" * 1000
    digest = hashlib.sha256(content).hexdigest()
    reply = await artifact_api.PutArtifact(
        _requests(
            _header(sha256=digest, size=len(content)),
            pb.PutArtifactRequest(chunk=content[:5000]),
            pb.PutArtifactRequest(chunk=content[5000:]),
        )
    )
    assert (reply.artifact.sha256, reply.artifact.size) == (digest, len(content))
    assert await _listed(artifact_api) == [reply.artifact.artifact_id]


async def test_unknown_artifact_id_is_not_found_with_artifact_not_found_reason(
    artifact_api: pb_grpc.ArtifactStoreServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as stat_error:
        await artifact_api.StatArtifact(pb.StatArtifactRequest(artifact_id="no-such-artifact"))
    assert stat_error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-artifact" in (stat_error.value.details() or "")
    info = _error_info(stat_error.value)
    assert (info.reason, info.domain, info.metadata["id"]) == (
        "ARTIFACT_NOT_FOUND",
        "dagwire",
        "no-such-artifact",
    )
    with pytest.raises(grpc.aio.AioRpcError) as get_error:
        async for _ in artifact_api.GetArtifact(pb.GetArtifactRequest(artifact_id="nope")):
            pass
    assert get_error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_run_id_is_not_found_with_run_not_found_reason(
    execution_api: pb_grpc.ExecutionStoreServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await execution_api.GetRunRecord(pb.GetRunRecordRequest(run_id="no-such-run"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "run 'no-such-run' not found"
    assert _error_info(caught.value).reason == "RUN_NOT_FOUND"


async def test_remote_store_re_raises_not_found_with_kind_and_id(
    embedded_service: StoreService,
) -> None:
    client = RemoteArtifactStore(embedded_service.address)
    try:
        with pytest.raises(NotFoundError) as caught:
            await client.stat("missing-id")
    finally:
        await client.aclose()
    assert (caught.value.kind, caught.value.id) == ("artifact", "missing-id")
    assert str(caught.value) == "artifact 'missing-id' not found"


async def test_list_calls_with_a_negative_page_size_are_invalid_argument_naming_it(
    artifact_api: pb_grpc.ArtifactStoreServiceAsyncStub,
    execution_api: pb_grpc.ExecutionStoreServiceAsyncStub,
) -> None:
    calls = [
        artifact_api.ListArtifacts(pb.ListArtifactsRequest(run_id="r", page_size=-1)),
        execution_api.ListExecutionRecords(
            pb.ListExecutionRecordsRequest(run_id="r", page_size=-1)
        ),
        execution_api.ListRunRecords(pb.ListRunRecordsRequest(page_size=-1)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_size must be 0" in (caught.value.details() or "")


async def test_list_artifacts_pages_cover_every_artifact_once_and_tokens_are_bound(
    artifact_api: pb_grpc.ArtifactStoreServiceAsyncStub,
) -> None:
    stored = []
    for i in range(5):
        reply = await artifact_api.PutArtifact(
            _requests(_header(name=f"n{i}"), pb.PutArtifactRequest(chunk=b"%d" % i))
        )
        stored.append(reply.artifact.artifact_id)
    seen: list[str] = []
    token = ""
    while True:
        page = await artifact_api.ListArtifacts(
            pb.ListArtifactsRequest(run_id="run-1", page_size=2, page_token=token)
        )
        assert len(page.artifacts) <= 2
        seen += [a.artifact_id for a in page.artifacts]
        token = page.next_page_token
        if not token:
            break
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await artifact_api.ListArtifacts(
                pb.ListArtifactsRequest(run_id="run-2", page_size=2, page_token=token)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (caught.value.details() or "")
    assert seen == stored


async def test_message_over_the_size_limit_is_resource_exhausted_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    service = await _start(
        LocalArtifactStore(tmp_path / "a"),
        SqliteExecutionStore(tmp_path / "e.sqlite3"),
        max_message_bytes=64 * 1024,
    )
    try:
        options = channel_options(max_message_bytes=4 * MIB)
        async with grpc.aio.insecure_channel(service.address, options=options) as chan:
            api = pb_grpc.ArtifactStoreServiceStub(chan)
            error = await _put_expecting_error(
                api, _header(), pb.PutArtifactRequest(chunk=b"x" * (100 * 1024))
            )
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in (error.details() or "")
            reply = await api.PutArtifact(_requests(_header(), pb.PutArtifactRequest(chunk=b"ok")))
            assert reply.artifact.size == 2
    finally:
        await _stop(service)


async def test_put_artifact_cancelled_half_way_leaves_no_artifact_visible(
    embedded_service: StoreService, artifact_api: pb_grpc.ArtifactStoreServiceAsyncStub
) -> None:
    sent = asyncio.Event()

    async def half_then_stall() -> AsyncIterator[pb.PutArtifactRequest]:
        yield _header()
        for _ in range(8):
            yield pb.PutArtifactRequest(chunk=b"y" * MIB)
        sent.set()
        await asyncio.Event().wait()  # never finishes: the client gives up instead

    call = artifact_api.PutArtifact(half_then_stall())
    await asyncio.wait_for(sent.wait(), 10)
    await asyncio.sleep(0.2)  # let the server consume what was sent
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await _listed(artifact_api) == []
    tmp_dir = Path(getattr(embedded_service.artifacts, "root")) / "tmp"  # noqa: B009

    async def no_temp_files() -> bool:
        return not any(tmp_dir.iterdir()) if tmp_dir.exists() else True

    assert await _until(no_temp_files), f"temp files left under {tmp_dir}"


async def test_remote_store_stream_that_fails_half_way_raises_its_error_and_stores_nothing(
    embedded_service: StoreService,
) -> None:
    class Broken(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * MIB
        raise Broken("source went away")

    client = RemoteArtifactStore(embedded_service.address)
    try:
        with pytest.raises(Broken, match="source went away"):
            await client.store_stream(Artifact(name="n", run_id="run-1"), failing())
        assert await client.list("run-1") == []
    finally:
        await client.aclose()


async def test_remote_store_unreachable_service_is_store_unavailable_naming_the_address() -> None:
    address = f"127.0.0.1:{find_free_port()}"
    client = RemoteExecutionStore(address)
    try:
        with pytest.raises(StoreUnavailableError, match=f"store service at {address}"):
            await client.get_run("run-1")
    finally:
        await client.aclose()


async def test_record_executions_with_unspecified_status_is_invalid_argument(
    execution_api: pb_grpc.ExecutionStoreServiceAsyncStub,
) -> None:
    from dagwire.rpc.convert import execution_record_to_proto

    record = execution_record_to_proto(
        ExecutionRecord(
            run_id="r",
            node_id="a",
            attempt=1,
            agent="echo",
            status=TaskStatus.SUCCEEDED,
            started_at=utc_now(),
        )
    )
    record.status = 0  # type: ignore[assignment]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await execution_api.RecordExecutions(pb.RecordExecutionsRequest(records=[record]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "status must be a task status" in (caught.value.details() or "")


# ---------------------------------------------------------------------- subprocess, memory


@contextlib.contextmanager
def store_process(data_dir: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m dagwire_services.store`` on a free port; yields (process, address)."""
    address = f"127.0.0.1:{find_free_port()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagwire_services.store",
            "--listen-addr",
            address,
            "--data-dir",
            str(data_dir),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "DAGWIRE_LOG_FORMAT": "json", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _wait_serving(address: str, proc: subprocess.Popen[bytes]) -> None:
    async with grpc.aio.insecure_channel(address) as chan:
        health = health_pb2_grpc.HealthStub(chan)
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline, "store service did not become SERVING"
            await asyncio.sleep(0.1)


async def test_store_process_sigterm_drains_and_exits_zero_logging_json_to_stderr(
    tmp_path: Path,
) -> None:
    with store_process(tmp_path / "data") as (proc, address):
        await _wait_serving(address, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert out == b""
    lines = err.decode().splitlines()
    assert any('"message": "store serving on ' + address in line for line in lines), lines
    assert all(line.startswith("{") for line in lines), lines


async def test_store_process_busy_address_is_one_line_naming_it_exit_2(
    tmp_path: Path, embedded_service: StoreService
) -> None:
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "dagwire_services.store",
            "--listen-addr",
            embedded_service.address,
            "--data-dir",
            str(tmp_path / "d"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("{")]
    assert errors == [
        f"dagwire-store: error: cannot listen on {embedded_service.address}: address already in "
        "use (choose another address with --listen-addr or DAGWIRE_LISTEN_ADDR)"
    ]


def test_store_process_invalid_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dagwire_services.store"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "DAGWIRE_MAX_MESSAGE_BYTES": "lots"},
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("dagwire-store: error: invalid DAGWIRE_MAX_MESSAGE_BYTES='lots'")


async def test_store_process_64_mib_upload_and_download_keep_rss_growth_under_100_mib(
    tmp_path: Path,
) -> None:
    total = 64 * MIB
    with store_process(tmp_path / "data") as (proc, address):
        await _wait_serving(address, proc)
        process = psutil.Process(proc.pid)
        baseline = process.memory_info().rss
        peak = baseline
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        client = RemoteArtifactStore(address)
        try:

            async def chunks() -> AsyncIterator[bytes]:
                block = os.urandom(MIB)
                for _ in range(total // MIB):
                    yield block

            stored = await client.store_stream(Artifact(name="big.bin", run_id="r"), chunks())
            received = 0
            async for chunk in client.open(stored.artifact_id or ""):
                received += len(chunk)
        finally:
            done.set()
            await sampler
            await client.aclose()
    assert (stored.size, received) == (total, total)
    growth = (peak - baseline) / MIB
    assert growth < 100, f"store process RSS grew by {growth:.0f} MiB for a 64 MiB artifact"


# ---------------------------------------------------------------------- backend down and back


class TcpProxy:
    """A loopback TCP forwarder that can be cut (listener and connections) and restored."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def _host_port(endpoint: str) -> tuple[str, int]:
    netloc = endpoint.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = netloc.rpartition(":")
    return host, int(port)


async def test_execution_backend_down_is_unavailable_naming_it_and_data_survives(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if not _backends_installed():
        pytest.skip("dagwire.stores.mongo is not there yet")
    from dagwire.models import RunRecord, RunStatus
    from dagwire.stores.mongo import MongoExecutionStore

    uri: str = request.getfixturevalue("mongodb_uri")
    database: str = request.getfixturevalue("mongodb_database_name")
    proxy = TcpProxy(*_host_port(uri))
    await proxy.start()
    proxied = f"mongodb://127.0.0.1:{proxy.port}/"
    service = await _start(
        LocalArtifactStore(tmp_path / "a"), MongoExecutionStore(proxied, database=database)
    )
    client = RemoteExecutionStore(service.address)
    run = RunRecord(run_id="run-1", name="wf", status=RunStatus.RUNNING, created_at=utc_now())
    try:
        await client.save_run(run)
        await proxy.stop()
        with pytest.raises(StoreUnavailableError) as caught:
            await asyncio.wait_for(client.get_run("run-1"), 90)
        message = str(caught.value)
        assert str(proxy.port) in message or "mongo" in message.lower(), message
        await proxy.start()
        assert await asyncio.wait_for(client.get_run("run-1"), 90) == run
    finally:
        await client.aclose()
        await _stop(service)
        await proxy.stop()


async def test_artifact_backend_down_is_unavailable_naming_it_and_data_survives(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if not _backends_installed():
        pytest.skip("dagwire.stores.s3 is not there yet")
    from dagwire.stores.s3 import S3ArtifactStore

    s3: S3Endpoint = request.getfixturevalue("s3_endpoint")
    bucket: str = request.getfixturevalue("s3_bucket_name")
    proxy = TcpProxy(*_host_port(s3.endpoint))
    await proxy.start()
    backend = S3ArtifactStore(
        f"127.0.0.1:{proxy.port}", s3.access_key, s3.secret_key, bucket, secure=False
    )
    service = await _start(backend, SqliteExecutionStore(tmp_path / "e.sqlite3"))
    client = RemoteArtifactStore(service.address)
    content = os.urandom(200_000)
    try:
        stored = await client.store(Artifact(name="kept.bin", content=content, run_id="run-1"))
        await proxy.stop()
        with pytest.raises(StoreUnavailableError) as caught:
            await asyncio.wait_for(client.load(stored.artifact_id or ""), 120)
        message = str(caught.value)
        assert str(proxy.port) in message or "s3" in message.lower(), message
        await proxy.start()
        loaded = await asyncio.wait_for(client.load(stored.artifact_id or ""), 120)
        assert loaded.content == content
    finally:
        await client.aclose()
        await _stop(service)
        await proxy.stop()
