"""`MongoExecutionStore`: execution records and runs in MongoDB (or FerretDB), via PyMongo async."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

from bson import encode as bson_encode
from bson.errors import InvalidDocument
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from dagwire.errors import NotFoundError
from dagwire.models import (
    DEFAULT_NAMESPACE,
    ExecutionRecord,
    RegistryEntry,
    RunEventRecord,
    RunRecord,
    RunStatus,
    without_details,
)
from dagwire.stores._mongo_client import (
    OUTAGE_ERRORS,
    client_options,
    raise_unavailable,
    server_name,
    unavailable,
)
from dagwire.stores._mongo_codec import (
    Doc,
    execution_doc,
    record_from_doc,
    run_doc,
    run_from_doc,
)
from dagwire.stores._mongo_writer import GroupWriter, Write
from dagwire.stores._validate import (
    check_limit,
    check_lookup_id,
    check_record_key,
    check_registry_entry,
    check_run_status,
    check_task_status,
    check_text,
    from_micros,
    to_micros,
)
from dagwire.stores.base import RecordKey

__all__ = ["MongoExecutionStore"]

#: Indexes per collection: name -> keys. Names are fixed: FerretDB 1.x silently keeps an old
#: index when `create_index` is called with the same name and other options, so a changed
#: index must get a new name.
_INDEXES: dict[str, dict[str, list[tuple[str, int]]]] = {
    "executions": {
        "run_started_node_attempt": [
            ("run_id", ASCENDING),
            ("started_at_us", ASCENDING),
            ("node_id", ASCENDING),
            ("attempt", ASCENDING),
        ],
    },
    "run_events": {
        "run_sequence": [("run_id", ASCENDING), ("sequence", ASCENDING)],
    },
    "registry": {
        "kind_key": [("kind", ASCENDING), ("key", ASCENDING)],
    },
    "runs": {
        "newest": [("created_at_us", DESCENDING), ("run_id", DESCENDING)],
        "status_newest": [
            ("status", ASCENDING),
            ("created_at_us", DESCENDING),
            ("run_id", DESCENDING),
        ],
    },
}


class MongoExecutionStore:
    """Execution records and run records in a MongoDB-wire database (MongoDB or FerretDB 1.x).

    Built on PyMongo's async API (`AsyncMongoClient`; Motor is deprecated). The constructor
    does no I/O: the client is created on first use, and the indexes once per instance, on
    first use, idempotently. `aclose()` waits for queued writes, then closes the client; the
    store reopens lazily if used again.

    Collections and documents:

    - ``executions``: one document per attempt, ``_id`` = ``["<run_id>","<node_id>",<attempt>]``
      (compact JSON, unambiguous whatever the ids contain); fields of `ExecutionRecord`, with
      each timestamp twice: ``started_at_us``/``finished_at_us`` (integer microseconds, exact,
      what is read back) and ``started_at``/``finished_at`` (BSON dates, milliseconds, for
      people). Index ``(run_id, started_at_us, node_id, attempt)`` serves `list_records`.
    - ``runs``: one document per run, ``_id`` = run id; the fields of `RunRecord` with
      ``created_at_us``/``finished_at_us``/``lease_expires_at_us`` likewise. Indexes
      ``(created_at_us desc, run_id desc)`` and ``(status, created_at_us desc, run_id desc)``
      serve `list_runs`. Map keys from users (`spec`, `user_vars`, artifact `metadata`) are
      escaped (``.`` -> ``%2E``, leading ``$`` -> ``%24``, ``%`` -> ``%25``, empty -> ``%``)
      and strings containing NUL are wrapped (FerretDB's PostgreSQL backend refuses NUL).

    Writes: `record`, `record_many` and `save_run` are group committed per collection (one
    flusher coroutine per collection; concurrent calls share one ``insert_many`` per batch, then
    the documents that already existed are updated in commands of at most 16 statements).
    Writes of one key within a batch are collapsed in order, so one key is never written from
    two places at once. A `running` (or `pending`) record only replaces a stored record that is
    not final (``update`` with filter ``{"_id": ..., "status": {"$in": ["pending",
    "running"]}}``); a final one replaces whatever is stored. No multi-document transactions,
    change streams, ``$lookup``, sparse/partial or unique secondary indexes are used (FerretDB
    1.x lacks or mishandles them); the only unique key is ``_id``, always set.

    Failures: a lost connection or a server that cannot be selected within
    `server_selection_timeout_ms` raises `StoreUnavailableError` naming the server.
    """

    def __init__(
        self,
        uri: str,
        database: str = "dagwire",
        *,
        server_selection_timeout_ms: int = 5000,
        socket_timeout_ms: int = 30_000,
    ) -> None:
        """Describe the store; does no I/O.

        Args:
            uri: a MongoDB connection string (``mongodb://host:port/`` or ``mongodb+srv://``).
            database: the database holding the ``runs`` and ``executions`` collections.
            server_selection_timeout_ms: how long an operation waits for a reachable server
                before `StoreUnavailableError`.
            socket_timeout_ms: how long one network call may take before it fails.
        """
        self._uri = uri
        self._database_name = database
        self._client_options = client_options(
            server_selection_timeout_ms=server_selection_timeout_ms,
            socket_timeout_ms=socket_timeout_ms,
            appname="dagwire",
        )
        self._server = server_name(uri)
        self._client: AsyncMongoClient[Doc] | None = None
        self._ready: asyncio.Task[AsyncDatabase[Doc]] | None = None
        self._executions = GroupWriter(
            lambda: self._collection("executions"),
            translate=self._translate,
            name="dagwire-mongo-executions",
        )
        self._runs = GroupWriter(
            lambda: self._collection("runs"),
            translate=self._translate,
            name="dagwire-mongo-runs",
        )

    @property
    def batches_committed(self) -> int:
        """Execution-record batches committed so far (group commit makes this < writes)."""
        return self._executions.batches

    @property
    def write_commands(self) -> int:
        """Write commands (``insert_many``/``bulk_write``) sent for execution records so far."""
        return self._executions.commands

    async def record(self, record: ExecutionRecord) -> None:
        """Upsert one attempt by `(run_id, node_id, attempt)`; durable on return.

        Args:
            record: the attempt; a `running` write never overwrites a final status.

        Raises:
            ValueError: a field is invalid (naive datetime, unknown status, bad id).
            StoreUnavailableError: the server did not answer.
        """
        await self.record_many([record])

    async def record_many(self, records: Sequence[ExecutionRecord]) -> None:
        """Upsert several attempts in one batch, applied in order; durable on return.

        Args:
            records: the attempts (same rules as `record()`); all are validated first.

        Raises:
            ValueError: a field of some record is invalid (nothing is written).
            StoreUnavailableError: the server did not answer.
        """
        writes = [Write(execution_doc(r), check_task_status(r.status).is_final) for r in records]
        await self._executions.write(writes)

    async def list_records(self, run_id: str) -> builtins.list[ExecutionRecord]:
        """Every attempt of `run_id`, ordered by `started_at`, `node_id`, `attempt`.

        Args:
            run_id: the run.

        Returns:
            The records (empty for an unknown run).

        Raises:
            StoreUnavailableError: the server did not answer.
        """
        if not check_lookup_id(run_id, "run"):
            return []
        collection = await self._collection("executions")
        order = [("started_at_us", ASCENDING), ("node_id", ASCENDING), ("attempt", ASCENDING)]
        async with self._errors():
            docs = await collection.find({"run_id": run_id}).sort(order).to_list()
        return [record_from_doc(doc) for doc in docs]

    async def list_records_page(
        self, run_id: str, *, after: RecordKey | None = None, limit: int = 50
    ) -> builtins.list[ExecutionRecord]:
        """Up to `limit` attempts of `run_id` after `after`, in `list_records` order.

        Keyset paging on the `run_started_node_attempt` index: each page costs its own size.

        Raises:
            ValueError: `limit` is below 1 or `after` is not a `RecordKey`.
            StoreUnavailableError: the server did not answer.
        """
        check_limit(limit)
        key = check_record_key(after)
        if not check_lookup_id(run_id, "run"):
            return []
        query: Doc = {"run_id": run_id}
        if key is not None:
            started, node_id, attempt = key
            query["$or"] = [
                {"started_at_us": {"$gt": started}},
                {"started_at_us": started, "node_id": {"$gt": node_id}},
                {"started_at_us": started, "node_id": node_id, "attempt": {"$gt": attempt}},
            ]
        collection = await self._collection("executions")
        order = [("started_at_us", ASCENDING), ("node_id", ASCENDING), ("attempt", ASCENDING)]
        async with self._errors():
            docs = await collection.find(query).sort(order).limit(limit).to_list()
        return [record_from_doc(doc) for doc in docs]

    async def save_run(self, run: RunRecord) -> None:
        """Upsert a run record by `run_id` (replacing the stored one); durable on return.

        Args:
            run: the run record (`spec` must hold BSON-encodable, JSON-like values).

        Raises:
            ValueError: a field is invalid (naive datetime, unknown status, bad id, or a
                value BSON cannot hold, such as an integer beyond 64 bits).
            StoreUnavailableError: the server did not answer.
        """
        doc = run_doc(run)
        _check_encodable(doc, f"run {run.run_id!r}")
        await self._runs.write([Write(doc, final=True)])

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run record, or None when no run has this id.

        Args:
            run_id: the run.

        Returns:
            The record as last saved, or None.

        Raises:
            StoreUnavailableError: the server did not answer.
        """
        if not check_lookup_id(run_id, "run"):
            return None
        collection = await self._collection("runs")
        async with self._errors():
            doc = await collection.find_one({"_id": run_id})
        return None if doc is None else run_from_doc(doc)

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        limit: int = 50,
        after: str | None = None,
        details: bool = True,
        namespaces: Sequence[str] | None = None,
    ) -> builtins.list[RunRecord]:
        """Runs newest first (`created_at` descending, then `run_id` descending).

        Args:
            status: only runs with this status.
            limit: most runs returned (at least 1).
            after: the last `run_id` of the previous page (keyset pagination).
            details: False leaves out each run's `spec` and `nodes` (empty in the result).
            namespaces: only runs of these namespaces (None: every namespace).

        Returns:
            Up to `limit` runs; fewer (possibly none) at the end.

        Raises:
            NotFoundError: `after` names no run.
            ValueError: `limit` is below 1 or `status` is not a run status.
            StoreUnavailableError: the server did not answer.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        query: Doc = {}
        if status is not None:
            query["status"] = str(check_run_status(status))
        if after is not None and not check_lookup_id(after, "run"):
            raise _run_not_found(after)
        clauses: list[Doc] = []
        if namespaces is not None:
            if not namespaces:
                return []
            scope: list[Doc] = [{"namespace": {"$in": list(namespaces)}}]
            if DEFAULT_NAMESPACE in namespaces:  # runs recorded before namespaces have none
                scope.append({"namespace": {"$exists": False}})
            clauses.append({"$or": scope})
        collection = await self._collection("runs")
        async with self._errors():
            if after is not None:
                anchor = await collection.find_one({"_id": after}, {"created_at_us": 1})
                if anchor is None:
                    raise _run_not_found(after)
                created = anchor["created_at_us"]
                clauses.append(
                    {
                        "$or": [
                            {"created_at_us": {"$lt": created}},
                            {"created_at_us": created, "run_id": {"$lt": after}},
                        ]
                    }
                )
            if clauses:
                query["$and"] = clauses
            order = [("created_at_us", DESCENDING), ("run_id", DESCENDING)]
            docs = await collection.find(query).sort(order).limit(limit).to_list()
        runs = [run_from_doc(doc) for doc in docs]
        return runs if details else [without_details(r) for r in runs]

    # ------------------------------------------------------------------ RunLedger
    # Collections ``run_events`` (_id "<run_id>/<sequence, 12 digits>"), ``run_claims``
    # (_id "<run_id>/<epoch>") and ``run_cancels`` (_id = run id): insert-only, so a
    # concurrent second insert of one key fails atomically on FerretDB too.

    async def create_run(self, run: RunRecord) -> bool:
        """Insert `run` unless its `run_id` exists; True when this call created it."""
        doc = run_doc(run)
        _check_encodable(doc, f"run {run.run_id!r}")
        await self._runs.drain()
        return await self._insert_once("runs", doc)

    async def claim_run(self, run_id: str, epoch: int, owner: str) -> bool:
        """Claim lease epoch `epoch` of a run; True for exactly one caller per epoch."""
        check_text(run_id, "run_id")
        doc: Doc = {"_id": f"{run_id}/{int(epoch)}", "run_id": run_id, "owner": owner}
        return await self._insert_once("run_claims", doc)

    async def lease_claimed(self, run_id: str, epoch: int) -> bool:
        """Whether epoch `epoch` of the run was claimed."""
        if not check_lookup_id(run_id, "run"):
            return False
        collection = await self._collection("run_claims")
        async with self._errors():
            return await collection.find_one({"_id": f"{run_id}/{int(epoch)}"}) is not None

    async def superseded(self, leases: Mapping[str, int]) -> builtins.set[str]:
        """The runs of `leases` whose lease epoch after the given one was claimed."""
        ids = {f"{r}/{int(e) + 1}": r for r, e in leases.items() if int(e) >= 1}
        if not ids:
            return set()
        collection = await self._collection("run_claims")
        async with self._errors():
            docs = await collection.find({"_id": {"$in": list(ids)}}, {"_id": 1}).to_list()
        return {ids[d["_id"]] for d in docs if d["_id"] in ids}

    async def truncate_events(self, run_id: str, after: int, below_epoch: int) -> int:
        """Delete the run's events above `after` written by epochs below `below_epoch`."""
        check_text(run_id, "run_id")
        collection = await self._collection("run_events")
        query = {
            "run_id": run_id,
            "sequence": {"$gt": int(after)},
            "epoch": {"$lt": int(below_epoch)},
        }
        async with self._errors():
            result = await collection.delete_many(query)
        return int(result.deleted_count)

    async def append_events(self, events: Sequence[RunEventRecord]) -> None:
        """Store run events keyed by (run_id, sequence); repeats are ignored."""
        docs: list[Doc] = []
        for event in events:
            check_text(event.run_id, "run_id")
            docs.append(
                {
                    "_id": f"{event.run_id}/{event.sequence:012d}",
                    "run_id": event.run_id,
                    "sequence": event.sequence,
                    "epoch": event.epoch,
                    "body": event.data_json
                    if event.data_json is not None
                    else json.dumps(event.data, ensure_ascii=False),
                }
            )
        if not docs:
            return
        collection = await self._collection("run_events")
        async with self._errors():
            try:
                await collection.insert_many(docs, ordered=True)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != 11000 for e in errors):
                    raise
                # a retried batch: insert what follows the first duplicate, one at a time
                for doc in docs[errors[0]["index"] + 1 :]:
                    with contextlib.suppress(DuplicateKeyError):
                        await collection.insert_one(doc)

    async def list_events(
        self, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> builtins.list[RunEventRecord]:
        """The run's events numbered above `after`, in order, at most `limit`."""
        if not check_lookup_id(run_id, "run"):
            return []
        collection = await self._collection("run_events")
        async with self._errors():
            docs = (
                await collection.find({"run_id": run_id, "sequence": {"$gt": after}})
                .sort([("sequence", ASCENDING)])
                .limit(max(limit, 1))
                .to_list()
            )
        return [
            RunEventRecord(run_id, int(d["sequence"]), int(d["epoch"]), json.loads(d["body"]))
            for d in docs
        ]

    async def request_cancel(self, run_id: str) -> None:
        """Record a cancellation request for the run."""
        check_text(run_id, "run_id")
        await self._insert_once("run_cancels", {"_id": run_id})

    async def cancel_requests(self, run_ids: Sequence[str]) -> builtins.set[str]:
        """Which of `run_ids` have a cancellation request."""
        wanted = [r for r in run_ids if check_lookup_id(r, "run")]
        if not wanted:
            return set()
        collection = await self._collection("run_cancels")
        found: set[str] = set()
        async with self._errors():
            for start in range(0, len(wanted), 500):
                part = wanted[start : start + 500]
                found.update(
                    d["_id"] for d in await collection.find({"_id": {"$in": part}}).to_list()
                )
        return found

    # ------------------------------------------------------------------ ServiceRegistry
    # Collection ``registry`` (_id "<kind>/<key>"): each entry has one writer at a time (the
    # ServiceRegistry contract), so the replace-or-insert of one _id never races another.

    async def put_entry(self, entry: RegistryEntry) -> None:
        """Insert or replace the registry entry of (kind, key)."""
        check_registry_entry(entry.kind, entry.key)
        try:
            body = json.dumps(entry.data, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"registry entry {entry.kind}/{entry.key}: data is not JSON: {exc}"
            ) from exc
        doc: Doc = {
            "_id": f"{entry.kind}/{entry.key}",
            "kind": entry.kind,
            "key": entry.key,
            "expires_at_us": to_micros(entry.expires_at, "expires_at"),
            "body": body,
        }
        collection = await self._collection("registry")
        async with self._errors():
            await collection.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    async def delete_entry(self, kind: str, key: str) -> None:
        """Remove the registry entry of (kind, key), if any."""
        check_registry_entry(kind, key)
        collection = await self._collection("registry")
        async with self._errors():
            await collection.delete_one({"_id": f"{kind}/{key}"})

    async def list_entries(
        self, kind: str, *, after: str = "", limit: int = 1000
    ) -> builtins.list[RegistryEntry]:
        """Registry entries of `kind` above key `after`, in key order, at most `limit`."""
        check_registry_entry(kind)
        collection = await self._collection("registry")
        async with self._errors():
            docs = (
                await collection.find({"kind": kind, "key": {"$gt": after}})
                .sort([("key", ASCENDING)])
                .limit(max(limit, 1))
                .to_list()
            )
        return [
            RegistryEntry(
                kind, str(d["key"]), from_micros(int(d["expires_at_us"])), json.loads(d["body"])
            )
            for d in docs
        ]

    async def prune_entries(self, kind: str, expired_before: datetime) -> int:
        """Remove the entries of `kind` that expired before `expired_before`."""
        check_registry_entry(kind)
        cutoff = to_micros(expired_before, "expired_before")
        collection = await self._collection("registry")
        async with self._errors():
            result = await collection.delete_many({"kind": kind, "expires_at_us": {"$lt": cutoff}})
        return int(result.deleted_count)

    async def _insert_once(self, name: str, doc: Doc) -> bool:
        collection = await self._collection(name)
        async with self._errors():
            try:
                await collection.insert_one(doc)
            except DuplicateKeyError:
                return False
        return True

    async def aclose(self) -> None:
        """Wait for queued writes, then close the client (the store reopens on next use)."""
        try:
            await self._executions.drain()
            await self._runs.drain()
        finally:
            client, self._client = self._client, None
            ready, self._ready = self._ready, None
            if ready is not None and not ready.done():
                ready.cancel()
            if client is not None:
                await client.close()

    # ------------------------------------------------------------------ internals

    async def _collection(self, name: str) -> AsyncCollection[Doc]:
        ready = self._ready
        if ready is None or (ready.done() and (ready.cancelled() or ready.exception())):
            ready = self._ready = asyncio.get_running_loop().create_task(self._open())
        database = await asyncio.shield(ready)
        return database[name]

    async def _open(self) -> AsyncDatabase[Doc]:
        if self._client is None:
            self._client = AsyncMongoClient(self._uri, **self._client_options)
        database = self._client[self._database_name]
        async with self._errors():
            for collection, indexes in _INDEXES.items():
                for name, keys in indexes.items():
                    await database[collection].create_index(keys, name=name)
        return database

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except OUTAGE_ERRORS as exc:
            raise_unavailable(exc, self._server)

    def _translate(self, exc: BaseException) -> BaseException:
        return unavailable(exc, self._server)


def _check_encodable(doc: Doc, what: str) -> None:
    try:
        bson_encode(doc)
    except (InvalidDocument, OverflowError, TypeError) as exc:
        raise ValueError(f"{what} cannot be stored in MongoDB: {exc}") from exc


def _run_not_found(run_id: str) -> NotFoundError:
    message = f"run {run_id!r} not found (the list_runs `after` cursor)"
    return NotFoundError(message, kind="run", id=run_id)
