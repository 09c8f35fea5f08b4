"""Per-test fixtures for integration tests: a database and a bucket of each test's own.

The session-wide servers (``mongodb_uri``, ``s3_endpoint``) live in ``tests/conftest.py``.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator

import pytest

from tests.servers import S3Endpoint

log = logging.getLogger(__name__)


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
