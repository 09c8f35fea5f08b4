"""The store contract suite against the server stores: `MongoExecutionStore`, and as artifact
stores `S3ArtifactStore` and `TieredArtifactStore` (small artifacts in MongoDB, the rest in S3).

Each test runs on the development servers (FerretDB 1.24 on PostgreSQL, MinIO), and on the real
``mongo`` and ``minio`` images through testcontainers where a Docker engine answers (skipped
otherwise, with the reason); each artifact test runs once per artifact store.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from dagwire.stores.base import ArtifactStore
from dagwire.stores.mongo import MongoExecutionStore
from dagwire.stores.s3 import S3ArtifactStore
from dagwire.stores.tiered import TieredArtifactStore
from tests.conftest import docker_available
from tests.servers import S3Endpoint
from tests.store_contract import *  # noqa: F403  (the contract's test functions)

NO_DOCKER = "no Docker engine: testcontainers needs one"
MONGO_IMAGE = "mongo:8.0.4"
MINIO_IMAGE = "minio/minio:RELEASE.2025-04-22T22-12-26Z"


@dataclass(frozen=True)
class Servers:
    """Where one backend's servers are: a MongoDB URI and an S3 endpoint."""

    mongodb_uri: str
    s3: S3Endpoint
    throwaway: bool = False  # containers: no cleanup per test needed


@pytest.fixture(scope="session")
def container_servers() -> Iterator[Servers]:
    """Real ``mongo`` and ``minio`` images via testcontainers (skipped without Docker)."""
    if not docker_available():
        pytest.skip(NO_DOCKER)
    from testcontainers.community.minio import MinioContainer
    from testcontainers.community.mongodb import MongoDbContainer

    with ExitStack() as stack:
        # The same pinned images as docker-compose.yml.
        mongo = stack.enter_context(MongoDbContainer(MONGO_IMAGE))
        minio = stack.enter_context(MinioContainer(MINIO_IMAGE))
        config = minio.get_config()
        yield Servers(
            mongodb_uri=mongo.get_connection_url(),
            s3=S3Endpoint(config["endpoint"], config["access_key"], config["secret_key"]),
            throwaway=True,
        )


@pytest.fixture(params=["devservers", "testcontainers"])
def servers(request: pytest.FixtureRequest) -> Servers:
    """The servers of one backend (the dev servers, or the real images)."""
    if request.param == "testcontainers":
        servers: Servers = request.getfixturevalue("container_servers")
        return servers
    return Servers(
        mongodb_uri=request.getfixturevalue("mongodb_uri"),
        s3=request.getfixturevalue("s3_endpoint"),
    )


@pytest.fixture
def database_name(servers: Servers, request: pytest.FixtureRequest) -> str:
    """A database of this test's own (dropped afterwards on the dev servers)."""
    if servers.throwaway:
        return f"dagwire_test_{uuid.uuid4().hex[:12]}"
    name: str = request.getfixturevalue("mongodb_database_name")
    return name


@pytest.fixture
def bucket_name(servers: Servers, request: pytest.FixtureRequest) -> str:
    """A bucket name of this test's own (the bucket is removed afterwards on the dev servers)."""
    if servers.throwaway:
        return f"dagwire-test-{uuid.uuid4().hex[:12]}"
    name: str = request.getfixturevalue("s3_bucket_name")
    return name


def _s3_store(servers: Servers, bucket: str) -> S3ArtifactStore:
    s3 = servers.s3
    return S3ArtifactStore(s3.endpoint, s3.access_key, s3.secret_key, bucket=bucket)


@dataclass(frozen=True)
class ArtifactBackend:
    """How to open one kind of artifact store on one backend's servers."""

    kind: str  # "s3" or "tiered"
    servers: Servers
    bucket: str
    database: str

    def open(self) -> ArtifactStore:
        s3 = _s3_store(self.servers, self.bucket)
        if self.kind == "s3":
            return s3
        return TieredArtifactStore(self.servers.mongodb_uri, s3, database=self.database)


@pytest.fixture(params=["s3", "tiered"])
def artifact_backend(
    request: pytest.FixtureRequest, servers: Servers, bucket_name: str
) -> ArtifactBackend:
    """The artifact store under test: S3 alone, or tiered (MongoDB inline + S3)."""
    database = ""
    if request.param == "tiered":
        database = request.getfixturevalue("database_name")
    return ArtifactBackend(request.param, servers, bucket_name, database)


@pytest.fixture
async def artifact_store(artifact_backend: ArtifactBackend) -> AsyncIterator[ArtifactStore]:
    store = artifact_backend.open()
    yield store
    await store.aclose()


@pytest.fixture
async def reopen_artifact_store(
    artifact_backend: ArtifactBackend,
) -> AsyncIterator[Callable[[], ArtifactStore]]:
    opened: list[ArtifactStore] = []

    def reopen() -> ArtifactStore:
        opened.append(artifact_backend.open())
        return opened[-1]

    yield reopen
    for store in opened:
        await store.aclose()


@pytest.fixture
async def execution_store(
    servers: Servers, database_name: str
) -> AsyncIterator[MongoExecutionStore]:
    store = MongoExecutionStore(servers.mongodb_uri, database=database_name)
    yield store
    await store.aclose()


@pytest.fixture
async def reopen_execution_store(
    servers: Servers, database_name: str
) -> AsyncIterator[Callable[[], MongoExecutionStore]]:
    opened: list[MongoExecutionStore] = []

    def reopen() -> MongoExecutionStore:
        opened.append(MongoExecutionStore(servers.mongodb_uri, database=database_name))
        return opened[-1]

    yield reopen
    for store in opened:
        await store.aclose()
