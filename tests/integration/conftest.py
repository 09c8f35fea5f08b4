"""Fixtures for integration tests: real MongoDB-wire (FerretDB) and S3 (MinIO) servers.

By default the servers are built (``scripts/devservers.sh``) and started once
per test session on free loopback ports (DESIGN.md §7). External servers win
when configured:

- ``DAGWIRE_MONGODB_URI`` — a MongoDB URI (MongoDB or FerretDB);
- ``DAGWIRE_S3_ENDPOINT`` (``host:port`` or ``http(s)://host:port``) with
  ``DAGWIRE_S3_ACCESS_KEY`` and ``DAGWIRE_S3_SECRET_KEY``;
- ``DAGWIRE_S3_BUCKET_PREFIX`` optionally sets the prefix of test buckets.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.servers import (
    DEFAULT_BUCKET_PREFIX,
    FerretDBServer,
    MinioServer,
    PostgresServer,
    S3Endpoint,
)

log = logging.getLogger(__name__)


def docker_available() -> bool:
    """Whether a Docker engine answers (then testcontainers could run real mongo/minio)."""
    try:
        proc = subprocess.run(
            ["docker", "info"], capture_output=True, timeout=10, check=False, text=True
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


# TODO(testcontainers): where docker_available() is true, the fixtures below could
# start the real `mongo` and `minio` images instead of FerretDB and MinIO binaries.
# No Docker engine runs on the development machines, so this is not wired up yet.


@pytest.fixture(scope="session")
def mongodb_uri() -> Iterator[str]:
    """URI of a MongoDB-wire server: DAGWIRE_MONGODB_URI, or FerretDB on PostgreSQL."""
    external = os.environ.get("DAGWIRE_MONGODB_URI")
    if external:
        yield external
        return
    with ExitStack() as stack:
        pg = stack.enter_context(PostgresServer(database="ferretdb"))
        ferretdb = stack.enter_context(FerretDBServer(postgresql_url=pg.url))
        log.info(
            "PostgreSQL started in %.2f s, FerretDB in %.2f s",
            pg.startup_seconds,
            ferretdb.startup_seconds,
        )
        yield ferretdb.uri


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[S3Endpoint]:
    """An S3 endpoint: DAGWIRE_S3_ENDPOINT (+ keys), or a MinIO server."""
    prefix = os.environ.get("DAGWIRE_S3_BUCKET_PREFIX", DEFAULT_BUCKET_PREFIX)
    external = os.environ.get("DAGWIRE_S3_ENDPOINT")
    if external:
        access_key = os.environ.get("DAGWIRE_S3_ACCESS_KEY")
        secret_key = os.environ.get("DAGWIRE_S3_SECRET_KEY")
        if not access_key or not secret_key:
            raise pytest.UsageError(
                "DAGWIRE_S3_ENDPOINT is set: "
                "set DAGWIRE_S3_ACCESS_KEY and DAGWIRE_S3_SECRET_KEY too"
            )
        yield S3Endpoint(external, access_key, secret_key, prefix)
        return
    with MinioServer() as minio:
        log.info("MinIO started in %.2f s", minio.startup_seconds)
        yield S3Endpoint(minio.endpoint, minio.access_key, minio.secret_key, prefix)


def _unique_name(prefix: str, request: pytest.FixtureRequest, sep: str) -> str:
    """``prefix<sep>testname<sep>random``, lowercase [a-z0-9] and sep, at most 63 chars."""
    suffix = uuid.uuid4().hex[:10]
    test = re.sub(r"[^a-z0-9]+", sep, request.node.name.lower()).strip(sep)
    room = 63 - len(prefix) - len(suffix) - 2
    test = test[: max(room, 0)].strip(sep)
    parts = [p for p in (prefix.lower().strip(sep), test, suffix) if p]
    return sep.join(parts)[:63]


@pytest.fixture
def mongodb_database_name(mongodb_uri: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database name of this test's own; the database is dropped afterwards."""
    name = _unique_name("dagwire_test", request, "_")
    yield name
    from pymongo import MongoClient

    client: MongoClient[dict[str, object]] = MongoClient(mongodb_uri, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(name)
    except Exception:  # cleanup only: never hide the test's own outcome
        log.warning("could not drop database %s", name, exc_info=True)
    finally:
        client.close()


@pytest.fixture
def s3_bucket_name(s3_endpoint: S3Endpoint, request: pytest.FixtureRequest) -> Iterator[str]:
    """An S3-valid bucket name (lowercase, 3-63 chars) of this test's own.

    The bucket is not created; if the test created it, it is emptied and
    removed afterwards.
    """
    name = _unique_name(s3_endpoint.bucket_prefix, request, "-")
    yield name
    from minio import Minio

    client = Minio(
        endpoint=s3_endpoint.host,
        access_key=s3_endpoint.access_key,
        secret_key=s3_endpoint.secret_key,
        secure=s3_endpoint.secure,
    )
    try:
        if client.bucket_exists(bucket_name=name):
            for obj in client.list_objects(bucket_name=name, recursive=True):
                if obj.object_name is not None:
                    client.remove_object(bucket_name=name, object_name=obj.object_name)
            client.remove_bucket(bucket_name=name)
    except Exception:  # cleanup only: never hide the test's own outcome
        log.warning("could not remove bucket %s", name, exc_info=True)
