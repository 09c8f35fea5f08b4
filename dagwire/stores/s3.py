"""`S3ArtifactStore`: artifacts in MinIO (or any S3-compatible store) through the `minio` SDK."""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import dataclasses
import hashlib
import io
import json
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlsplit

import certifi
import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import MinioException, S3Error, ServerError
from urllib3.exceptions import HTTPError
from urllib3.util import Retry, Timeout

from dagwire.errors import NotFoundError, StoreUnavailableError
from dagwire.limits import ARTIFACT_CHUNK_BYTES, STORED_INLINE_BYTES
from dagwire.models import Artifact, utc_now
from dagwire.stores._ids import new_id
from dagwire.stores._s3_stream import MultipartWriter, in_thread
from dagwire.stores._validate import (
    check_artifact,
    check_limit,
    check_lookup_id,
    from_micros,
    to_micros,
)

__all__ = ["S3ArtifactStore"]

T = TypeVar("T")

#: Content up to this size is kept inline (base64) in the artifact's metadata object.
INLINE_LIMIT = STORED_INLINE_BYTES
#: Most bytes `open()` yields at once: just under 1 MiB, so that a chunk plus its gRPC and
#: protobuf framing stays within one 1 MiB message (grpcio streams messages above 1 MiB
#: several times slower; see `bench/store_service.py`).
CHUNK_SIZE = ARTIFACT_CHUNK_BYTES
#: S3's smallest multipart part (except the last).
MIN_PART_SIZE = 5 * 1024 * 1024
#: Multipart part size of uploads unless the constructor says otherwise.
DEFAULT_PART_SIZE = 16 * 1024 * 1024

_BUCKET_EXISTS = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
_MISSING = ("NoSuchKey", "NoSuchObject", "NotFound")


class S3ArtifactStore:
    """Artifacts in an S3 bucket (MinIO or any S3-compatible store), self-sufficient.

    Objects in the bucket:

    - ``artifacts/<artifact_id>.json``: the artifact's metadata (name, media type, metadata,
      run/node ids, sha256, size, ``created_at_us``) and where its bytes are: inline (base64,
      for content of at most 64 KiB stored with `store()`), or the key of the object holding
      them;
    - ``runs/<run_id, percent-encoded>/<artifact_id>.json``: the same metadata without inline
      bytes, one per artifact of the run; artifact ids are UUIDv7 (time-ordered), so one
      prefix listing gives a run's artifacts in store order;
    - ``blobs/<sha256>``: content above 64 KiB stored with `store()` (the hash is known before
      upload), once per distinct content: an upload is skipped when the object exists;
    - ``uploads/<artifact_id>``: content of `store_stream()`, uploaded as it arrives
      (multipart, `part_size` parts, `parallel_parts` of them in flight while the next one
      fills) and hashed on the way: at most ``(parallel_parts + 1) x part_size`` bytes of it
      are in memory at once (48 MiB with the defaults), whatever its size.

    The metadata object is written after the bytes, and the run listing entry after the
    metadata, so nothing is visible before it is complete; a stream that fails aborts its
    multipart upload (and removes any object it left), so it leaves nothing behind.

    Every SDK call runs on the store's own thread pool, never on the event loop nor on the
    loop's default executor. The constructor does no I/O; the bucket is created on first use
    (tolerating a concurrent creation). The SDK's HTTP pool uses short connect timeouts and
    few retries, so an unreachable server raises `StoreUnavailableError` within seconds.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str = "dagwire-artifacts",
        secure: bool = False,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        parallel_parts: int = 2,
        io_threads: int = 16,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        retries: int = 2,
    ) -> None:
        """Describe the store; does no I/O.

        Args:
            endpoint: ``host:port``, or a URL ``http://host:port`` / ``https://host:port``
                (the scheme decides TLS, overriding `secure`).
            access_key: the S3 access key.
            secret_key: the S3 secret key.
            bucket: the bucket (created on first use if missing).
            secure: use TLS when `endpoint` has no scheme.
            part_size: multipart part size for uploads (at least 5 MiB).
            parallel_parts: parts of one streamed upload sent at once while the next one is
                received; a streamed upload holds ``parallel_parts + 1`` parts in memory.
            io_threads: size of the store's thread pool (and of its HTTP connection pool).
            connect_timeout: seconds to establish a connection.
            read_timeout: seconds to wait for the server's answer to one request.
            retries: retries of a failed connection or a 5xx answer (with a short backoff).

        Raises:
            ValueError: `endpoint` is not ``host:port`` or a URL without path and query,
                `part_size` is below 5 MiB, or `parallel_parts` below 1.
        """
        self._host, self._secure = _parse_endpoint(endpoint, secure)
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least 5 MiB ({MIN_PART_SIZE}), not {part_size}")
        if parallel_parts < 1:
            raise ValueError(f"parallel_parts must be at least 1, not {parallel_parts}")
        self._parallel_parts = parallel_parts
        self._access_key = access_key
        self._secret_key = secret_key
        self._bucket = bucket
        self._part_size = part_size
        self._io_threads = io_threads
        self._timeout = Timeout(connect=connect_timeout, read=read_timeout)
        self._retries = retries
        self._client: Minio | None = None
        self._http: urllib3.PoolManager | None = None
        self._io: ThreadPoolExecutor | None = None
        self._bucket_ready: asyncio.Future[None] | None = None

    @property
    def bucket(self) -> str:
        """The bucket this store keeps everything in."""
        return self._bucket

    @property
    def endpoint(self) -> str:
        """``http(s)://host:port`` of the server (no credentials)."""
        return f"{'https' if self._secure else 'http'}://{self._host}"

    async def store(self, artifact: Artifact) -> Artifact:
        """Store an artifact whose `content` is in memory.

        Content of at most 64 KiB goes inline into the metadata object; larger content goes
        to ``blobs/<sha256>``, uploaded only when no object has that key yet.

        Args:
            artifact: `content` must be set; the value is not mutated.

        Returns:
            A filled copy: `artifact_id`, `sha256`, `size`, `created_at` (content kept).

        Raises:
            ValueError: `content` is None or a field is invalid (the message names it).
            StoreUnavailableError: the server did not answer.
        """
        content = artifact.content
        if content is None:
            raise ValueError(
                "artifact content is None: store() needs the bytes (use store_stream())"
            )
        if not isinstance(content, bytes | bytearray | memoryview):
            raise ValueError(f"artifact content must be bytes, not {type(content).__name__}")
        checked = check_artifact(artifact)
        data = bytes(content)
        await self._ensure_bucket()
        if len(data) <= INLINE_LIMIT:
            sha256 = hashlib.sha256(data).hexdigest()
            key: str | None = None
        else:
            sha256 = await self._run(_sha256, data)
            key = f"blobs/{sha256}"
            await self._run(self._put_blob, key, data, checked.media_type)
        stored = dataclasses.replace(
            checked, artifact_id=new_id(), sha256=sha256, size=len(data), created_at=utc_now()
        )
        inline = data if key is None else None
        await self._run(self._put_metadata, stored, key, inline)
        return stored

    async def store_stream(self, artifact: Artifact, chunks: AsyncIterable[bytes]) -> Artifact:
        """Store an artifact from a stream of chunks, holding at most `parallel_parts` + 1 parts.

        The bytes go to ``uploads/<artifact_id>`` as they arrive (multipart: each full part
        is sent on the store's threads while the next one is received, at most
        `parallel_parts` at once; content smaller than one part is one plain object), hashed
        on the way; the metadata is written once the upload completed. Memory is at most
        ``(parallel_parts + 1) x part_size`` (see `dagwire.stores._s3_stream`). If `chunks`
        raises (or the call is cancelled), the upload is aborted and nothing becomes visible.

        Args:
            artifact: metadata; `content` must be None.
            chunks: the content, in order.

        Returns:
            A filled copy with `content=None`.

        Raises:
            ValueError: `content` is set or a field is invalid.
            StoreUnavailableError: the server did not answer.
            Exception: whatever `chunks` raised.
        """
        if artifact.content is not None:
            raise ValueError("artifact content must be None for store_stream(); pass chunks")
        checked = check_artifact(artifact)
        await self._ensure_bucket()
        artifact_id = new_id()
        key = f"uploads/{artifact_id}"
        writer = MultipartWriter(
            _ObjectUpload(self, key, checked.media_type),
            self._get_io(),
            part_size=self._part_size,
            parallel=self._parallel_parts,
        )
        try:
            async for chunk in chunks:
                await writer.write(chunk)
            sha256 = await writer.finish()
            stored = dataclasses.replace(
                checked,
                artifact_id=artifact_id,
                sha256=sha256,
                size=writer.size,
                created_at=utc_now(),
            )
            await asyncio.shield(self._run(self._put_metadata, stored, key, None))
        except BaseException:
            await asyncio.shield(self._discard_upload(writer, key))
            raise
        return stored

    async def load(self, artifact_id: str) -> Artifact:
        """The artifact with its `content`.

        Args:
            artifact_id: an id `store()` or `store_stream()` returned.

        Returns:
            The stored artifact, `content` set.

        Raises:
            NotFoundError: no artifact has this id (or its bytes are missing).
            StoreUnavailableError: the server did not answer.
        """
        meta, key, inline = await self._read_metadata(artifact_id)
        if key is None:
            return dataclasses.replace(meta, content=inline or b"")
        content = await self._run(self._get_all, key, meta)
        return dataclasses.replace(meta, content=content)

    async def stat(self, artifact_id: str) -> Artifact:
        """The artifact's metadata with `content=None` (one small read).

        Args:
            artifact_id: an id `store()` or `store_stream()` returned.

        Returns:
            The stored artifact without content.

        Raises:
            NotFoundError: no artifact has this id.
            StoreUnavailableError: the server did not answer.
        """
        meta, _, _ = await self._read_metadata(artifact_id)
        return meta

    async def open(self, artifact_id: str) -> AsyncIterator[bytes]:
        """The artifact's content in chunks of at most 1 MiB, read on the store's threads.

        The lookup happens on the first iteration: an unknown id raises `NotFoundError` from
        the first `__anext__()` (call `stat()` first to fail earlier).

        Args:
            artifact_id: an id `store()` or `store_stream()` returned.

        Yields:
            Successive chunks of the content (none for empty content).

        Raises:
            NotFoundError: no artifact has this id (or its bytes are missing).
            StoreUnavailableError: the server did not answer.
        """
        meta, key, inline = await self._read_metadata(artifact_id)
        if key is None:
            data = inline or b""
            for start in range(0, len(data), CHUNK_SIZE):
                yield data[start : start + CHUNK_SIZE]
            return
        response = await self._run(self._get_response, key, meta)
        io = self._get_io()
        # One chunk read ahead: the next read runs on a thread while the caller sends this one.
        pending = io.submit(self._read_chunk, response)
        try:
            while chunk := await asyncio.wrap_future(pending):
                pending = io.submit(self._read_chunk, response)
                yield chunk
        finally:
            await asyncio.shield(_release_after(pending, io, response))

    async def list(self, run_id: str) -> builtins.list[Artifact]:
        """Every artifact stored for `run_id`, in store order, with `content=None`.

        Args:
            run_id: the run whose artifacts to list.

        Returns:
            The artifacts (empty for an unknown run).

        Raises:
            StoreUnavailableError: the server did not answer.
        """
        if not check_lookup_id(run_id, "run"):
            return []
        await self._ensure_bucket()
        keys = await self._run(self._list_keys, f"runs/{quote(run_id, safe='')}/")
        docs = await asyncio.gather(*(self._run(self._get_json, key) for key in keys))
        return [_artifact_of(doc) for doc in docs if doc is not None]

    async def list_page(
        self, run_id: str, *, after: str | None = None, limit: int = 50
    ) -> builtins.list[Artifact]:
        """Up to `limit` artifacts of `run_id` after the id `after`, in `list` order (by id).

        Keyset paging: the listing starts after the key of `after` and stops at `limit`
        keys, so a page reads only its own metadata objects.

        Raises:
            ValueError: `limit` is below 1.
            StoreUnavailableError: the server did not answer.
        """
        check_limit(limit)
        if not check_lookup_id(run_id, "run"):
            return []
        await self._ensure_bucket()
        prefix = f"runs/{quote(run_id, safe='')}/"
        start = f"{prefix}{after}.json" if after is not None else None
        keys = await self._run(self._list_keys_page, prefix, start, limit)
        docs = await asyncio.gather(*(self._run(self._get_json, key) for key in keys))
        return [_artifact_of(doc) for doc in docs if doc is not None]

    async def aclose(self) -> None:
        """Stop the store's threads and drop its connections (it reopens on next use)."""
        io, self._io = self._io, None
        client, self._client = self._client, None
        self._bucket_ready = None
        http, self._http = self._http, None
        del client
        if io is not None:
            io.shutdown(wait=False)
        if http is not None:
            http.clear()  # close idle sockets now

    # ------------------------------------------------------------------ event-loop side

    def _get_io(self) -> ThreadPoolExecutor:
        if self._io is None:
            self._io = ThreadPoolExecutor(
                max_workers=self._io_threads, thread_name_prefix="dagwire-s3"
            )
        return self._io

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._get_io(), fn, *args)

    async def _ensure_bucket(self) -> None:
        ready = self._bucket_ready
        if ready is None or (ready.done() and (ready.cancelled() or ready.exception())):
            ready = self._bucket_ready = asyncio.ensure_future(self._run(self._make_bucket))
        await asyncio.shield(ready)

    async def _read_metadata(self, artifact_id: str) -> tuple[Artifact, str | None, bytes | None]:
        if not check_lookup_id(artifact_id, "artifact"):
            raise _artifact_not_found(artifact_id)
        await self._ensure_bucket()
        doc = await self._run(self._get_json, _metadata_key(artifact_id))
        if doc is None:
            raise _artifact_not_found(artifact_id)
        inline = doc.get("inline")
        return (
            _artifact_of(doc),
            doc.get("object"),
            None if inline is None else base64.b64decode(inline),
        )

    async def _discard_upload(self, writer: MultipartWriter, key: str) -> None:
        """Abort an abandoned upload (after its parts in flight), then remove any object."""
        await writer.abort()
        with contextlib.suppress(Exception):  # best effort: an upload object is never listed
            await self._run(self._remove, key)

    # ------------------------------------------------------------------ SDK side (threads)

    def _minio(self) -> Minio:
        client = self._client
        if client is None:
            http = urllib3.PoolManager(
                timeout=self._timeout,
                maxsize=self._io_threads,
                cert_reqs="CERT_REQUIRED",
                ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
                retries=Retry(
                    total=self._retries,
                    connect=self._retries,
                    read=1,
                    backoff_factor=0.2,
                    status_forcelist=[500, 502, 503, 504],
                ),
            )
            self._http = http
            client = self._client = Minio(
                endpoint=self._host,
                access_key=self._access_key,
                secret_key=self._secret_key,
                secure=self._secure,
                http_client=http,
            )
        return client

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except S3Error as exc:
            if exc.response is None or exc.response.status < 500:
                raise
            raise StoreUnavailableError(
                f"S3 store at {self.endpoint} failed while {what} ({exc.code}: {exc.message})"
            ) from exc
        except (HTTPError, OSError, ServerError) as exc:
            raise StoreUnavailableError(
                f"S3 store at {self.endpoint} is unavailable while {what} "
                f"({type(exc).__name__}: {_first_line(exc)}); check that the server runs"
            ) from exc
        except MinioException as exc:
            raise StoreUnavailableError(
                f"S3 store at {self.endpoint} answered badly while {what}: {_first_line(exc)}"
            ) from exc

    def _make_bucket(self) -> None:
        client = self._minio()
        with self._errors(f"creating bucket {self._bucket!r}"):
            if client.bucket_exists(bucket_name=self._bucket):
                return
            try:
                client.make_bucket(bucket_name=self._bucket)
            except S3Error as exc:
                if exc.code not in _BUCKET_EXISTS:
                    raise

    def _put_blob(self, key: str, data: bytes, media_type: str) -> None:
        client = self._minio()
        with self._errors(f"storing {key}"):
            try:
                stat = client.stat_object(bucket_name=self._bucket, object_name=key)
            except S3Error as exc:
                if exc.code not in _MISSING:
                    raise
            else:
                if stat.size == len(data):
                    return  # the same content is already there
            client.put_object(
                bucket_name=self._bucket,
                object_name=key,
                data=io.BytesIO(data),
                length=len(data),
                content_type=media_type,
                part_size=self._part_size,
                num_parallel_uploads=1,
            )

    # The streamed-upload calls below use the SDK's own (underscore) methods for the S3
    # operations: its public put_object cannot send a part from a reused buffer nor overlap
    # receiving the next part with sending this one (see dagwire.stores._s3_stream). A buffer
    # is what the SDK hashes and urllib3 sends, so no bytes copy is made. The SDK is pinned.

    def _put_view(self, key: str, data: memoryview, media_type: str) -> None:
        with self._errors(f"uploading {key}"):
            self._minio()._put_object(
                self._bucket, key, cast(bytes, data), headers={"Content-Type": media_type}
            )

    def _create_multipart(self, key: str, media_type: str) -> str:
        with self._errors(f"starting the upload of {key}"):
            return self._minio()._create_multipart_upload(
                self._bucket, key, {"Content-Type": media_type}
            )

    def _upload_part(self, key: str, upload_id: str, number: int, data: memoryview) -> str:
        with self._errors(f"uploading part {number} of {key}"):
            return self._minio()._upload_part(
                self._bucket, key, cast(bytes, data), None, upload_id, number
            )

    def _complete_multipart(
        self, key: str, upload_id: str, parts: builtins.list[tuple[int, str]]
    ) -> None:
        with self._errors(f"completing the upload of {key}"):
            self._minio()._complete_multipart_upload(
                self._bucket, key, upload_id, [Part(number, etag) for number, etag in parts]
            )

    def _abort_multipart(self, key: str, upload_id: str) -> None:
        with self._errors(f"aborting the upload of {key}"):
            self._minio()._abort_multipart_upload(self._bucket, key, upload_id)

    def _put_metadata(self, artifact: Artifact, key: str | None, inline: bytes | None) -> None:
        assert artifact.artifact_id is not None
        doc = _metadata_doc(artifact, key)
        listing = json.dumps(doc, ensure_ascii=False).encode()
        if inline is not None:
            doc["inline"] = base64.b64encode(inline).decode("ascii")
        full = listing if inline is None else json.dumps(doc, ensure_ascii=False).encode()
        self._put_small(_metadata_key(artifact.artifact_id), full)
        if artifact.run_id is not None:
            run_key = f"runs/{quote(artifact.run_id, safe='')}/{artifact.artifact_id}.json"
            self._put_small(run_key, listing)

    def _put_small(self, key: str, body: bytes) -> None:
        with self._errors(f"writing {key}"):
            self._minio().put_object(
                bucket_name=self._bucket,
                object_name=key,
                data=io.BytesIO(body),
                length=len(body),
                content_type="application/json",
            )

    def _get_json(self, key: str) -> dict[str, Any] | None:
        with self._errors(f"reading {key}"):
            try:
                response = self._minio().get_object(bucket_name=self._bucket, object_name=key)
            except S3Error as exc:
                if exc.code in _MISSING:
                    return None
                raise
            try:
                body = response.read()
            finally:
                _release(response)
        doc: dict[str, Any] = json.loads(body)
        return doc

    def _get_response(self, key: str, meta: Artifact) -> Any:
        with self._errors(f"reading {key}"):
            try:
                return self._minio().get_object(bucket_name=self._bucket, object_name=key)
            except S3Error as exc:
                if exc.code in _MISSING:
                    raise _content_missing(meta, key) from None
                raise

    def _read_chunk(self, response: Any) -> bytes:
        with self._errors("reading content"):
            data: bytes = response.read(amt=CHUNK_SIZE)
        return data

    def _get_all(self, key: str, meta: Artifact) -> bytes:
        response = self._get_response(key, meta)
        try:
            with self._errors(f"reading {key}"):
                data: bytes = response.read()
        finally:
            _release(response)
        return data

    def _list_keys(self, prefix: str) -> builtins.list[str]:
        with self._errors(f"listing {prefix}"):
            objects = self._minio().list_objects(
                bucket_name=self._bucket, prefix=prefix, recursive=True
            )
            return sorted(o.object_name for o in objects if o.object_name is not None)

    def _list_keys_page(
        self, prefix: str, start_after: str | None, limit: int
    ) -> builtins.list[str]:
        keys: builtins.list[str] = []
        with self._errors(f"listing {prefix}"):
            objects = self._minio().list_objects(
                bucket_name=self._bucket, prefix=prefix, recursive=True, start_after=start_after
            )
            for item in objects:  # S3 lists keys in order; stop once the page is full
                if item.object_name is not None:
                    keys.append(item.object_name)
                    if len(keys) >= limit:
                        break
        return keys

    def _remove(self, key: str) -> None:
        with self._errors(f"removing {key}"):
            self._minio().remove_object(bucket_name=self._bucket, object_name=key)


# ---------------------------------------------------------------------- helpers


class _ObjectUpload:
    """The `PartTarget` of one streamed upload: `S3ArtifactStore`'s calls for one key."""

    def __init__(self, store: S3ArtifactStore, key: str, media_type: str) -> None:
        self._store = store
        self._key = key
        self._media_type = media_type

    def put_whole(self, data: memoryview) -> None:
        self._store._put_view(self._key, data, self._media_type)

    def create(self) -> str:
        return self._store._create_multipart(self._key, self._media_type)

    def upload_part(self, upload_id: str, number: int, data: memoryview) -> str:
        return self._store._upload_part(self._key, upload_id, number, data)

    def complete(self, upload_id: str, parts: list[tuple[int, str]]) -> None:
        self._store._complete_multipart(self._key, upload_id, parts)

    def abort(self, upload_id: str) -> None:
        self._store._abort_multipart(self._key, upload_id)


async def _release_after(pending: Future[bytes], io: ThreadPoolExecutor, response: Any) -> None:
    """Close a download once its read-ahead (on a thread) is over."""
    await asyncio.wait([asyncio.wrap_future(pending)])
    await in_thread(io, _release, response)


def _parse_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """``(host:port, secure)`` from ``host:port`` or an ``http(s)://host:port`` URL."""
    if not isinstance(endpoint, str) or not endpoint:
        raise ValueError(f"endpoint must be 'host:port' or a URL, got {endpoint!r}")
    if "://" not in endpoint:
        if "/" in endpoint or "?" in endpoint or "#" in endpoint or "@" in endpoint:
            raise ValueError(
                f"endpoint {endpoint!r} must be 'host:port' (or a URL 'http://host:port')"
            )
        return endpoint, secure
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"endpoint {endpoint!r}: the scheme must be http or https")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"endpoint {endpoint!r} must not have a path or query (bucket is separate)"
        )
    if parts.username or parts.password or not parts.hostname:
        raise ValueError(f"endpoint {endpoint!r} must be http(s)://host:port without credentials")
    return parts.netloc, parts.scheme == "https"


def _metadata_key(artifact_id: str) -> str:
    return f"artifacts/{quote(artifact_id, safe='')}.json"


def _metadata_doc(artifact: Artifact, key: str | None) -> dict[str, Any]:
    assert artifact.created_at is not None
    return {
        "artifact_id": artifact.artifact_id,
        "run_id": artifact.run_id,
        "node_id": artifact.node_id,
        "name": artifact.name,
        "media_type": artifact.media_type,
        "metadata": artifact.metadata,
        "sha256": artifact.sha256,
        "size": artifact.size,
        "created_at_us": to_micros(artifact.created_at, "created_at"),
        "object": key,
    }


def _artifact_of(doc: dict[str, Any]) -> Artifact:
    return Artifact(
        name=doc["name"],
        content=None,
        media_type=doc["media_type"],
        metadata=dict(doc["metadata"]),
        artifact_id=doc["artifact_id"],
        run_id=doc["run_id"],
        node_id=doc["node_id"],
        sha256=doc["sha256"],
        size=doc["size"],
        created_at=from_micros(doc["created_at_us"]),
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _release(response: Any) -> None:
    response.close()
    response.release_conn()


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:300] if text else "no details"


def _artifact_not_found(artifact_id: str) -> NotFoundError:
    return NotFoundError(f"artifact {artifact_id!r} not found", kind="artifact", id=artifact_id)


def _content_missing(meta: Artifact, key: str) -> NotFoundError:
    artifact_id = meta.artifact_id or ""
    return NotFoundError(
        f"artifact {artifact_id!r}: its content ({key}) is missing from the bucket",
        kind="artifact",
        id=artifact_id,
    )
