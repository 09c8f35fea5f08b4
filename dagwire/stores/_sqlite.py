"""A lazily opened SQLite database on a thread of its own, with group commit for writes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from dagwire.errors import StoreUnavailableError

__all__ = ["SqliteDatabase", "Synchronous"]

T = TypeVar("T")

#: `PRAGMA synchronous` levels this module accepts (both with `journal_mode=WAL`).
Synchronous = Literal["NORMAL", "FULL"]

_Op = Callable[[sqlite3.Connection], Any]
_Outcome = tuple[bool, Any]  # (succeeded, value or exception)


class _Worker:
    """One database thread and the connection only it touches (replaced wholesale on close)."""

    def __init__(self, thread_name: str) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self.conn: sqlite3.Connection | None = None


class SqliteDatabase:
    """One SQLite file used from one dedicated thread; writes are group-committed.

    Every call runs on the database's own single-thread executor, so the event loop never
    blocks on SQLite and the connection is only ever touched by one thread. `write()` queues
    its operation; one flusher coroutine takes everything queued, runs it on the executor in
    one transaction (each operation in a savepoint of its own, so a failing one does not undo
    the others) and resolves each caller once the transaction committed. While a batch
    commits, new writes queue up and form the next batch, so N concurrent writers cost about
    one commit per batch instead of N.

    Nothing is opened until first use. After `aclose()` the next call opens the file again.
    """

    def __init__(
        self,
        path: Path,
        *,
        schema: str,
        synchronous: Synchronous = "NORMAL",
        thread_name: str = "dagwire-sqlite",
        max_batch: int = 1000,
    ) -> None:
        """Describe the database; does no I/O.

        Args:
            path: the SQLite file (its parent directory is created on first use).
            schema: SQL script run once when the file is opened (``CREATE ... IF NOT EXISTS``).
            synchronous: ``FULL`` fsyncs the WAL at every commit (survives power loss);
                ``NORMAL`` only at checkpoints (survives a process crash, not a power loss).
            thread_name: name prefix of the executor thread.
            max_batch: most writes committed in one transaction.
        """
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        self._path = path
        self._schema = schema
        self._synchronous = synchronous
        self._thread_name = thread_name
        self._max_batch = max_batch
        self._worker: _Worker | None = None
        self._pending: list[tuple[_Op, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._batches = 0

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path

    @property
    def batches_committed(self) -> int:
        """How many write transactions committed so far (group commit makes this < writes)."""
        return self._batches

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op(connection)` on the database thread inside one read transaction.

        Returns:
            What `op` returned.

        Raises:
            StoreUnavailableError: the database stayed locked by another process.
        """
        worker = self._get_worker()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(worker.executor, self._run_read, worker, op)

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op(connection)` in the next group-committed transaction; return once committed.

        Returns:
            What `op` returned.

        Raises:
            Exception: whatever `op` raised (its savepoint is rolled back; the rest of the
                batch still commits).
            StoreUnavailableError: the database stayed locked by another process.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name=f"{self._thread_name}-flusher")
        return cast(T, await future)

    async def aclose(self) -> None:
        """Commit every queued write, then close the connection and stop the thread."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])
        self._flusher = None
        worker, self._worker = self._worker, None
        if worker is not None:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(worker.executor, self._close_connection, worker)
            finally:
                worker.executor.shutdown(wait=False)

    # ------------------------------------------------------------------ event-loop side

    def _get_worker(self) -> _Worker:
        if self._worker is None:
            self._worker = _Worker(self._thread_name)
        return self._worker

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            taken = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            batch = [(op, future) for op, future in taken if not future.done()]  # skip cancelled
            if not batch:
                continue
            worker = self._get_worker()
            try:
                outcomes = await loop.run_in_executor(
                    worker.executor, self._run_batch, worker, [op for op, _ in batch]
                )
            except asyncio.CancelledError:
                for _, future in batch + self._pending:
                    future.cancel()
                self._pending.clear()
                raise
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self._batches += 1
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    # ------------------------------------------------------------------ database thread side

    def _connection(self, worker: _Worker) -> sqlite3.Connection:
        if worker.conn is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout = 10000")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")
                conn.execute("PRAGMA foreign_keys = ON")
                conn.executescript(self._schema)
            except sqlite3.OperationalError as exc:
                conn.close()
                self._raise_if_locked(exc)
                raise
            except BaseException:
                conn.close()
                raise
            worker.conn = conn
        return worker.conn

    def _run_read(self, worker: _Worker, op: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection(worker)
        try:
            conn.execute("BEGIN")
            try:
                return op(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._raise_if_locked(exc)
            raise

    def _run_batch(self, worker: _Worker, ops: list[_Op]) -> list[_Outcome]:
        conn = self._connection(worker)
        outcomes: list[_Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    conn.execute("SAVEPOINT op")
                    try:
                        value = op(conn)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        outcomes.append((False, exc))
                    else:
                        conn.execute("RELEASE op")
                        outcomes.append((True, value))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            self._raise_if_locked(exc)
            raise
        return outcomes

    def _close_connection(self, worker: _Worker) -> None:
        conn, worker.conn = worker.conn, None
        if conn is not None:
            conn.close()

    def _raise_if_locked(self, exc: sqlite3.OperationalError) -> None:
        message = str(exc)
        if "locked" in message or "busy" in message:
            raise StoreUnavailableError(f"sqlite database {self._path}: {message}") from exc
