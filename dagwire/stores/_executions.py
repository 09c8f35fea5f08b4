"""`SqliteExecutionStore`: execution records and runs in one SQLite file."""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from dagwire.errors import NotFoundError
from dagwire.models import (
    DEFAULT_NAMESPACE,
    ExecutionRecord,
    RegistryEntry,
    RunEventRecord,
    RunRecord,
    RunStatus,
    TaskStatus,
    without_details,
)
from dagwire.stores._sqlite import SqliteDatabase, Synchronous
from dagwire.stores._validate import (
    check_limit,
    check_lookup_id,
    check_record_key,
    check_registry_entry,
    check_text,
    from_micros,
    to_micros,
    utf8_safe,
)
from dagwire.stores.base import RecordKey

__all__ = ["SqliteExecutionStore"]

_EXECUTION_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    run_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    agent TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    error TEXT,
    trace_id TEXT NOT NULL,
    input_artifact_ids TEXT NOT NULL,
    output_artifact_ids TEXT NOT NULL,
    PRIMARY KEY (run_id, node_id, attempt)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS executions_by_start
    ON executions (run_id, started_at, node_id, attempt);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_newest ON runs (created_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, created_at DESC, run_id DESC);
CREATE TABLE IF NOT EXISTS run_events (
    run_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (run_id, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_claims (
    run_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_cancels (run_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS registry (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
"""

_EXECUTION_COLUMNS = (
    "run_id, node_id, attempt, agent, status, started_at, finished_at, error, trace_id,"
    " input_artifact_ids, output_artifact_ids"
)

# A final status is never overwritten by a non-final one (`running`, `pending`).
_UPSERT_EXECUTION = f"""
INSERT INTO executions ({_EXECUTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id, node_id, attempt) DO UPDATE SET
    agent = excluded.agent,
    status = excluded.status,
    started_at = excluded.started_at,
    finished_at = excluded.finished_at,
    error = excluded.error,
    trace_id = excluded.trace_id,
    input_artifact_ids = excluded.input_artifact_ids,
    output_artifact_ids = excluded.output_artifact_ids
WHERE excluded.status NOT IN ('pending', 'running')
    OR executions.status IN ('pending', 'running')
"""

_UPSERT_RUN = """
INSERT INTO runs (run_id, status, created_at, body) VALUES (?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET
    status = excluded.status, created_at = excluded.created_at, body = excluded.body
"""


class SqliteExecutionStore:
    """Execution records and run records in one SQLite file (WAL mode).

    Durability: by default ``synchronous=NORMAL`` (WAL): a write that returned survives a
    crash of the process; the last commits may be lost on a power loss. ``synchronous="FULL"``
    fsyncs the WAL at every commit and survives power loss too, at about 0.3-1 ms per
    sequential write (a chain of tasks pays it per task). Writes from concurrent callers are
    group committed (one transaction per batch), so FULL is cheap under load;
    `bench/stores.py` measures both.

    Attempts are keyed by a ``PRIMARY KEY (run_id, node_id, attempt)``: a repeated write
    updates instead of duplicating, and the UPSERT's WHERE clause keeps a final status from
    being overwritten by ``running``. Timestamps are stored as integer microseconds since the
    epoch, so they round-trip exactly as timezone-aware UTC datetimes. Runs are stored as
    their JSON plus indexed ``status`` / ``created_at`` / ``run_id`` columns.

    Every SQLite call runs on the store's own single thread, never on the event loop. The
    constructor does no I/O (the file and its parent directory are created on first use).
    After `aclose()` the store can be used again: it reopens the file lazily.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: Synchronous = "NORMAL"
    ) -> None:
        """Describe the store; does no I/O.

        Args:
            path: the SQLite file (its parent directory is created on first use).
            synchronous: ``FULL`` (default; survives power loss) or ``NORMAL`` (survives a
                process crash).
        """
        self._db = SqliteDatabase(
            Path(path),
            schema=_EXECUTION_SCHEMA,
            synchronous=synchronous,
            thread_name="dagwire-executions",
        )

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._db.path

    async def record(self, record: ExecutionRecord) -> None:
        """Upsert one attempt by `(run_id, node_id, attempt)`; durable on return.

        Args:
            record: the attempt; a `running` write never overwrites a final status.

        Raises:
            ValueError: a field is invalid (naive datetime, unknown status, bad id).
        """
        row = _execution_row(record)
        await self._db.write(partial(_upsert_executions, [row]))

    async def record_many(self, records: Sequence[ExecutionRecord]) -> None:
        """Upsert several attempts in one write (all or none), in order; durable on return.

        Args:
            records: the attempts (same rules as `record()`).

        Raises:
            ValueError: a field of some record is invalid (nothing is written).
        """
        rows = [_execution_row(record) for record in records]
        if rows:
            await self._db.write(partial(_upsert_executions, rows))

    async def list_records(self, run_id: str) -> builtins.list[ExecutionRecord]:
        """Every attempt of `run_id`, ordered by `started_at`, `node_id`, `attempt`.

        Args:
            run_id: the run.

        Returns:
            The records (empty for an unknown run).
        """
        if not check_lookup_id(run_id, "run"):
            return []
        return await self._db.read(partial(_select_records, run_id))

    async def list_records_page(
        self, run_id: str, *, after: RecordKey | None = None, limit: int = 50
    ) -> builtins.list[ExecutionRecord]:
        """Up to `limit` attempts of `run_id` after `after`, in `list_records` order.

        Keyset paging on the `executions_by_start` index: each page costs its own size,
        whatever the run's. See `PagedExecutionStore.list_records_page`.

        Raises:
            ValueError: `limit` is below 1 or `after` is not a `RecordKey`.
        """
        check_limit(limit)
        key = check_record_key(after)
        if not check_lookup_id(run_id, "run"):
            return []
        return await self._db.read(partial(_select_records_page, run_id, key, limit))

    async def save_run(self, run: RunRecord) -> None:
        """Upsert a run record by `run_id`; durable on return.

        Args:
            run: the run record (its `spec` and `user_vars` must be JSON-serializable).

        Raises:
            ValueError: a field is invalid (naive datetime, unknown status, bad id, or
                content that is not JSON-serializable).
        """
        check_text(run.run_id, "run_id")
        status = _run_status(run.status)
        created = to_micros(run.created_at, "created_at")
        if run.finished_at is not None:
            to_micros(run.finished_at, "finished_at")
        body = run.to_json()  # snapshot on the loop; serialized on the database thread
        await self._db.write(partial(_upsert_run, run.run_id, status, created, body))

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run record, or None when no run has this id.

        Args:
            run_id: the run.

        Returns:
            The record as last saved, or None.
        """
        if not check_lookup_id(run_id, "run"):
            return None
        return await self._db.read(partial(_select_run, run_id))

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
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        wanted = None if status is None else _run_status(status)
        if after is not None and not check_lookup_id(after, "run"):
            raise _run_not_found(after)
        scope = None if namespaces is None else tuple(namespaces)
        runs = await self._db.read(partial(_select_runs, wanted, limit, after, scope))
        return runs if details else [without_details(r) for r in runs]

    # ------------------------------------------------------------------ RunLedger

    async def create_run(self, run: RunRecord) -> bool:
        """Insert `run` unless its `run_id` exists; True when this call created it."""
        check_text(run.run_id, "run_id")
        status = _run_status(run.status)
        created = to_micros(run.created_at, "created_at")
        body = run.to_json()
        return await self._db.write(partial(_insert_run, run.run_id, status, created, body))

    async def claim_run(self, run_id: str, epoch: int, owner: str) -> bool:
        """Claim lease epoch `epoch` of a run; True for exactly one caller per epoch."""
        check_text(run_id, "run_id")
        check_text(owner, "owner")
        return await self._db.write(partial(_insert_claim, run_id, int(epoch), owner))

    async def lease_claimed(self, run_id: str, epoch: int) -> bool:
        """Whether epoch `epoch` of the run was claimed."""
        if not check_lookup_id(run_id, "run"):
            return False
        return await self._db.read(partial(_claim_exists, run_id, int(epoch)))

    async def superseded(self, leases: Mapping[str, int]) -> builtins.set[str]:
        """The runs of `leases` whose lease epoch after the given one was claimed."""
        wanted = [(r, int(e) + 1) for r, e in leases.items() if int(e) >= 1]
        if not wanted:
            return set()
        return await self._db.read(partial(_claimed_runs, wanted))

    async def truncate_events(self, run_id: str, after: int, below_epoch: int) -> int:
        """Delete the run's events above `after` written by epochs below `below_epoch`."""
        check_text(run_id, "run_id")
        return await self._db.write(partial(_delete_events, run_id, int(after), int(below_epoch)))

    async def append_events(self, events: Sequence[RunEventRecord]) -> None:
        """Store run events keyed by (run_id, sequence); repeats are ignored."""
        rows = []
        for event in events:
            check_text(event.run_id, "run_id")
            body = event.data_json if event.data_json is not None else json.dumps(event.data)
            rows.append((event.run_id, event.sequence, event.epoch, body))
        if rows:
            await self._db.write(partial(_insert_events, rows))

    async def list_events(
        self, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> builtins.list[RunEventRecord]:
        """The run's events numbered above `after`, in order, at most `limit`."""
        if not check_lookup_id(run_id, "run"):
            return []
        return await self._db.read(partial(_select_events, run_id, after, max(limit, 1)))

    async def request_cancel(self, run_id: str) -> None:
        """Record a cancellation request for the run."""
        check_text(run_id, "run_id")
        await self._db.write(partial(_insert_cancel, run_id))

    async def cancel_requests(self, run_ids: Sequence[str]) -> builtins.set[str]:
        """Which of `run_ids` have a cancellation request."""
        wanted = [r for r in run_ids if check_lookup_id(r, "run")]
        if not wanted:
            return set()
        return await self._db.read(partial(_select_cancels, wanted))

    # ------------------------------------------------------------------ ServiceRegistry

    async def put_entry(self, entry: RegistryEntry) -> None:
        """Insert or replace the registry entry of (kind, key)."""
        check_registry_entry(entry.kind, entry.key)
        expires = to_micros(entry.expires_at, "expires_at")
        body = _registry_body(entry)
        await self._db.write(partial(_put_entry, entry.kind, entry.key, expires, body))

    async def delete_entry(self, kind: str, key: str) -> None:
        """Remove the registry entry of (kind, key), if any."""
        check_registry_entry(kind, key)
        await self._db.write(partial(_delete_entry, kind, key))

    async def list_entries(
        self, kind: str, *, after: str = "", limit: int = 1000
    ) -> builtins.list[RegistryEntry]:
        """Registry entries of `kind` above key `after`, in key order, at most `limit`."""
        check_registry_entry(kind)
        return await self._db.read(partial(_select_entries, kind, after, max(limit, 1)))

    async def prune_entries(self, kind: str, expired_before: datetime) -> int:
        """Remove the entries of `kind` that expired before `expired_before`."""
        check_registry_entry(kind)
        cutoff = to_micros(expired_before, "expired_before")
        return await self._db.write(partial(_prune_entries, kind, cutoff))

    async def aclose(self) -> None:
        """Commit every pending write, then close the database (it reopens on next use)."""
        await self._db.aclose()


def _run_not_found(run_id: str) -> NotFoundError:
    message = f"run {run_id!r} not found (the list_runs `after` cursor)"
    return NotFoundError(message, kind="run", id=run_id)


def _task_status(value: TaskStatus | str) -> str:
    try:
        return str(TaskStatus(value))
    except ValueError:
        choices = ", ".join(s.value for s in TaskStatus)
        raise ValueError(f"status must be one of {choices}; got {value!r}") from None


def _run_status(value: RunStatus | str) -> str:
    try:
        return str(RunStatus(value))
    except ValueError:
        choices = ", ".join(s.value for s in RunStatus)
        raise ValueError(f"run status must be one of {choices}; got {value!r}") from None


def _execution_row(record: ExecutionRecord) -> tuple[Any, ...]:
    check_text(record.run_id, "run_id")
    check_text(record.node_id, "node_id")
    check_text(record.agent, "agent")
    check_text(record.trace_id, "trace_id")
    if isinstance(record.attempt, bool) or not isinstance(record.attempt, int):
        raise ValueError(f"attempt must be an int, got {record.attempt!r}")
    inputs = [check_text(i, "input_artifact_ids[]") for i in record.input_artifact_ids]
    outputs = [check_text(i, "output_artifact_ids[]") for i in record.output_artifact_ids]
    return (
        record.run_id,
        record.node_id,
        record.attempt,
        record.agent,
        _task_status(record.status),
        to_micros(record.started_at, "started_at"),
        None if record.finished_at is None else to_micros(record.finished_at, "finished_at"),
        None if record.error is None else utf8_safe(str(record.error)),
        record.trace_id,
        json.dumps(inputs),
        json.dumps(outputs),
    )


def _upsert_executions(rows: list[tuple[Any, ...]], conn: sqlite3.Connection) -> None:
    conn.executemany(_UPSERT_EXECUTION, rows)


def _record_from_row(row: tuple[Any, ...]) -> ExecutionRecord:
    run_id, node_id, attempt, agent, status, started, finished, error, trace_id, ins, outs = row
    return ExecutionRecord(
        run_id=run_id,
        node_id=node_id,
        attempt=attempt,
        agent=agent,
        status=TaskStatus(status),
        started_at=from_micros(started),
        finished_at=None if finished is None else from_micros(finished),
        error=error,
        trace_id=trace_id,
        input_artifact_ids=json.loads(ins),
        output_artifact_ids=json.loads(outs),
    )


def _select_records(run_id: str, conn: sqlite3.Connection) -> list[ExecutionRecord]:
    rows = conn.execute(
        f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE run_id = ?"
        " ORDER BY started_at, node_id, attempt",
        (run_id,),
    )
    return [_record_from_row(row) for row in rows]


def _select_records_page(
    run_id: str, after: tuple[int, str, int] | None, limit: int, conn: sqlite3.Connection
) -> list[ExecutionRecord]:
    sql = f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE run_id = ?"
    params: list[Any] = [run_id]
    if after is not None:
        sql += " AND (started_at, node_id, attempt) > (?, ?, ?)"
        params += list(after)
    sql += " ORDER BY started_at, node_id, attempt LIMIT ?"
    params.append(limit)
    return [_record_from_row(row) for row in conn.execute(sql, params)]


def _upsert_run(
    run_id: str, status: str, created: int, body: dict[str, Any], conn: sqlite3.Connection
) -> None:
    try:
        text = json.dumps(body)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run {run_id!r} is not JSON-serializable: {exc}") from exc
    conn.execute(_UPSERT_RUN, (run_id, status, created, text))


def _select_run(run_id: str, conn: sqlite3.Connection) -> RunRecord | None:
    row = conn.execute("SELECT body FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if row is None else RunRecord.from_json(json.loads(row[0]))


def _select_runs(
    status: str | None,
    limit: int,
    after: str | None,
    namespaces: tuple[str, ...] | None,
    conn: sqlite3.Connection,
) -> list[RunRecord]:
    where: list[str] = []
    params: list[Any] = []
    if status is not None:
        where.append("status = ?")
        params.append(status)
    if namespaces is not None:
        if not namespaces:
            return []
        # a run recorded before namespaces has none in its body: it is in `default`
        marks = ", ".join("?" * len(namespaces))
        where.append(f"coalesce(json_extract(body, '$.namespace'), ?) IN ({marks})")
        params += [DEFAULT_NAMESPACE, *namespaces]
    if after is not None:
        anchor = conn.execute("SELECT created_at FROM runs WHERE run_id = ?", (after,)).fetchone()
        if anchor is None:
            raise _run_not_found(after)
        where.append("(created_at, run_id) < (?, ?)")
        params += [anchor[0], after]
    sql = "SELECT body FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, run_id DESC LIMIT ?"
    params.append(limit)
    return [RunRecord.from_json(json.loads(body)) for (body,) in conn.execute(sql, params)]


def _insert_run(
    run_id: str, status: str, created: int, body: dict[str, Any], conn: sqlite3.Connection
) -> bool:
    try:
        text = json.dumps(body)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run {run_id!r} is not JSON-serializable: {exc}") from exc
    cursor = conn.execute(
        "INSERT OR IGNORE INTO runs (run_id, status, created_at, body) VALUES (?, ?, ?, ?)",
        (run_id, status, created, text),
    )
    return cursor.rowcount == 1


def _insert_claim(run_id: str, epoch: int, owner: str, conn: sqlite3.Connection) -> bool:
    cursor = conn.execute(
        "INSERT OR IGNORE INTO run_claims (run_id, epoch, owner) VALUES (?, ?, ?)",
        (run_id, epoch, owner),
    )
    return cursor.rowcount == 1


def _claim_exists(run_id: str, epoch: int, conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM run_claims WHERE run_id = ? AND epoch = ?", (run_id, epoch)
    ).fetchone()
    return row is not None


def _claimed_runs(wanted: list[tuple[str, int]], conn: sqlite3.Connection) -> set[str]:
    return {
        run_id
        for run_id, epoch in wanted
        if conn.execute(
            "SELECT 1 FROM run_claims WHERE run_id = ? AND epoch = ?", (run_id, epoch)
        ).fetchone()
        is not None
    }


def _delete_events(run_id: str, after: int, below: int, conn: sqlite3.Connection) -> int:
    cursor = conn.execute(
        "DELETE FROM run_events WHERE run_id = ? AND sequence > ? AND epoch < ?",
        (run_id, after, below),
    )
    return cursor.rowcount


def _insert_events(rows: list[tuple[Any, ...]], conn: sqlite3.Connection) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO run_events (run_id, sequence, epoch, body) VALUES (?, ?, ?, ?)",
        rows,
    )


def _select_events(
    run_id: str, after: int, limit: int, conn: sqlite3.Connection
) -> list[RunEventRecord]:
    rows = conn.execute(
        "SELECT sequence, epoch, body FROM run_events WHERE run_id = ? AND sequence > ?"
        " ORDER BY sequence LIMIT ?",
        (run_id, after, limit),
    )
    return [RunEventRecord(run_id, seq, epoch, json.loads(body)) for seq, epoch, body in rows]


def _insert_cancel(run_id: str, conn: sqlite3.Connection) -> None:
    conn.execute("INSERT OR IGNORE INTO run_cancels (run_id) VALUES (?)", (run_id,))


def _select_cancels(run_ids: list[str], conn: sqlite3.Connection) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(run_ids), 500):
        part = run_ids[start : start + 500]
        marks = ",".join("?" * len(part))
        rows = conn.execute(f"SELECT run_id FROM run_cancels WHERE run_id IN ({marks})", part)
        found.update(r for (r,) in rows)
    return found


def _registry_body(entry: RegistryEntry) -> str:
    try:
        return json.dumps(entry.data, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"registry entry {entry.kind}/{entry.key}: data is not JSON: {exc}"
        ) from exc


def _put_entry(kind: str, key: str, expires: int, body: str, conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO registry (kind, key, expires_at, body) VALUES (?, ?, ?, ?)",
        (kind, key, expires, body),
    )


def _delete_entry(kind: str, key: str, conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM registry WHERE kind = ? AND key = ?", (kind, key))


def _select_entries(
    kind: str, after: str, limit: int, conn: sqlite3.Connection
) -> list[RegistryEntry]:
    rows = conn.execute(
        "SELECT key, expires_at, body FROM registry WHERE kind = ? AND key > ?"
        " ORDER BY key LIMIT ?",
        (kind, after, limit),
    )
    return [
        RegistryEntry(kind, key, from_micros(expires), json.loads(body))
        for key, expires, body in rows
    ]


def _prune_entries(kind: str, cutoff: int, conn: sqlite3.Connection) -> int:
    cursor = conn.execute("DELETE FROM registry WHERE kind = ? AND expires_at < ?", (kind, cutoff))
    return cursor.rowcount
