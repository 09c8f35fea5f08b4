"""Session fixtures for every test folder: real MongoDB-wire (FerretDB) and S3 (MinIO) servers.

By default the servers are built (``scripts/devservers.sh``) and started once
per test session on free loopback ports (docs/contracts.md §7), and only when a test
asks for them. External servers win when configured:

- ``DAGWIRE_MONGODB_URI`` — a MongoDB URI (MongoDB or FerretDB);
- ``DAGWIRE_S3_ENDPOINT`` (``host:port`` or ``http(s)://host:port``) with
  ``DAGWIRE_S3_ACCESS_KEY`` and ``DAGWIRE_S3_SECRET_KEY``;
- ``DAGWIRE_S3_BUCKET_PREFIX`` optionally sets the prefix of test buckets.
"""

from __future__ import annotations

import os

# gRPC's fork handlers can crash a process that forks (subprocess) from a worker thread while
# gRPC is busy in another thread; the tests fork only to exec, which needs none of them. Set
# before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import logging
import subprocess
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


# Where docker_available() is true, tests/integration/test_store_contract_servers.py also runs
# the store contract on the real `mongo` and `minio` images through testcontainers.


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
