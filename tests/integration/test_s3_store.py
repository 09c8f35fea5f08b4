"""`S3ArtifactStore` on MinIO: layout, dedup, bounded memory, failures, endpoints, outages."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
from minio import Minio

from dagwire.errors import NotFoundError, StoreUnavailableError
from dagwire.models import Artifact
from dagwire.stores.s3 import S3ArtifactStore
from tests.servers import (
    LOOPBACK,
    S3Endpoint,
    devservers_bin_dir,
    find_free_port,
    stop_process,
    tcp_port_open,
    wait_until,
)

MIB = 1 << 20


def _artifact(content: bytes | None = b"hello", **fields: object) -> Artifact:
    values: dict[str, object] = {"name": "out.bin", "run_id": "run-1", "node_id": "a"}
    values.update(fields)
    return Artifact(content=content, **values)  # type: ignore[arg-type]


@pytest.fixture
def minio_client(s3_endpoint: S3Endpoint) -> Minio:
    return Minio(
        endpoint=s3_endpoint.host,
        access_key=s3_endpoint.access_key,
        secret_key=s3_endpoint.secret_key,
        secure=s3_endpoint.secure,
    )


@pytest.fixture
async def store(s3_endpoint: S3Endpoint, s3_bucket_name: str) -> AsyncIterator[S3ArtifactStore]:
    store = S3ArtifactStore(
        s3_endpoint.endpoint, s3_endpoint.access_key, s3_endpoint.secret_key, bucket=s3_bucket_name
    )
    yield store
    await store.aclose()


def _keys(client: Minio, bucket: str, prefix: str) -> list[str]:
    objects = client.list_objects(bucket_name=bucket, prefix=prefix, recursive=True)
    return [str(o.object_name) for o in objects]


async def test_bucket_is_created_on_first_use(
    store: S3ArtifactStore, minio_client: Minio, s3_bucket_name: str
) -> None:
    assert not await asyncio.to_thread(minio_client.bucket_exists, bucket_name=s3_bucket_name)
    await store.store(_artifact())
    assert await asyncio.to_thread(minio_client.bucket_exists, bucket_name=s3_bucket_name)


async def test_two_instances_creating_the_bucket_at_once_both_succeed(
    s3_endpoint: S3Endpoint, s3_bucket_name: str
) -> None:
    stores = [
        S3ArtifactStore(
            s3_endpoint.endpoint, s3_endpoint.access_key, s3_endpoint.secret_key,
            bucket=s3_bucket_name,
        )
        for _ in range(4)
    ]  # fmt: skip
    try:
        stored = await asyncio.gather(*(s.store(_artifact(b"x")) for s in stores))
        assert len({a.artifact_id for a in stored}) == 4
    finally:
        for s in stores:
            await s.aclose()


async def test_identical_large_content_is_stored_once_under_its_sha256(
    store: S3ArtifactStore, minio_client: Minio, s3_bucket_name: str
) -> None:
    content = random.Random(1).randbytes(200_000)
    first, second = await asyncio.gather(
        store.store(_artifact(content, node_id="a")), store.store(_artifact(content, node_id="b"))
    )
    third = await store.store(_artifact(content, node_id="c"))
    assert len({first.artifact_id, second.artifact_id, third.artifact_id}) == 3
    blobs = await asyncio.to_thread(_keys, minio_client, s3_bucket_name, "blobs/")
    assert blobs == [f"blobs/{hashlib.sha256(content).hexdigest()}"]
    assert (await store.load(third.artifact_id or "")).content == content


async def test_small_content_is_inline_in_the_metadata_object(
    store: S3ArtifactStore, minio_client: Minio, s3_bucket_name: str
) -> None:
    content = b"s" * (64 * 1024)
    stored = await store.store(_artifact(content, metadata={"a.b": "$c"}))
    keys = await asyncio.to_thread(_keys, minio_client, s3_bucket_name, "")
    assert sorted(keys) == [
        f"artifacts/{stored.artifact_id}.json",
        f"runs/run-1/{stored.artifact_id}.json",
    ]

    def read(key: str) -> bytes:
        response = minio_client.get_object(bucket_name=s3_bucket_name, object_name=key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    doc = json.loads(await asyncio.to_thread(read, f"artifacts/{stored.artifact_id}.json"))
    assert doc["object"] is None and doc["size"] == 64 * 1024 and "inline" in doc
    assert doc["metadata"] == {"a.b": "$c"}
    assert (await store.load(stored.artifact_id or "")).content == content


class _PeakRss:
    """The process's peak RSS growth while the block runs (sampled every 10 ms)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.base = 0
        self.peak = 0

    def __enter__(self) -> _PeakRss:
        self.base = self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / MIB


async def test_64_mib_stream_round_trips_with_bounded_memory(store: S3ArtifactStore) -> None:
    total, chunk = 64 * MIB, 256 * 1024
    block = random.Random(64).randbytes(MIB)
    expected = hashlib.sha256()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(total // chunk):
            start = (i * chunk) % MIB
            part = block[start : start + chunk]
            expected.update(part)
            yield part

    with _PeakRss() as upload_rss:
        stored = await store.store_stream(_artifact(None, name="big.bin"), chunks())
    assert stored.size == total
    assert stored.sha256 == expected.hexdigest()

    received = hashlib.sha256()
    size = 0
    with _PeakRss() as download_rss:
        async for piece in store.open(stored.artifact_id or ""):
            assert len(piece) <= MIB
            received.update(piece)
            size += len(piece)
    assert (size, received.hexdigest()) == (total, stored.sha256)
    assert upload_rss.growth_mib < 100, f"upload grew RSS by {upload_rss.growth_mib:.0f} MiB"
    assert download_rss.growth_mib < 100, f"download grew RSS by {download_rss.growth_mib:.0f} MiB"


async def test_stream_failing_half_way_leaves_no_object_and_no_listing(
    store: S3ArtifactStore, minio_client: Minio, s3_bucket_name: str
) -> None:
    class Broken(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        for _ in range(40):  # 40 MiB: two 16 MiB parts uploaded before the failure
            yield b"x" * MIB
        raise Broken("connection dropped")

    with pytest.raises(Broken, match="connection dropped"):
        await store.store_stream(_artifact(None), failing())
    assert await asyncio.to_thread(_keys, minio_client, s3_bucket_name, "") == []
    assert await store.list("run-1") == []

    def incomplete_uploads() -> list[object]:
        return list(minio_client._list_multipart_uploads(bucket_name=s3_bucket_name).uploads)

    assert await asyncio.to_thread(incomplete_uploads) == []


async def test_fresh_instance_finds_large_and_streamed_artifacts(
    store: S3ArtifactStore, s3_endpoint: S3Endpoint, s3_bucket_name: str
) -> None:
    big = random.Random(2).randbytes(3 * MIB)
    stored = await store.store(_artifact(big))

    async def one() -> AsyncIterator[bytes]:
        yield b"streamed"

    streamed = await store.store_stream(_artifact(None, name="s"), one())
    fresh = S3ArtifactStore(
        f"http://{s3_endpoint.host}", s3_endpoint.access_key, s3_endpoint.secret_key,
        bucket=s3_bucket_name,
    )  # fmt: skip
    try:
        assert (await fresh.load(stored.artifact_id or "")).content == big
        assert (await fresh.load(streamed.artifact_id or "")).content == b"streamed"
        listed = await fresh.list("run-1")
        assert [a.artifact_id for a in listed] == [stored.artifact_id, streamed.artifact_id]
    finally:
        await fresh.aclose()


async def test_url_endpoint_with_http_scheme_works(
    s3_endpoint: S3Endpoint, s3_bucket_name: str
) -> None:
    store = S3ArtifactStore(
        f"http://{s3_endpoint.host}/", s3_endpoint.access_key, s3_endpoint.secret_key,
        bucket=s3_bucket_name, secure=True,  # the scheme wins over secure=True
    )  # fmt: skip
    try:
        stored = await store.store(_artifact(b"via url"))
        assert (await store.load(stored.artifact_id or "")).content == b"via url"
        assert store.endpoint == f"http://{s3_endpoint.host}"
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("http://127.0.0.1:9000/bucket", "path or query"),
        ("http://127.0.0.1:9000?x=1", "path or query"),
        ("ftp://127.0.0.1:9000", "scheme must be http or https"),
        ("127.0.0.1:9000/path", "must be 'host:port'"),
        ("http://user:pw@127.0.0.1:9000", "without credentials"),
    ],
)
def test_bad_endpoint_is_a_value_error(endpoint: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        S3ArtifactStore(endpoint, "key", "secret-key")


async def test_unknown_id_is_not_found_naming_it(store: S3ArtifactStore) -> None:
    with pytest.raises(NotFoundError, match=r"'\.\./etc/passwd'"):
        await store.load("../etc/passwd")


# ---------------------------------------------------------------------- outage and restart


class _Minio:
    """A MinIO server on a fixed port and data directory that can be stopped and restarted."""

    def __init__(self, base: Path) -> None:
        self.port = find_free_port()
        self.data = base / "data"
        self.data.mkdir()
        self.log_path = base / "minio.log"
        self.access_key, self.secret_key = "outage-minio", "outage-minio-secret"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(devservers_bin_dir() / "minio"),
                    "server",
                    str(self.data),
                    "--address",
                    self.endpoint,
                    "--console-address",
                    f"{LOOPBACK}:{find_free_port()}",
                    "--quiet",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    "PATH": "/usr/bin:/bin",
                    "MINIO_ROOT_USER": self.access_key,
                    "MINIO_ROOT_PASSWORD": self.secret_key,
                    "MINIO_BROWSER": "off",
                    "MINIO_UPDATE": "off",
                },
                start_new_session=True,
            )
        wait_until(
            lambda: tcp_port_open(LOOPBACK, self.port),
            what="MinIO",
            timeout=60,
            log_path=self.log_path,
            process=self.process,
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture
def own_minio() -> Iterator[_Minio]:
    with tempfile.TemporaryDirectory(prefix="dagwire-s3-outage-") as base:
        server = _Minio(Path(base))
        server.start()
        try:
            yield server
        finally:
            server.stop()


async def test_server_down_raises_store_unavailable_and_data_survives_a_restart(
    own_minio: _Minio,
) -> None:
    store = S3ArtifactStore(
        own_minio.endpoint, own_minio.access_key, own_minio.secret_key, bucket="outage"
    )
    try:
        before = await _retry_until_ready(store)
        own_minio.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=f"S3 store at http://{own_minio.endpoint}"):
            await store.store(_artifact(b"while down"))
        with pytest.raises(StoreUnavailableError):
            await store.load(before.artifact_id or "")
        assert time.monotonic() - started < 15
        own_minio.start()
        loaded = await _retry_until_ready(store, before.artifact_id)
        assert loaded.content == b"written before the outage"
    finally:
        await store.aclose()


async def _retry_until_ready(store: S3ArtifactStore, artifact_id: str | None = None) -> Artifact:
    """Store (or load) once MinIO serves S3 (it listens a moment before it is ready)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if artifact_id is None:
                return await store.store(_artifact(b"written before the outage"))
            return await store.load(artifact_id)
        except StoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
