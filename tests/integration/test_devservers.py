"""Smoke tests for the development servers, used the way dagwire's stores use them."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from minio import Minio
from minio.error import S3Error
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from tests.servers import S3Endpoint

Doc = dict[str, Any]


@pytest.fixture
async def mongo_db(
    mongodb_uri: str, mongodb_database_name: str
) -> AsyncIterator[AsyncDatabase[Doc]]:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(mongodb_uri, serverSelectionTimeoutMS=10_000)
    try:
        yield client[mongodb_database_name]
    finally:
        await client.close()


@pytest.fixture
def minio_client(s3_endpoint: S3Endpoint) -> Minio:
    return Minio(
        endpoint=s3_endpoint.host,
        access_key=s3_endpoint.access_key,
        secret_key=s3_endpoint.secret_key,
        secure=s3_endpoint.secure,
    )


async def test_mongo_insert_and_find_by_id(mongo_db: AsyncDatabase[Doc]) -> None:
    executions = mongo_db["executions"]
    doc = {"_id": "run-1/node-a/1", "run_id": "run-1", "status": "succeeded", "attempt": 1}
    result = await executions.insert_one(doc)
    assert result.inserted_id == "run-1/node-a/1"

    found = await executions.find_one({"_id": "run-1/node-a/1"})
    assert found == doc
    assert await executions.find_one({"_id": "run-1/node-a/2"}) is None

    updated = await executions.update_one({"_id": "run-1/node-a/1"}, {"$set": {"status": "failed"}})
    assert updated.modified_count == 1
    found = await executions.find_one({"_id": "run-1/node-a/1"}, {"status": 1})
    assert found == {"_id": "run-1/node-a/1", "status": "failed"}


async def test_mongo_unique_index_rejects_duplicate(mongo_db: AsyncDatabase[Doc]) -> None:
    executions = mongo_db["executions"]
    index_name = await executions.create_index(
        [("run_id", ASCENDING), ("node_id", ASCENDING), ("attempt", ASCENDING)],
        unique=True,
        name="run_node_attempt",
    )
    assert index_name == "run_node_attempt"
    info = await executions.index_information()
    assert info["run_node_attempt"].get("unique") is True

    record = {"run_id": "r1", "node_id": "n1", "attempt": 1, "status": "running"}
    await executions.insert_one({"_id": "a", **record})
    with pytest.raises(DuplicateKeyError):
        await executions.insert_one({"_id": "b", **record})
    with pytest.raises(DuplicateKeyError):  # same _id
        await executions.insert_one({"_id": "a", "run_id": "r2", "node_id": "n1", "attempt": 1})
    await executions.insert_one({"_id": "c", **record, "attempt": 2})
    assert await executions.count_documents({}) == 2


async def test_mongo_insert_many_500(mongo_db: AsyncDatabase[Doc]) -> None:
    artifacts = mongo_db["artifacts"]
    docs = [{"_id": f"run-1/a/{i:04d}", "run_id": "run-1", "size": i} for i in range(500)]
    result = await artifacts.insert_many(docs)
    assert len(result.inserted_ids) == 500
    assert await artifacts.count_documents({}) == 500

    # Lookups by _id, concurrently, as the store's readers do.
    found = await asyncio.gather(
        *(artifacts.find_one({"_id": f"run-1/a/{i:04d}"}) for i in (0, 250, 499))
    )
    assert [d["size"] for d in found if d is not None] == [0, 250, 499]
    ids = [d["_id"] async for d in artifacts.find({}, {"_id": 1}).sort("_id", ASCENDING).limit(3)]
    assert ids == ["run-1/a/0000", "run-1/a/0001", "run-1/a/0002"]


async def test_minio_bucket_put_get_stat(minio_client: Minio, s3_bucket_name: str) -> None:
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", s3_bucket_name)
    payload = b"hello dagwire\n" * 10_000
    sha256 = hashlib.sha256(payload).hexdigest()
    key = f"sha256/{sha256}"

    def roundtrip() -> None:
        assert not minio_client.bucket_exists(bucket_name=s3_bucket_name)
        minio_client.make_bucket(bucket_name=s3_bucket_name)
        assert minio_client.bucket_exists(bucket_name=s3_bucket_name)
        with pytest.raises(S3Error) as excinfo:  # a second create by the same owner
            minio_client.make_bucket(bucket_name=s3_bucket_name)
        assert excinfo.value.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")

        put = minio_client.put_object(
            bucket_name=s3_bucket_name,
            object_name=key,
            data=io.BytesIO(payload),
            length=len(payload),
            content_type="application/octet-stream",
            metadata={"x-amz-meta-sha256": sha256},
        )
        assert put.object_name == key

        stat = minio_client.stat_object(bucket_name=s3_bucket_name, object_name=key)
        assert stat.size == len(payload)
        assert stat.metadata is not None
        assert stat.metadata.get("x-amz-meta-sha256") == sha256

        response = minio_client.get_object(bucket_name=s3_bucket_name, object_name=key)
        try:
            assert response.read() == payload
        finally:
            response.close()
            response.release_conn()

        with pytest.raises(S3Error) as missing:
            minio_client.stat_object(bucket_name=s3_bucket_name, object_name="sha256/absent")
        assert missing.value.code == "NoSuchKey"

    # The SDK is synchronous: keep it off the event loop, as the store does.
    await asyncio.to_thread(roundtrip)
