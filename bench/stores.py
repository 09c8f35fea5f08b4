"""Embedded store throughput: SQLite execution records (group commit) and local artifacts."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from dagwire.models import Artifact, ExecutionRecord, TaskStatus, utc_now
from dagwire.stores._sqlite import Synchronous
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore

N = 1000
STREAM_BYTES = 64 << 20
CHUNK = 256 * 1024


def _records(prefix: str, n: int) -> list[ExecutionRecord]:
    start = utc_now()
    return [
        ExecutionRecord(
            run_id=f"run-{prefix}",
            node_id=f"node-{i}",
            attempt=1,
            agent="noop",
            status=TaskStatus.SUCCEEDED,
            started_at=start + timedelta(microseconds=i),
            finished_at=start + timedelta(milliseconds=1 + i),
            trace_id="0af7651916cd43dd8448eb211c80319c",
            output_artifact_ids=[f"artifact-{i}"],
        )
        for i in range(n)
    ]


def _row(label: str, n: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "benchmark": label,
        "n": n,
        "seconds": round(seconds, 3),
        "per_op_ms": round(seconds / n * 1000, 3),
        "ops_per_s": round(n / seconds),
        **extra,
    }


async def _timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


async def _bench_records(root: Path, synchronous: Synchronous) -> list[dict[str, Any]]:
    store = SqliteExecutionStore(root / f"exec-{synchronous}.sqlite3", synchronous=synchronous)
    await store.record_many(_records("warm-up", 1))  # open the file outside the timing
    rows = []
    sequential = _records("sequential", N)

    async def one_by_one() -> None:
        for record in sequential:
            await store.record(record)

    elapsed = await _timed(one_by_one)
    rows.append(_row(f"record() sequential, synchronous={synchronous}", N, elapsed))

    concurrent = _records("concurrent", N)
    before = store._db.batches_committed
    elapsed = await _timed(lambda: asyncio.gather(*(store.record(r) for r in concurrent)))
    batches = store._db.batches_committed - before
    rows.append(
        _row(f"record() {N} concurrent, synchronous={synchronous}", N, elapsed, batches=batches)
    )
    assert len(await store.list_records("run-concurrent")) == N
    await store.aclose()
    return rows


async def _bench_artifacts(root: Path) -> list[dict[str, Any]]:
    store = LocalArtifactStore(root / "artifacts")
    await store.store(Artifact(name="warm-up", content=b"warm-up", run_id="warm-up"))
    rows = []

    def small(prefix: str, i: int) -> Artifact:
        content = f"{prefix} artifact {i}".encode() * 8  # distinct ~200-byte contents
        return Artifact(name=f"out-{i}", content=content, run_id=prefix, node_id=f"n{i}")

    async def one_by_one() -> None:
        for i in range(N):
            await store.store(small("sequential", i))

    rows.append(_row("store() small, sequential", N, await _timed(one_by_one)))
    elapsed = await _timed(
        lambda: asyncio.gather(*(store.store(small("concurrent", i)) for i in range(N)))
    )
    rows.append(_row(f"store() small, {N} concurrent", N, elapsed))
    assert len(await store.list("concurrent")) == N

    async def chunks() -> AsyncIterator[bytes]:
        block = bytes(range(256)) * (CHUNK // 256)
        for i in range(STREAM_BYTES // CHUNK):
            yield block[i % 256 :] + block[: i % 256]  # distinct content per run

    mb = STREAM_BYTES / 1e6
    started = time.perf_counter()
    stored = await store.store_stream(Artifact(name="big", run_id="stream"), chunks())
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    received = 0
    async for chunk in store.open(stored.artifact_id or ""):
        received += len(chunk)
    read_s = time.perf_counter() - started
    assert received == STREAM_BYTES
    rows.append(_row("store_stream() 64 MiB", 1, write_s, MB_per_s=round(mb / write_s)))
    rows.append(_row("open() 64 MiB", 1, read_s, MB_per_s=round(mb / read_s)))
    await store.aclose()
    return rows


async def _run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="dagwire-bench-stores-") as tmp:
        root = Path(tmp)
        rows = await _bench_records(root, "FULL")
        rows += await _bench_records(root, "NORMAL")
        rows += await _bench_artifacts(root)
    return rows


def run() -> list[dict[str, Any]]:
    """Rows: `record()` one by one and concurrent (FULL, NORMAL), small `store()`, 64 MiB stream."""
    return asyncio.run(_run())


if __name__ == "__main__":
    from bench.table import print_table

    print_table(run())
