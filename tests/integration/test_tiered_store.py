"""`TieredArtifactStore` on FerretDB 1.24 + MinIO: small artifacts inline in MongoDB, large ones
in the bucket, and the store service's RecordOutcomes batch as one insert."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from minio import Minio
from pymongo import AsyncMongoClient

from dagwire.models import Artifact, ExecutionRecord, TaskStatus, utc_now
from dagwire.rpc.serve import RunningServer, start_server
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from dagwire.settings import StoreSettings, load_settings
from dagwire.stores.factory import build_artifact_store, describe_storage
from dagwire.stores.mongo import MongoExecutionStore
from dagwire.stores.s3 import S3ArtifactStore
from dagwire.stores.tiered import INLINE_LIMIT, TieredArtifactStore
from dagwire_services.store.servicer import store_services
from tests.servers import S3Endpoint

KIB = 1024


@pytest.fixture
async def store(
    mongodb_uri: str, mongodb_database_name: str, s3_endpoint: S3Endpoint, s3_bucket_name: str
) -> AsyncIterator[TieredArtifactStore]:
    s3 = S3ArtifactStore(
        s3_endpoint.endpoint, s3_endpoint.access_key, s3_endpoint.secret_key, s3_bucket_name
    )
    tiered = TieredArtifactStore(mongodb_uri, s3, database=mongodb_database_name)
    yield tiered
    await tiered.aclose()


def _bucket_objects(s3_endpoint: S3Endpoint, bucket: str) -> list[str]:
    client = Minio(
        endpoint=s3_endpoint.host,
        access_key=s3_endpoint.access_key,
        secret_key=s3_endpoint.secret_key,
        secure=s3_endpoint.secure,
    )
    if not client.bucket_exists(bucket_name=bucket):
        return []
    objects = client.list_objects(bucket_name=bucket, recursive=True)
    return sorted(o.object_name for o in objects if o.object_name is not None)


async def _inline_ids(mongodb_uri: str, database: str) -> list[str]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongodb_uri)
    try:
        docs = await client[database]["artifacts"].find({}, {"_id": 1}).to_list()
    finally:
        await client.close()
    return sorted(str(doc["_id"]) for doc in docs)


def _artifact(content: bytes, name: str = "out.bin", run_id: str = "run-1") -> Artifact:
    return Artifact(name=name, content=content, run_id=run_id, node_id="n")


async def test_small_artifact_makes_no_minio_object_while_a_large_one_does(
    store: TieredArtifactStore,
    s3_endpoint: S3Endpoint,
    s3_bucket_name: str,
    mongodb_uri: str,
    mongodb_database_name: str,
) -> None:
    small = await store.store(_artifact(b"x" * INLINE_LIMIT, name="small"))
    assert _bucket_objects(s3_endpoint, s3_bucket_name) == []
    assert await _inline_ids(mongodb_uri, mongodb_database_name) == [small.artifact_id]

    big_content = random.Random(1).randbytes(INLINE_LIMIT + 1)
    big = await store.store(_artifact(big_content, name="big"))
    objects = _bucket_objects(s3_endpoint, s3_bucket_name)
    assert f"blobs/{big.sha256}" in objects
    assert not any(small.artifact_id in name for name in objects if small.artifact_id)
    assert await _inline_ids(mongodb_uri, mongodb_database_name) == [small.artifact_id]
    assert (await store.load(big.artifact_id or "")).content == big_content
    assert (await store.load(small.artifact_id or "")).content == b"x" * INLINE_LIMIT


async def test_list_merges_inline_and_bucket_artifacts_in_store_order(
    store: TieredArtifactStore,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"streamed"

    first = await store.store(_artifact(b"a", name="first"))
    second = await store.store(_artifact(bytes(100 * KIB), name="second"))
    third = await store.store_stream(Artifact(name="third", run_id="run-1"), chunks())
    fourth = await store.store(_artifact(b"d", name="fourth"))
    listed = await store.list("run-1")
    assert [a.name for a in listed] == ["first", "second", "third", "fourth"]
    assert [a.artifact_id for a in listed] == [
        a.artifact_id for a in (first, second, third, fourth)
    ]
    assert all(a.content is None for a in listed)
    assert [c async for c in store.open(third.artifact_id or "")] == [b"streamed"]


async def test_store_many_500_small_artifacts_is_one_insert(store: TieredArtifactStore) -> None:
    given = [_artifact(f"content {i}".encode(), name=f"a{i}") for i in range(500)]
    stored = await store.store_many(given)
    assert store.write_commands == 1
    assert [a.name for a in stored] == [f"a{i}" for i in range(500)]
    assert [a.content for a in stored] == [f"content {i}".encode() for i in range(500)]
    listed = await store.list("run-1")
    assert [a.artifact_id for a in listed] == [a.artifact_id for a in stored]
    assert (await store.load(stored[499].artifact_id or "")).content == b"content 499"


async def test_store_many_with_an_invalid_artifact_stores_nothing_and_names_it(
    store: TieredArtifactStore,
) -> None:
    given = [_artifact(b"ok", name="good"), _artifact(b"no", name="bad\x00name")]
    with pytest.raises(ValueError, match=r"artifact 1: name must not contain a NUL"):
        await store.store_many(given)
    assert await store.list("run-1") == []


async def test_store_service_records_outcomes_with_outputs_inline_in_mongodb(
    mongodb_uri: str,
    mongodb_database_name: str,
    s3_endpoint: S3Endpoint,
    s3_bucket_name: str,
) -> None:
    s3 = S3ArtifactStore(
        s3_endpoint.endpoint, s3_endpoint.access_key, s3_endpoint.secret_key, s3_bucket_name
    )
    artifacts = TieredArtifactStore(mongodb_uri, s3, database=mongodb_database_name)
    executions = MongoExecutionStore(mongodb_uri, database=mongodb_database_name)
    running: RunningServer = await start_server(
        "127.0.0.1:0", store_services(artifacts, executions)
    )
    address = f"127.0.0.1:{running.port}"
    remote = RemoteExecutionStore(address)
    remote_artifacts = RemoteArtifactStore(address)
    run_id = "run-outcomes"
    try:

        def record(node_id: str) -> ExecutionRecord:
            now = utc_now()
            return ExecutionRecord(
                run_id=run_id,
                node_id=node_id,
                attempt=1,
                agent="echo",
                status=TaskStatus.SUCCEEDED,
                started_at=now,
                finished_at=now,
            )

        def output(node_id: str, name: str = "out") -> Artifact:
            return Artifact(name=name, content=node_id.encode(), run_id=run_id, node_id=node_id)

        results = await asyncio.gather(
            *(remote.record_outcome(record(f"t{i}"), [output(f"t{i}")]) for i in range(60)),
            remote.record_outcome(record("bad"), [output("bad", name="../escape")]),
            return_exceptions=True,
        )
        assert isinstance(results[-1], ValueError) and "'../escape'" in str(results[-1])
        good = [r for r in results[:-1] if isinstance(r, list)]
        assert len(good) == 60
        records = {r.node_id: r for r in await remote.list_records(run_id)}
        assert sorted(records) == sorted(f"t{i}" for i in range(60))
        for i, (artifact,) in enumerate(good):
            assert records[f"t{i}"].output_artifact_ids == [artifact.artifact_id]
            loaded = await remote_artifacts.load(artifact.artifact_id or "")
            assert loaded.content == f"t{i}".encode()
        inline = await _inline_ids(mongodb_uri, mongodb_database_name)
        assert inline == sorted(str(a.artifact_id) for (a,) in good)
        assert _bucket_objects(s3_endpoint, s3_bucket_name) == []
        assert artifacts.write_commands < 60  # the outputs of a batch share one insert
    finally:
        await remote.aclose()
        await remote_artifacts.aclose()
        await running.stop(None)
        await artifacts.aclose()
        await executions.aclose()


def test_settings_with_mongodb_and_s3_select_the_tiered_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAGWIRE_MONGODB_URI", "mongodb://user:pw@127.0.0.1:27017/wf")
    monkeypatch.setenv("DAGWIRE_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("DAGWIRE_S3_ACCESS_KEY", "key")
    monkeypatch.setenv("DAGWIRE_S3_SECRET_KEY", "secret")
    settings = load_settings(StoreSettings, [])
    store = build_artifact_store(settings)
    assert isinstance(store, TieredArtifactStore)
    assert isinstance(store.large, S3ArtifactStore)
    description = describe_storage(settings)["artifact_store"]
    assert description.startswith("tiered: up to 64 KiB inline in mongodb")
    assert "database wf collection artifacts" in description
    assert "bucket dagwire-artifacts" in description
    assert "pw" not in description
