"""`TieredArtifactStore`: small artifacts inline in MongoDB, everything else in an S3 store."""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Sequence

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from dagwire.limits import STORED_INLINE_BYTES
from dagwire.models import Artifact, utc_now
from dagwire.stores._ids import new_id
from dagwire.stores._mongo_client import (
    OUTAGE_ERRORS,
    client_options,
    raise_unavailable,
    server_name,
    unavailable,
)
from dagwire.stores._mongo_codec import Doc, artifact_doc, artifact_from_doc
from dagwire.stores._mongo_writer import GroupWriter, Write
from dagwire.stores._validate import check_artifact, check_limit, check_lookup_id
from dagwire.stores.base import ArtifactStore, PagedArtifactStore

__all__ = ["INLINE_LIMIT", "TieredArtifactStore"]

#: Content of at most this many bytes, stored with `store()`, is kept inline in MongoDB.
INLINE_LIMIT = STORED_INLINE_BYTES
#: The collection holding inline artifacts (in the execution store's database).
COLLECTION = "artifacts"
#: Index serving `list(run_id)` in store order (artifact ids are time-ordered UUIDv7).
_RUN_INDEX = ("run_id_id", [("run_id", ASCENDING), ("_id", ASCENDING)])
#: Reads that must not carry the bytes.
_NO_CONTENT = {"content": 0}


class TieredArtifactStore:
    """Artifacts of at most 64 KiB inline in a MongoDB collection, the rest in another store.

    docs/contracts.md §6 lets small artifacts live with their metadata in the database: a small
    output
    then costs one (group-committed) ``insert_many`` instead of S3 object writes. Layout:

    - ``artifacts`` (in `database`, next to ``runs`` and ``executions``): one document per
      artifact whose content of at most `inline_limit` bytes was given to `store()` or
      `store_many()`: ``_id`` = artifact id, run/node ids, name, media type, metadata (keys
      escaped as the execution store escapes map keys), sha256, size, ``created_at_us`` (exact)
      and ``created_at`` (a BSON date), and ``content`` (BSON binary). Index ``(run_id, _id)``
      serves `list()`.
    - everything larger, and every `store_stream()` upload whatever its size (its size is
      unknown until its end, and a stream is never buffered to find out), goes to `large`
      (an `S3ArtifactStore`), which keeps its own metadata.

    `load`/`stat`/`open` look an id up in MongoDB first (one ``_id`` lookup) and then ask
    `large`; `list` merges both, ordered by artifact id (= store order). Both tiers draw ids
    from the same time-ordered generator, so the merge keeps store order.

    Writes are group committed (`dagwire.stores._mongo_writer.GroupWriter`): concurrent
    `store()` calls and one `store_many()` share one ``insert_many``. Inserts are not affected
    by FerretDB 1.24's deadlock on update commands of 50 or more statements (that hits only
    updates, and an artifact id is new, so no update is ever sent); see the integration test
    ``test_store_many_500_small_artifacts_is_one_insert``.

    The constructor does no I/O: the MongoDB client and the index are created on first use.
    `aclose()` waits for queued writes, closes the client and `large`; the store reopens
    lazily if used again.
    """

    def __init__(
        self,
        mongodb_uri: str,
        large: ArtifactStore,
        *,
        database: str = "dagwire",
        inline_limit: int = INLINE_LIMIT,
        server_selection_timeout_ms: int = 5000,
        socket_timeout_ms: int = 30_000,
    ) -> None:
        """Describe the store; does no I/O.

        Args:
            mongodb_uri: a MongoDB connection string (``mongodb://host:port/``).
            large: where artifacts above `inline_limit` and streamed ones go (usually an
                `S3ArtifactStore`); this store closes it in `aclose()`.
            database: the database holding the ``artifacts`` collection (the execution
                store's database).
            inline_limit: most content bytes kept inline (at most 64 KiB, the docs/contracts.md §6
                bound; 0 sends everything to `large`).
            server_selection_timeout_ms: how long an operation waits for a reachable server
                before `StoreUnavailableError`.
            socket_timeout_ms: how long one network call may take before it fails.

        Raises:
            ValueError: `inline_limit` is negative or above 64 KiB.
        """
        if not 0 <= inline_limit <= INLINE_LIMIT:
            raise ValueError(
                f"inline_limit must be between 0 and {INLINE_LIMIT} bytes, not {inline_limit}"
            )
        self._uri = mongodb_uri
        self._database_name = database
        self._large = large
        self._inline_limit = inline_limit
        self._client_options = client_options(
            server_selection_timeout_ms=server_selection_timeout_ms,
            socket_timeout_ms=socket_timeout_ms,
            appname="dagwire-artifacts",
        )
        self._server = server_name(mongodb_uri)
        self._client: AsyncMongoClient[Doc] | None = None
        self._ready: asyncio.Task[AsyncCollection[Doc]] | None = None
        # known_keys=0: artifact ids are always new, so no insert is ever skipped.
        self._writer = GroupWriter(
            self._collection, translate=self._translate, name="dagwire-artifacts", known_keys=0
        )

    @property
    def large(self) -> ArtifactStore:
        """The store that keeps artifacts above the inline limit and streamed ones."""
        return self._large

    @property
    def write_commands(self) -> int:
        """``insert_many`` commands sent for inline artifacts so far (group commit makes this
        fewer than the artifacts stored)."""
        return self._writer.commands

    @property
    def inline_limit(self) -> int:
        """Most content bytes kept inline in MongoDB."""
        return self._inline_limit

    async def store(self, artifact: Artifact) -> Artifact:
        """Store an artifact whose `content` is in memory: inline when it is small enough.

        Args:
            artifact: `content` must be set; the value is not mutated.

        Returns:
            A filled copy: `artifact_id`, `sha256`, `size`, `created_at` (content kept).

        Raises:
            ValueError: `content` is None or not bytes, or a field is invalid (the message
                names it).
            StoreUnavailableError: MongoDB (or the large store) did not answer.
        """
        [stored] = await self.store_many([artifact])
        return stored

    async def store_many(self, artifacts: Sequence[Artifact]) -> builtins.list[Artifact]:
        """`store()` for several artifacts: the small ones in one ``insert_many``.

        All are validated before anything is written. Artifacts above the inline limit go to
        the large store, concurrently with the insert.

        Args:
            artifacts: each with `content` set; none is mutated.

        Returns:
            Filled copies (as `store()` returns them), in the order given.

        Raises:
            ValueError: an artifact is invalid (the message names its index and field);
                nothing was stored.
            StoreUnavailableError: MongoDB (or the large store) did not answer; some of the
                artifacts may have been stored.
        """
        checked = [_checked(artifact, i, len(artifacts)) for i, artifact in enumerate(artifacts)]
        results: list[Artifact | None] = [None] * len(checked)
        writes: list[Write] = []
        large: list[tuple[int, Artifact]] = []
        for i, (artifact, data) in enumerate(checked):
            if len(data) > self._inline_limit:
                large.append((i, artifact))
                continue
            stored = dataclasses.replace(
                artifact,
                artifact_id=new_id(),
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                created_at=utc_now(),
            )
            writes.append(Write(artifact_doc(stored, data), final=True))
            results[i] = stored
        _, stored_large = await asyncio.gather(
            self._writer.write(writes),
            asyncio.gather(*(self._large.store(artifact) for _, artifact in large)),
        )
        for (i, _), stored in zip(large, stored_large, strict=True):
            results[i] = stored
        return [result for result in results if result is not None]

    async def store_stream(self, artifact: Artifact, chunks: AsyncIterable[bytes]) -> Artifact:
        """Store a streamed artifact in the large store (whatever its size).

        Args:
            artifact: metadata; `content` must be None.
            chunks: the content, in order.

        Returns:
            A filled copy with `content=None`.

        Raises:
            ValueError: `content` is set or a field is invalid.
            StoreUnavailableError: the large store did not answer.
            Exception: whatever `chunks` raised (nothing becomes visible).
        """
        return await self._large.store_stream(artifact, chunks)

    async def load(self, artifact_id: str) -> Artifact:
        """The artifact with its `content`, from MongoDB or else from the large store.

        Raises:
            NotFoundError: no artifact has this id (the message names it).
            StoreUnavailableError: MongoDB (or the large store) did not answer.
        """
        doc = await self._find(artifact_id, with_content=True)
        if doc is None:
            return await self._large.load(artifact_id)
        return artifact_from_doc(doc)

    async def stat(self, artifact_id: str) -> Artifact:
        """The artifact's metadata with `content=None` (no bytes are read).

        Raises:
            NotFoundError: no artifact has this id.
            StoreUnavailableError: MongoDB (or the large store) did not answer.
        """
        doc = await self._find(artifact_id, with_content=False)
        if doc is None:
            return await self._large.stat(artifact_id)
        return artifact_from_doc(doc)

    async def open(self, artifact_id: str) -> AsyncIterator[bytes]:
        """The artifact's content in chunks of at most 1 MiB (an inline one is one chunk).

        The lookup happens on the first iteration: an unknown id raises `NotFoundError` from
        the first `__anext__()`.

        Raises:
            NotFoundError: no artifact has this id.
            StoreUnavailableError: MongoDB (or the large store) did not answer.
        """
        doc = await self._find(artifact_id, with_content=True)
        if doc is not None:
            content = artifact_from_doc(doc).content
            if content:
                yield content
            return
        chunks = self._large.open(artifact_id)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()

    async def list(self, run_id: str) -> builtins.list[Artifact]:
        """Every artifact of `run_id` in both tiers, in store order, with `content=None`.

        Raises:
            StoreUnavailableError: MongoDB (or the large store) did not answer.
        """
        if not check_lookup_id(run_id, "run"):
            return []
        inline, large = await asyncio.gather(self._list_inline(run_id), self._large.list(run_id))
        merged = inline + large
        merged.sort(key=lambda artifact: artifact.artifact_id or "")
        return merged

    async def list_page(
        self, run_id: str, *, after: str | None = None, limit: int = 50
    ) -> builtins.list[Artifact]:
        """Up to `limit` artifacts of `run_id` after the id `after`, in `list` order (by id).

        Keyset paging in both tiers: each gives at most `limit` artifacts after `after`, and
        the first `limit` of the two merged are the page. A large store that cannot page
        (not a `PagedArtifactStore`) is listed whole and cut.

        Raises:
            ValueError: `limit` is below 1.
            StoreUnavailableError: MongoDB (or the large store) did not answer.
        """
        check_limit(limit)
        if not check_lookup_id(run_id, "run"):
            return []
        inline, large = await asyncio.gather(
            self._list_inline(run_id, after=after, limit=limit),
            self._large_page(run_id, after, limit),
        )
        merged = inline + large
        merged.sort(key=lambda artifact: artifact.artifact_id or "")
        return merged[:limit]

    async def _large_page(
        self, run_id: str, after: str | None, limit: int
    ) -> builtins.list[Artifact]:
        if isinstance(self._large, PagedArtifactStore):
            return await self._large.list_page(run_id, after=after, limit=limit)
        listed = await self._large.list(run_id)
        return [a for a in listed if after is None or (a.artifact_id or "") > after][:limit]

    async def aclose(self) -> None:
        """Wait for queued writes, close the MongoDB client and the large store."""
        try:
            await self._writer.drain()
        finally:
            client, self._client = self._client, None
            ready, self._ready = self._ready, None
            if ready is not None and not ready.done():
                ready.cancel()
            try:
                if client is not None:
                    await client.close()
            finally:
                await self._large.aclose()

    # ------------------------------------------------------------------ internals

    async def _find(self, artifact_id: str, *, with_content: bool) -> Doc | None:
        if not check_lookup_id(artifact_id, "artifact"):
            return None  # no stored id is invalid UTF-8; the large store says "not found"
        collection = await self._collection()
        try:
            doc: Doc | None = await collection.find_one(
                {"_id": artifact_id}, None if with_content else _NO_CONTENT
            )
        except OUTAGE_ERRORS as exc:
            raise_unavailable(exc, self._server, what="for artifacts")
        return doc

    async def _list_inline(
        self, run_id: str, *, after: str | None = None, limit: int = 0
    ) -> builtins.list[Artifact]:
        collection = await self._collection()
        query: Doc = {"run_id": run_id}
        if after is not None:
            query["_id"] = {"$gt": after}
        try:
            cursor = collection.find(query, _NO_CONTENT).sort("_id", ASCENDING).limit(limit)
            docs = await cursor.to_list()
        except OUTAGE_ERRORS as exc:
            raise_unavailable(exc, self._server, what="for artifacts")
        return [artifact_from_doc(doc) for doc in docs]

    async def _collection(self) -> AsyncCollection[Doc]:
        ready = self._ready
        if ready is None or (ready.done() and (ready.cancelled() or ready.exception())):
            ready = self._ready = asyncio.get_running_loop().create_task(self._open())
        return await asyncio.shield(ready)

    async def _open(self) -> AsyncCollection[Doc]:
        if self._client is None:
            self._client = AsyncMongoClient(self._uri, **self._client_options)
        collection = self._client[self._database_name][COLLECTION]
        name, keys = _RUN_INDEX
        try:
            await collection.create_index(keys, name=name)
        except OUTAGE_ERRORS as exc:
            raise_unavailable(exc, self._server, what="for artifacts")
        return collection

    def _translate(self, exc: BaseException) -> BaseException:
        return unavailable(exc, self._server, what="for artifacts")


def _checked(artifact: Artifact, index: int, count: int) -> tuple[Artifact, bytes]:
    """`artifact` validated (as `check_artifact` does) with its content as bytes."""
    where = "" if count == 1 else f"artifact {index}: "
    content = artifact.content
    if content is None:
        raise ValueError(
            f"{where}artifact content is None: store() needs the bytes (use store_stream())"
        )
    if not isinstance(content, bytes | bytearray | memoryview):
        raise ValueError(f"{where}artifact content must be bytes, not {type(content).__name__}")
    try:
        checked = check_artifact(artifact)
    except ValueError as exc:
        if not where:
            raise
        raise ValueError(f"{where}{exc}") from None
    return checked, bytes(content)
