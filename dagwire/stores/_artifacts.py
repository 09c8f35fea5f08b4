"""`LocalArtifactStore`: artifacts as content-addressed files plus a SQLite index."""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import json
import os
import sqlite3
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from dagwire.errors import NotFoundError
from dagwire.limits import ARTIFACT_CHUNK_BYTES
from dagwire.models import Artifact, utc_now
from dagwire.stores._files import CHUNK_SIZE, TempBlob, blob_path, sweep_temp_files, write_blob
from dagwire.stores._ids import new_id
from dagwire.stores._sqlite import SqliteDatabase, Synchronous
from dagwire.stores._validate import (
    check_artifact,
    check_limit,
    check_lookup_id,
    from_micros,
    to_micros,
)

__all__ = ["LocalArtifactStore"]

T = TypeVar("T")

_ARTIFACT_SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    seq INTEGER PRIMARY KEY,
    artifact_id TEXT NOT NULL UNIQUE,
    run_id TEXT,
    node_id TEXT,
    name TEXT NOT NULL,
    media_type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_by_run ON artifacts (run_id, seq);
"""

#: Most bytes `open()` yields at once: just under 1 MiB, so that the store service sends each
#: chunk as one gRPC message of at most 1 MiB (larger ones stream several times slower).
READ_CHUNK_SIZE = ARTIFACT_CHUNK_BYTES

_ARTIFACT_COLUMNS = (
    "artifact_id, run_id, node_id, name, media_type, metadata, sha256, size, created_at"
)


class LocalArtifactStore:
    """Artifacts under a directory: content-addressed blob files plus a SQLite metadata index.

    Layout under `root`: ``blobs/<sha[:2]>/<sha256>`` holds each distinct content once;
    ``index.sqlite3`` (WAL) holds one row per stored artifact (id, name, media type, metadata,
    run/node ids, sha256, size, created_at), indexed by run; ``tmp/`` holds streamed uploads
    in progress.

    Durability: a blob is written to a temp file in its final directory, flushed, fsynced,
    renamed into place and its directory fsynced before its index row is committed. The index
    runs with ``synchronous=NORMAL`` by default: when `store()` returns, the artifact survives
    a crash of the process (``synchronous="FULL"`` adds power loss, at an fsync per commit).
    A crash never leaves a torn blob, and the index never names a missing blob. A crash
    mid-upload may leave an unreferenced temp file or blob behind, never a visible partial
    artifact. Index writes from concurrent callers are group
    committed (one transaction per batch).

    All file I/O runs on the store's own thread pool and all SQLite calls on one dedicated
    thread, never on the event loop (nor on the loop's default executor). The constructor does
    no I/O; directories and the index are created on first use. After `aclose()` the store
    can be used again: it reopens lazily.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        io_threads: int = 8,
        synchronous: Synchronous = "NORMAL",
    ) -> None:
        """Describe the store; does no I/O.

        Args:
            root: directory holding blobs and the index (created on first use).
            io_threads: size of the store's file I/O thread pool.
            synchronous: SQLite ``PRAGMA synchronous`` of the index (see the class docstring).
        """
        self._root = Path(root)
        self._blobs = self._root / "blobs"
        self._tmp = self._root / "tmp"
        self._io_threads = io_threads
        self._io: ThreadPoolExecutor | None = None
        self._index = SqliteDatabase(
            self._root / "index.sqlite3",
            schema=_ARTIFACT_SCHEMA,
            synchronous=synchronous,
            thread_name="dagwire-artifact-index",
        )

    @property
    def root(self) -> Path:
        """The directory this store keeps everything under."""
        return self._root

    async def store(self, artifact: Artifact) -> Artifact:
        """Store an artifact whose `content` is in memory (see `ArtifactStore.store`).

        Args:
            artifact: `content` must be set; the value is not mutated.

        Returns:
            A filled copy: `artifact_id`, `sha256`, `size`, `created_at` (content kept).

        Raises:
            ValueError: `content` is None or a field is invalid (the message names it).
        """
        content = artifact.content
        if content is None:
            raise ValueError(
                "artifact content is None: store() needs the bytes (use store_stream())"
            )
        if not isinstance(content, bytes | bytearray | memoryview):
            raise ValueError(f"artifact content must be bytes, not {type(content).__name__}")
        checked = check_artifact(artifact)
        sha256, size = await self._run_io(write_blob, self._blobs, bytes(content))
        stored = dataclasses.replace(
            checked, artifact_id=new_id(), sha256=sha256, size=size, created_at=utc_now()
        )
        await self._index.write(partial(_insert_artifact, _artifact_row(stored)))
        return stored

    async def store_stream(self, artifact: Artifact, chunks: AsyncIterable[bytes]) -> Artifact:
        """Store an artifact from a stream of chunks, holding at most ~2 MiB in memory.

        Chunks are coalesced into 1 MiB writes to a temp file (hashed as written); the file
        is renamed to its sha256 once the stream ends. If `chunks` raises (or the call is
        cancelled), the temp file is removed and nothing becomes visible.

        Args:
            artifact: metadata; `content` must be None.
            chunks: the content, in order.

        Returns:
            A filled copy with `content=None`.

        Raises:
            ValueError: `content` is set or a field is invalid.
            Exception: whatever `chunks` raised.
        """
        if artifact.content is not None:
            raise ValueError("artifact content must be None for store_stream(); pass chunks")
        checked = check_artifact(artifact)
        loop = asyncio.get_running_loop()
        io = self._get_io()
        upload = await loop.run_in_executor(io, TempBlob, self._tmp)
        in_flight: asyncio.Future[None] | None = None
        try:
            buffer = bytearray()
            async for chunk in chunks:
                buffer += chunk
                if len(buffer) >= CHUNK_SIZE:
                    if in_flight is not None:
                        await in_flight  # one write at a time, in order
                    in_flight = loop.run_in_executor(io, upload.write, buffer)
                    buffer = bytearray()
            if in_flight is not None:
                await in_flight
                in_flight = None
            if buffer:
                await loop.run_in_executor(io, upload.write, buffer)
            sha256, size = await loop.run_in_executor(io, upload.commit, self._blobs)
        except BaseException:
            await _discard(loop, io, upload, in_flight)
            raise
        stored = dataclasses.replace(
            checked, artifact_id=new_id(), sha256=sha256, size=size, created_at=utc_now()
        )
        await self._index.write(partial(_insert_artifact, _artifact_row(stored)))
        return stored

    async def load(self, artifact_id: str) -> Artifact:
        """The artifact with its `content`.

        Args:
            artifact_id: an id `store()` or `store_stream()` returned.

        Returns:
            The stored artifact, `content` set.

        Raises:
            NotFoundError: no artifact has this id, or its blob is missing from disk.
        """
        meta = await self.stat(artifact_id)
        content = await self._run_io(self._read_blob, meta)
        return dataclasses.replace(meta, content=content)

    async def stat(self, artifact_id: str) -> Artifact:
        """The artifact's metadata with `content=None`.

        Args:
            artifact_id: an id `store()` or `store_stream()` returned.

        Returns:
            The stored artifact without content.

        Raises:
            NotFoundError: no artifact has this id.
        """
        if not check_lookup_id(artifact_id, "artifact"):
            raise _artifact_not_found(artifact_id)
        row = await self._index.read(partial(_select_artifact, artifact_id))
        if row is None:
            raise _artifact_not_found(artifact_id)
        return row

    async def open(self, artifact_id: str) -> AsyncIterator[bytes]:
        """The artifact's content in chunks of at most 1 MiB, read on the store's threads.

        The lookup happens on the first iteration: an unknown id raises `NotFoundError` from
        the first `__anext__()` (call `stat()` first to fail earlier). One chunk is read ahead
        while the caller handles the previous one, so at most two are in memory.

        Args:
            artifact_id: an id `store()` or `store_stream()` returned.

        Yields:
            Successive chunks of the content (none for empty content).

        Raises:
            NotFoundError: no artifact has this id, or its blob is missing from disk.
        """
        meta = await self.stat(artifact_id)
        file = await self._run_io(self._open_blob, meta)
        io = self._get_io()
        # One chunk read ahead: the next read runs on a thread while the caller uses this one.
        pending = io.submit(file.read, READ_CHUNK_SIZE)
        try:
            while chunk := await asyncio.wrap_future(pending):
                pending = io.submit(file.read, READ_CHUNK_SIZE)
                yield chunk
        finally:
            await asyncio.wait([asyncio.wrap_future(pending)])  # never close under a read
            file.close()  # a read-only close does no I/O worth an executor hop

    async def list(self, run_id: str) -> builtins.list[Artifact]:
        """Every artifact stored for `run_id`, in store order, with `content=None`.

        Args:
            run_id: the run whose artifacts to list.

        Returns:
            The artifacts (empty for an unknown run).
        """
        if not check_lookup_id(run_id, "run"):
            return []
        return await self._index.read(partial(_select_run_artifacts, run_id))

    async def sweep_stale_uploads(self) -> int:
        """Remove temp files of uploads cut off by a crash (the store service calls this at
        start-up); returns how many were removed. Uploads of live processes are left alone.
        """

        def sweep() -> int:
            directories = [self._tmp]
            if self._blobs.is_dir():  # write_blob's temp files sit beside their blob
                directories += [d for d in self._blobs.iterdir() if d.is_dir()]
            return sweep_temp_files(directories)

        return await self._run_io(sweep)

    async def list_page(
        self, run_id: str, *, after: str | None = None, limit: int = 50
    ) -> builtins.list[Artifact]:
        """Up to `limit` artifacts of `run_id` after the artifact `after`, in `list` order.

        Keyset paging on the `artifacts_by_run` index (see `PagedArtifactStore.list_page`).

        Raises:
            NotFoundError: `after` is no artifact of this run.
            ValueError: `limit` is below 1.
        """
        check_limit(limit)
        if not check_lookup_id(run_id, "run"):
            return []
        if after is not None and not check_lookup_id(after, "artifact"):
            raise _artifact_not_found(after)
        return await self._index.read(partial(_select_run_artifacts_page, run_id, after, limit))

    async def aclose(self) -> None:
        """Commit pending index writes, close the index and stop the I/O threads."""
        io, self._io = self._io, None
        try:
            await self._index.aclose()
        finally:
            if io is not None:
                io.shutdown(wait=False)

    # ------------------------------------------------------------------ internals

    def _get_io(self) -> ThreadPoolExecutor:
        if self._io is None:
            self._io = ThreadPoolExecutor(
                max_workers=self._io_threads, thread_name_prefix="dagwire-artifact-io"
            )
        return self._io

    async def _run_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._get_io(), fn, *args)

    def _blob_of(self, meta: Artifact) -> Path:
        assert meta.sha256 is not None
        return blob_path(self._blobs, meta.sha256)

    def _read_blob(self, meta: Artifact) -> bytes:
        try:
            return self._blob_of(meta).read_bytes()
        except FileNotFoundError:
            raise _blob_missing(meta, self._root) from None

    def _open_blob(self, meta: Artifact) -> BinaryIO:
        try:
            return self._blob_of(meta).open("rb")
        except FileNotFoundError:
            raise _blob_missing(meta, self._root) from None


# ---------------------------------------------------------------------- artifact helpers


def _artifact_row(artifact: Artifact) -> tuple[Any, ...]:
    assert artifact.created_at is not None
    return (
        artifact.artifact_id,
        artifact.run_id,
        artifact.node_id,
        artifact.name,
        artifact.media_type,
        json.dumps(artifact.metadata, ensure_ascii=False),
        artifact.sha256,
        artifact.size,
        to_micros(artifact.created_at, "created_at"),
    )


def _artifact_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Artifact:
    artifact_id, run_id, node_id, name, media_type, metadata, sha256, size, created = row
    return Artifact(
        name=name,
        content=None,
        media_type=media_type,
        metadata=json.loads(metadata),
        artifact_id=artifact_id,
        run_id=run_id,
        node_id=node_id,
        sha256=sha256,
        size=size,
        created_at=from_micros(created),
    )


def _insert_artifact(row: tuple[Any, ...], conn: sqlite3.Connection) -> None:
    conn.execute(
        f"INSERT INTO artifacts ({_ARTIFACT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row
    )


def _select_artifact(artifact_id: str, conn: sqlite3.Connection) -> Artifact | None:
    row = conn.execute(
        f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts WHERE artifact_id = ?", (artifact_id,)
    ).fetchone()
    return None if row is None else _artifact_from_row(row)


def _select_run_artifacts(run_id: str, conn: sqlite3.Connection) -> list[Artifact]:
    rows = conn.execute(
        f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts WHERE run_id = ? ORDER BY seq", (run_id,)
    )
    return [_artifact_from_row(row) for row in rows]


def _select_run_artifacts_page(
    run_id: str, after: str | None, limit: int, conn: sqlite3.Connection
) -> list[Artifact]:
    seq = 0
    if after is not None:
        row = conn.execute(
            "SELECT seq FROM artifacts WHERE artifact_id = ? AND run_id = ?", (after, run_id)
        ).fetchone()
        if row is None:
            raise _artifact_not_found(after)
        seq = row[0]
    rows = conn.execute(
        f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts WHERE run_id = ? AND seq > ?"
        " ORDER BY seq LIMIT ?",
        (run_id, seq, limit),
    )
    return [_artifact_from_row(row) for row in rows]


def _artifact_not_found(artifact_id: str) -> NotFoundError:
    return NotFoundError(f"artifact {artifact_id!r} not found", kind="artifact", id=artifact_id)


def _blob_missing(meta: Artifact, root: Path) -> NotFoundError:
    artifact_id = meta.artifact_id or ""
    return NotFoundError(
        f"artifact {artifact_id!r}: its content (sha256 {meta.sha256}) is missing under {root}",
        kind="artifact",
        id=artifact_id,
    )


async def _discard(
    loop: asyncio.AbstractEventLoop,
    io: ThreadPoolExecutor,
    upload: TempBlob,
    in_flight: asyncio.Future[None] | None,
) -> None:
    """Remove a failed upload's temp file; runs to completion even if the caller is cancelled."""
    if in_flight is not None:
        in_flight.cancel()  # a write already running finishes first: TempBlob serializes calls
        if in_flight.done() and not in_flight.cancelled():
            in_flight.exception()  # retrieved: the upload is abandoned anyway
    await asyncio.shield(loop.run_in_executor(io, upload.discard))
