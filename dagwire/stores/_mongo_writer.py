"""Group commit for one MongoDB collection: one writer per key, inserts first, small update batches.

Shaped for FerretDB 1.24 on PostgreSQL (docs/contracts.md §6, §7), and correct on MongoDB too:

- concurrent writes are queued and flushed by one coroutine, batch after batch; writes of the
  same key within a batch are collapsed (in order) into one, so no key is ever written from
  two places at once (concurrent upserts of one key hang FerretDB on PostgreSQL);
- each batch is first one ``insert_many(ordered=False)`` (cheapest: most writes create their
  document); only the documents that already existed (duplicate key) are then updated, and
  keys this writer stored recently skip the insert attempt;
- updates go in ``bulk_write`` commands of at most `update_batch` statements, one command at
  a time: FerretDB 1.24 holds one PostgreSQL connection per statement of an update command
  until the command ends, and its pool of 50 deadlocks on a command of 50 or more;
- no update ever upserts with a filter that could fail on a duplicate ``_id`` (FerretDB's
  reply to such a write error lacks ``nModified`` and PyMongo then fails with a KeyError).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import ReplaceOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, OperationFailure

from dagwire.stores._mongo_codec import Doc

__all__ = ["GroupWriter", "Write"]

_DUPLICATE_KEY = 11000
_NON_FINAL = ["pending", "running"]


@dataclass(slots=True)
class Write:
    """One queued write: `doc` (with its `_id`) and whether it may replace any stored status.

    `final=False` (a `running`/`pending` record) only replaces a stored document whose
    status is not final, and creates it when absent.
    """

    doc: Doc
    final: bool
    futures: list[asyncio.Future[None]] = field(default_factory=list)

    @property
    def key(self) -> Any:
        return self.doc["_id"]


def _collapse(writes: Sequence[Write]) -> list[Write]:
    """One write per key, keeping the outcome of applying `writes` in order."""
    merged: dict[Any, Write] = {}
    for write in writes:
        previous = merged.get(write.key)
        if previous is None:
            merged[write.key] = Write(write.doc, write.final, list(write.futures))
            continue
        previous.futures.extend(write.futures)
        if write.final or not previous.final:  # a late `running` never beats a final status
            previous.doc, previous.final = write.doc, write.final
    return list(merged.values())


def _error_of(detail: dict[str, Any]) -> OperationFailure:
    return OperationFailure(str(detail.get("errmsg", "write failed")), detail.get("code"), detail)


class GroupWriter:
    """Queues writes to one collection and commits them in batches (see the module docstring).

    `get_collection` is awaited at each batch (it opens the client and indexes lazily);
    `translate` turns a driver exception into the store's own (e.g. connection failures
    into `StoreUnavailableError`).
    """

    def __init__(
        self,
        get_collection: Callable[[], Awaitable[AsyncCollection[Doc]]],
        *,
        translate: Callable[[BaseException], BaseException],
        name: str,
        max_batch: int = 2000,
        update_batch: int = 16,
        known_keys: int = 100_000,
    ) -> None:
        """Describe the writer; does no I/O.

        Args:
            get_collection: returns the collection to write to (awaited once per batch).
            translate: maps an exception of the driver to the one callers see.
            name: names the flusher task.
            max_batch: most queued writes taken into one batch.
            update_batch: most statements per update command (FerretDB needs < 50).
            known_keys: how many recently written keys to remember: a write to one of them
                skips the insert attempt and goes straight to the update.
        """
        self._get_collection = get_collection
        self._translate = translate
        self._name = name
        self._max_batch = max_batch
        self._update_batch = update_batch
        self._pending: list[Write] = []
        self._known: dict[Any, None] = {}  # keys this writer stored, least recent first
        self._known_limit = known_keys
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0
        self.commands = 0

    async def write(self, writes: Sequence[Write]) -> None:
        """Queue `writes` (in order, into the same batch) and return once all are committed.

        Raises:
            Exception: the first failure among `writes` (the others may have committed).
        """
        if not writes:
            return
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for write in writes:
            future: asyncio.Future[None] = loop.create_future()
            write.futures = [future]
            futures.append(future)
        self._pending.extend(writes)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name=f"{self._name}-flusher")
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def drain(self) -> None:
        """Wait until every queued write has been committed (or has failed)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])
        self._flusher = None

    # ------------------------------------------------------------------ internals

    async def _flush(self) -> None:
        while self._pending:
            taken = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            batch = _collapse(taken)
            try:
                failures = await self._commit(batch)
            except asyncio.CancelledError:
                for write in batch + self._pending:
                    for future in write.futures:
                        future.cancel()
                self._pending.clear()
                raise
            except Exception as exc:
                error = self._translate(exc)
                for write in batch:
                    _settle(write, error)
                continue
            self.batches += 1
            for write in batch:
                _settle(write, failures.get(id(write)))

    async def _commit(self, batch: list[Write]) -> dict[int, BaseException]:
        """Write `batch`; return the writes that failed (by `id()`) with their errors."""
        collection = await self._get_collection()
        failures: dict[int, BaseException] = {}
        existing = [write for write in batch if write.key in self._known]
        fresh = [write for write in batch if write.key not in self._known]
        if fresh:
            self.commands += 1
            try:
                await collection.insert_many([write.doc for write in fresh], ordered=False)
            except BulkWriteError as exc:
                for detail in exc.details.get("writeErrors", []):
                    write = fresh[detail["index"]]
                    if detail.get("code") == _DUPLICATE_KEY:
                        existing.append(write)
                    else:
                        failures[id(write)] = _error_of(detail)
        for start in range(0, len(existing), self._update_batch):
            chunk = existing[start : start + self._update_batch]
            requests: list[ReplaceOne[Doc] | UpdateOne] = [_update_of(write) for write in chunk]
            self.commands += 1
            try:
                await collection.bulk_write(requests, ordered=False)
            except BulkWriteError as exc:
                for detail in exc.details.get("writeErrors", []):
                    failures[id(chunk[detail["index"]])] = _error_of(detail)
        for write in batch:
            if id(write) not in failures:
                self._remember(write.key)
        return failures

    def _remember(self, key: Any) -> None:
        known = self._known
        known.pop(key, None)
        known[key] = None
        if len(known) > self._known_limit:
            del known[next(iter(known))]  # the least recently written key


def _update_of(write: Write) -> ReplaceOne[Doc] | UpdateOne:
    key = write.key
    if write.final:  # filter on `_id` alone: the upsert cannot fail on a duplicate key
        return ReplaceOne({"_id": key}, write.doc, upsert=True)
    fields = {name: value for name, value in write.doc.items() if name != "_id"}
    return UpdateOne({"_id": key, "status": {"$in": _NON_FINAL}}, {"$set": fields})


def _settle(write: Write, error: BaseException | None) -> None:
    for future in write.futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
