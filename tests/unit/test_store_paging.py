"""The store service pages run listings by key with tokens it makes (docs/limits.md).

The store service runs in the test's event loop over embedded stores that count how they
are read, so a test can tell a keyset page from a re-read of the whole run.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest

from dagwire.models import Artifact, ExecutionRecord, RunRecord, RunStatus, TaskStatus
from dagwire.rpc.paging import encode_page_token
from dagwire.rpc.serve import start_server
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore
from dagwire.v1 import store_service_pb2 as pb
from dagwire.v1 import store_service_pb2_grpc as pb_grpc
from dagwire_services.store.servicer import store_services

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class CountingExecutions(SqliteExecutionStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.whole_reads = 0
        self.pages = 0

    async def list_records(self, run_id: str) -> builtins.list[ExecutionRecord]:
        self.whole_reads += 1
        return await super().list_records(run_id)

    async def list_records_page(self, *args: object, **kwargs: object) -> list[ExecutionRecord]:
        self.pages += 1
        return await super().list_records_page(*args, **kwargs)  # type: ignore[arg-type]


class CountingArtifacts(LocalArtifactStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.whole_reads = 0
        self.pages = 0

    async def list(self, run_id: str) -> builtins.list[Artifact]:
        self.whole_reads += 1
        return await super().list(run_id)

    async def list_page(self, *args: object, **kwargs: object) -> builtins.list[Artifact]:
        self.pages += 1
        return await super().list_page(*args, **kwargs)  # type: ignore[arg-type]


@dataclass
class Service:
    address: str
    executions: CountingExecutions
    artifacts: CountingArtifacts
    records_api: pb_grpc.ExecutionStoreServiceAsyncStub
    artifacts_api: pb_grpc.ArtifactStoreServiceAsyncStub


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    executions = CountingExecutions(tmp_path / "executions.sqlite3")
    artifacts = CountingArtifacts(tmp_path / "artifacts")
    running = await start_server("127.0.0.1:0", store_services(artifacts, executions))
    address = f"127.0.0.1:{running.port}"
    async with grpc.aio.insecure_channel(address) as channel:
        yield Service(
            address,
            executions,
            artifacts,
            pb_grpc.ExecutionStoreServiceStub(channel),  # type: ignore[no-untyped-call]
            pb_grpc.ArtifactStoreServiceStub(channel),  # type: ignore[no-untyped-call]
        )
    await running.stop(None)
    await executions.aclose()
    await artifacts.aclose()


def record(i: int, *, error: str | None = None) -> ExecutionRecord:
    return ExecutionRecord(
        run_id="run-1",
        node_id=f"n{i:05d}",
        attempt=1,
        agent="echo",
        status=TaskStatus.FAILED if error else TaskStatus.SUCCEEDED,
        started_at=T0 + timedelta(milliseconds=i // 2),
        finished_at=T0 + timedelta(seconds=1),
        error=error,
        trace_id="0af7651916cd43dd8448eb211c80319c",
    )


async def test_listing_a_large_run_reads_pages_by_key_not_the_whole_run_per_page(
    service: Service,
) -> None:
    records = [record(i) for i in range(2500)]
    await service.executions.record_many(records)
    client = RemoteExecutionStore(service.address)
    try:
        listed = await client.list_records("run-1")
    finally:
        await client.aclose()
    assert [r.node_id for r in listed] == [r.node_id for r in records]
    assert service.executions.whole_reads == 0  # each page once re-read all 2,500
    assert service.executions.pages == 3  # pages of 1,000


async def test_record_pages_by_size_with_opaque_tokens_bound_to_the_run(service: Service) -> None:
    await service.executions.record_many([record(i) for i in range(5)])
    api = service.records_api
    first = await api.ListExecutionRecords(
        pb.ListExecutionRecordsRequest(run_id="run-1", page_size=2)
    )
    assert [r.node_id for r in first.records] == ["n00000", "n00001"]
    assert first.next_page_token
    second = await api.ListExecutionRecords(
        pb.ListExecutionRecordsRequest(
            run_id="run-1", page_size=2, page_token=first.next_page_token
        )
    )
    assert [r.node_id for r in second.records] == ["n00002", "n00003"]
    third = await api.ListExecutionRecords(
        pb.ListExecutionRecordsRequest(
            run_id="run-1", page_size=2, page_token=second.next_page_token
        )
    )
    assert [r.node_id for r in third.records] == ["n00004"] and third.next_page_token == ""
    for token in (
        first.next_page_token,  # made for another run
        "not-a-token",
        encode_page_token("records", "run-2", 2),  # an offset, as tokens were before
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.ListExecutionRecords(
                pb.ListExecutionRecordsRequest(run_id="run-2", page_token=token)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in (caught.value.details() or "")


async def test_record_pages_end_early_under_the_byte_budget(service: Service) -> None:
    # 12 records of 1 MB each: one page of 50 would be more than the 16 MiB message limit
    await service.executions.record_many([record(i, error="e" * (1 << 20)) for i in range(12)])
    api = service.records_api
    page = await api.ListExecutionRecords(pb.ListExecutionRecordsRequest(run_id="run-1"))
    assert 1 <= len(page.records) < 12 and page.next_page_token
    client = RemoteExecutionStore(service.address)
    try:
        assert len(await client.list_records("run-1")) == 12
    finally:
        await client.aclose()


async def test_artifact_pages_by_key_with_server_tokens(service: Service) -> None:
    stored = [
        await service.artifacts.store(
            Artifact(name=f"o{i}", content=b"x", run_id="run-1", node_id="a")
        )
        for i in range(7)
    ]
    api = service.artifacts_api
    seen: list[str] = []
    token = ""
    while True:
        page = await api.ListArtifacts(
            pb.ListArtifactsRequest(run_id="run-1", page_size=3, page_token=token)
        )
        seen += [a.artifact_id for a in page.artifacts]
        token = page.next_page_token
        if not token:
            break
    assert seen == [a.artifact_id for a in stored]
    assert service.artifacts.whole_reads == 0 and service.artifacts.pages == 3
    client = RemoteArtifactStore(service.address)
    try:
        assert [a.artifact_id for a in await client.list("run-1")] == seen
    finally:
        await client.aclose()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.ListArtifacts(
            pb.ListArtifactsRequest(
                run_id="run-1", page_token=encode_page_token("artifacts", "run-1", "nope")
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_run_pages_start_after_a_run_id_the_client_names_not_a_token_it_builds(
    service: Service,
) -> None:
    for i in range(5):
        await service.executions.save_run(
            RunRecord(f"run-{i}", "wf", RunStatus.SUCCEEDED, T0 + timedelta(seconds=i))
        )
    client = RemoteExecutionStore(service.address)
    try:
        page = await client.list_runs(limit=2, after="run-3")
        assert [r.run_id for r in page] == ["run-2", "run-1"]
    finally:
        await client.aclose()
    reply = await service.records_api.ListRunRecords(
        pb.ListRunRecordsRequest(page_size=10, after_run_id="run-1")
    )
    assert [r.run_id for r in reply.runs] == ["run-0"]
