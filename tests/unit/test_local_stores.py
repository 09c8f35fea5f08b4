"""Behaviour of the embedded stores beyond the shared contract: files, SQLite, durability."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dagwire.errors import NotFoundError
from dagwire.models import Artifact, ExecutionRecord, RunRecord, RunStatus, TaskStatus
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore

T0 = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
MIB = 1 << 20


def _record(node_id: str = "a", **fields: object) -> ExecutionRecord:
    values: dict[str, object] = {
        "run_id": "run-1",
        "node_id": node_id,
        "attempt": 1,
        "agent": "echo",
        "status": TaskStatus.SUCCEEDED,
        "started_at": T0,
        "finished_at": T0 + timedelta(seconds=1),
    }
    values.update(fields)
    return ExecutionRecord(**values)  # type: ignore[arg-type]


def _blobs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "blobs").rglob("*") if p.is_file())


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name.startswith(".tmp-")]


@pytest.fixture
async def artifacts(tmp_path: Path) -> AsyncIterator[LocalArtifactStore]:
    store = LocalArtifactStore(tmp_path / "artifacts")
    yield store
    await store.aclose()


@pytest.fixture
async def executions(tmp_path: Path) -> AsyncIterator[SqliteExecutionStore]:
    store = SqliteExecutionStore(tmp_path / "db" / "executions.sqlite3")
    yield store
    await store.aclose()


# ---------------------------------------------------------------------- LocalArtifactStore


async def test_local_artifact_store_constructor_does_no_io(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "not-yet")
    assert not (tmp_path / "not-yet").exists()
    await store.aclose()
    assert not (tmp_path / "not-yet").exists()


async def test_local_artifact_store_keeps_identical_content_in_one_blob(
    artifacts: LocalArtifactStore,
) -> None:
    first = await artifacts.store(Artifact(name="a", content=b"same", run_id="r"))
    second = await artifacts.store(Artifact(name="b", content=b"same", run_id="r"))

    async def chunks() -> AsyncIterator[bytes]:
        yield b"sa"
        yield b"me"

    third = await artifacts.store_stream(Artifact(name="c", run_id="r"), chunks())
    assert len({first.artifact_id, second.artifact_id, third.artifact_id}) == 3
    assert _blobs(artifacts.root) == [
        artifacts.root / "blobs" / (first.sha256 or "")[:2] / (first.sha256 or "")
    ]
    assert _leftovers(artifacts.root) == []


async def test_local_artifact_store_blob_holds_the_exact_bytes(
    artifacts: LocalArtifactStore,
) -> None:
    stored = await artifacts.store(Artifact(name="a", content=b"\x00\xffbytes", run_id="r"))
    sha = hashlib.sha256(b"\x00\xffbytes").hexdigest()
    assert (artifacts.root / "blobs" / sha[:2] / sha).read_bytes() == b"\x00\xffbytes"
    assert stored.sha256 == sha


async def test_local_artifact_store_failed_stream_leaves_no_temp_file_or_blob(
    artifacts: LocalArtifactStore,
) -> None:
    async def failing() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"y" * MIB
        raise ConnectionError("peer went away")

    with pytest.raises(ConnectionError, match="peer went away"):
        await artifacts.store_stream(Artifact(name="x", run_id="r"), failing())
    assert _blobs(artifacts.root) == []
    assert _leftovers(artifacts.root) == []
    assert await artifacts.list("r") == []


async def test_local_artifact_store_cancelled_stream_leaves_nothing(
    artifacts: LocalArtifactStore,
) -> None:
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"z" * (256 * 1024)
            started.set()
            await asyncio.sleep(0.001)

    upload = asyncio.create_task(artifacts.store_stream(Artifact(name="x", run_id="r"), endless()))
    await started.wait()
    await asyncio.sleep(0.05)
    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload
    assert _blobs(artifacts.root) == []
    assert _leftovers(artifacts.root) == []
    assert await artifacts.list("r") == []


async def test_local_artifact_store_store_without_content_is_a_value_error(
    artifacts: LocalArtifactStore,
) -> None:
    with pytest.raises(ValueError, match="content is None"):
        await artifacts.store(Artifact(name="x"))


async def test_local_artifact_store_stream_with_content_set_is_a_value_error(
    artifacts: LocalArtifactStore,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    with pytest.raises(ValueError, match="content must be None"):
        await artifacts.store_stream(Artifact(name="x", content=b"x"), chunks())


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"metadata": {"bad\x00key": "v"}}, "metadata key"),
        ({"metadata": {"k": "bad\udcffvalue"}}, "metadata['k']"),
        ({"run_id": "r\udc00"}, "run_id"),
        ({"node_id": "n\x00"}, "node_id"),
        ({"media_type": "text/\x00plain"}, "media_type"),
    ],
)
async def test_local_artifact_store_invalid_field_is_a_value_error_naming_it(
    artifacts: LocalArtifactStore, fields: dict[str, object], field_name: str
) -> None:
    artifact = Artifact(name="x", content=b"x", **fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"^{re.escape(field_name)} "):
        await artifacts.store(artifact)


async def test_local_artifact_store_empty_media_type_becomes_the_default(
    artifacts: LocalArtifactStore,
) -> None:
    stored = await artifacts.store(Artifact(name="x", content=b"x", media_type=""))
    assert stored.media_type == "application/octet-stream"


async def test_local_artifact_store_index_is_sqlite_in_wal_mode(
    artifacts: LocalArtifactStore,
) -> None:
    await artifacts.store(Artifact(name="x", content=b"x", run_id="r"))
    conn = sqlite3.connect(artifacts.root / "index.sqlite3")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM artifacts WHERE run_id = ? ORDER BY seq", ("r",)
        ).fetchall()
    finally:
        conn.close()
    assert "artifacts_by_run" in str(plan)


async def test_local_artifact_store_missing_blob_is_not_found(
    artifacts: LocalArtifactStore,
) -> None:
    stored = await artifacts.store(Artifact(name="x", content=b"gone", run_id="r"))
    sha = stored.sha256 or ""
    (artifacts.root / "blobs" / sha[:2] / sha).unlink()
    with pytest.raises(NotFoundError, match="missing"):
        await artifacts.load(stored.artifact_id or "")


async def test_local_artifact_store_works_again_after_aclose(
    artifacts: LocalArtifactStore,
) -> None:
    first = await artifacts.store(Artifact(name="x", content=b"1", run_id="r"))
    await artifacts.aclose()
    second = await artifacts.store(Artifact(name="y", content=b"2", run_id="r"))
    assert [a.artifact_id for a in await artifacts.list("r")] == [
        first.artifact_id,
        second.artifact_id,
    ]


async def test_local_artifact_store_keeps_the_event_loop_responsive(
    artifacts: LocalArtifactStore,
) -> None:
    gaps: list[float] = []
    loop = asyncio.get_running_loop()
    done = False

    async def ticker() -> None:
        last = loop.time()
        while not done:
            await asyncio.sleep(0.005)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    content = b"q" * (48 * MIB)
    stored = await artifacts.store(Artifact(name="big", content=content, run_id="r"))
    loaded = await artifacts.load(stored.artifact_id or "")
    done = True
    await ticking
    assert loaded.content == content
    assert max(gaps) < 0.25  # hashing, writing and reading 48 MiB happen on the store's threads


# ---------------------------------------------------------------------- SqliteExecutionStore


async def test_sqlite_execution_store_constructor_does_no_io(tmp_path: Path) -> None:
    store = SqliteExecutionStore(tmp_path / "a" / "b" / "x.sqlite3")
    assert not (tmp_path / "a").exists()
    assert await store.list_records("r") == []  # first use creates the parent directories
    assert (tmp_path / "a" / "b" / "x.sqlite3").exists()
    await store.aclose()


async def test_sqlite_execution_store_uses_wal_and_a_unique_attempt_key(
    executions: SqliteExecutionStore,
) -> None:
    await executions.record(_record())
    conn = sqlite3.connect(executions.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(
                "INSERT INTO executions VALUES ('run-1', 'a', 1, 'x', 'running', 0, NULL, NULL,"
                " '', '[]', '[]')"
            )
    finally:
        conn.close()


async def test_sqlite_execution_store_group_commits_concurrent_writes(
    executions: SqliteExecutionStore,
) -> None:
    await executions.record(_record("warm-up"))
    before = executions._db.batches_committed
    await asyncio.gather(*(executions.record(_record(f"n{i}")) for i in range(500)))
    assert executions._db.batches_committed - before <= 5
    assert len(await executions.list_records("run-1")) == 501


async def test_sqlite_execution_store_failing_write_does_not_undo_its_batch(
    executions: SqliteExecutionStore,
) -> None:
    bad = RunRecord(run_id="bad", name="x", status="running", created_at=T0, spec={"t": {1, 2}})
    good = [executions.record(_record(f"n{i}")) for i in range(10)]
    results = await asyncio.gather(executions.save_run(bad), *good, return_exceptions=True)
    assert isinstance(results[0], ValueError)
    assert "not JSON-serializable" in str(results[0])
    assert results[1:] == [None] * 10
    assert len(await executions.list_records("run-1")) == 10
    assert await executions.get_run("bad") is None


async def test_sqlite_execution_store_naive_datetime_is_a_value_error_naming_the_field(
    executions: SqliteExecutionStore,
) -> None:
    with pytest.raises(ValueError, match=r"^started_at must be a timezone-aware datetime"):
        await executions.record(_record(started_at=datetime(2026, 1, 1)))
    with pytest.raises(ValueError, match=r"^created_at must be a timezone-aware datetime"):
        await executions.save_run(
            RunRecord(run_id="r", name="n", status="running", created_at=datetime(2026, 1, 1))
        )


async def test_sqlite_execution_store_unknown_status_is_a_value_error(
    executions: SqliteExecutionStore,
) -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        await executions.record(_record(status="exploded"))
    with pytest.raises(ValueError, match="run status must be one of"):
        await executions.list_runs(status="exploded")


async def test_sqlite_execution_store_rejects_a_limit_below_one(
    executions: SqliteExecutionStore,
) -> None:
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        await executions.list_runs(limit=0)


async def test_sqlite_execution_store_record_many_is_all_or_nothing(
    executions: SqliteExecutionStore,
) -> None:
    with pytest.raises(ValueError, match="node_id"):
        await executions.record_many([_record("ok"), _record("bad\x00")])
    assert await executions.list_records("run-1") == []


async def test_sqlite_execution_store_error_text_that_is_not_utf8_is_kept_readable(
    executions: SqliteExecutionStore,
) -> None:
    await executions.record(_record(status=TaskStatus.FAILED, error="bad \udcff byte"))
    [stored] = await executions.list_records("run-1")
    assert stored.error == "bad \ufffd byte"


async def test_sqlite_execution_store_works_again_after_aclose(
    executions: SqliteExecutionStore,
) -> None:
    await executions.record(_record("a"))
    await executions.aclose()
    await executions.record(_record("b"))
    assert [r.node_id for r in await executions.list_records("run-1")] == ["a", "b"]


def test_sqlite_execution_store_writes_survive_a_killed_process(tmp_path: Path) -> None:
    db = tmp_path / "executions.sqlite3"
    root = tmp_path / "artifacts"
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from datetime import UTC, datetime
        from dagwire.models import Artifact, ExecutionRecord, RunRecord
        from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore

        async def main():
            store = SqliteExecutionStore({str(db)!r})
            artifacts = LocalArtifactStore({str(root)!r})
            now = datetime.now(UTC)
            await asyncio.gather(*(
                store.record(ExecutionRecord(run_id="r", node_id=f"n{{i}}", attempt=1,
                    agent="a", status="succeeded", started_at=now, finished_at=now))
                for i in range(50)
            ))
            await store.save_run(RunRecord(run_id="r", name="n", status="succeeded",
                created_at=now))
            stored = await artifacts.store(Artifact(name="x", content=b"kept", run_id="r"))
            print(stored.artifact_id, flush=True)
            os._exit(0)  # no aclose, no interpreter shutdown

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    artifact_id = done.stdout.strip()

    async def check() -> None:
        store = SqliteExecutionStore(db)
        artifacts = LocalArtifactStore(root)
        try:
            assert len(await store.list_records("r")) == 50
            run = await store.get_run("r")
            assert run is not None and run.status == RunStatus.SUCCEEDED
            assert (await artifacts.load(artifact_id)).content == b"kept"
        finally:
            await store.aclose()
            await artifacts.aclose()

    asyncio.run(check())


async def test_local_stores_lookups_of_ids_that_are_not_utf8_find_nothing(
    artifacts: LocalArtifactStore, executions: SqliteExecutionStore
) -> None:
    with pytest.raises(NotFoundError, match="artifact"):
        await artifacts.load("id\udc80")
    assert await artifacts.list("run\udc80") == []
    assert await executions.get_run("run\udc80") is None
    assert await executions.list_records("run\udc80") == []
    with pytest.raises(NotFoundError, match="run"):
        await executions.list_runs(after="run\udc80")


async def test_sqlite_execution_store_write_during_aclose_reopens_cleanly(
    executions: SqliteExecutionStore,
) -> None:
    await executions.record(_record("a"))
    await asyncio.gather(executions.aclose(), executions.record(_record("b")))
    assert [r.node_id for r in await executions.list_records("run-1")] == ["a", "b"]
