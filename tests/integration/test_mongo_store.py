"""`MongoExecutionStore` on FerretDB 1.24 (PostgreSQL): indexes, group commit, encoding, outages."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from dagwire.errors import StoreUnavailableError
from dagwire.models import Artifact, ExecutionRecord, NodeSummary, RunRecord, RunStatus, TaskStatus
from dagwire.stores.mongo import MongoExecutionStore
from tests.servers import (
    LOOPBACK,
    PostgresServer,
    devservers_bin_dir,
    find_free_port,
    stop_process,
    tcp_port_open,
    wait_until,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
Doc = dict[str, Any]


def _record(node_id: str = "a", attempt: int = 1, **fields: Any) -> ExecutionRecord:
    values: dict[str, Any] = {
        "run_id": "run-1",
        "node_id": node_id,
        "attempt": attempt,
        "agent": "echo",
        "status": TaskStatus.SUCCEEDED,
        "started_at": T0,
        "finished_at": T0 + timedelta(seconds=1),
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
    }
    values.update(fields)
    return ExecutionRecord(**values)


@pytest.fixture
async def store(mongodb_uri: str, mongodb_database_name: str) -> AsyncIterator[MongoExecutionStore]:
    store = MongoExecutionStore(mongodb_uri, database=mongodb_database_name)
    yield store
    await store.aclose()


@pytest.fixture
async def raw(mongodb_uri: str, mongodb_database_name: str) -> AsyncIterator[Any]:
    """The test's database through a plain client, to look at the stored documents."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        mongodb_uri, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    yield client[mongodb_database_name]
    await client.close()


async def test_indexes_exist_after_first_use(store: MongoExecutionStore, raw: Any) -> None:
    await store.record(_record())
    await store.get_run("nothing")
    executions = await raw["executions"].index_information()
    runs = await raw["runs"].index_information()
    assert executions["run_started_node_attempt"]["key"] == [
        ("run_id", 1),
        ("started_at_us", 1),
        ("node_id", 1),
        ("attempt", 1),
    ]
    assert runs["newest"]["key"] == [("created_at_us", -1), ("run_id", -1)]
    assert runs["status_newest"]["key"] == [("status", 1), ("created_at_us", -1), ("run_id", -1)]


def test_constructor_does_no_io() -> None:
    # Nothing listens on port 1: a constructor that connected would fail here.
    MongoExecutionStore("mongodb://127.0.0.1:1/", database="x")


async def test_500_concurrent_records_land_once_in_a_handful_of_commands(
    store: MongoExecutionStore, raw: Any
) -> None:
    records = [_record(f"n{i:03d}", started_at=T0 + timedelta(microseconds=i)) for i in range(500)]
    await store.record(_record("warm-up", run_id="run-0"))  # client and indexes ready
    commands_before = store.write_commands
    await asyncio.gather(*(store.record(r) for r in records))
    assert store.write_commands - commands_before <= 3
    assert await raw["executions"].count_documents({"run_id": "run-1"}) == 500
    assert await store.list_records("run-1") == records


async def test_concurrent_writes_of_one_key_collapse_and_final_status_wins(
    store: MongoExecutionStore,
) -> None:
    final = _record(status=TaskStatus.FAILED, error="boom")
    running = _record(status=TaskStatus.RUNNING, finished_at=None)
    # Final then a late running, in one batch and again in separate batches.
    await asyncio.gather(store.record(final), store.record(running))
    assert await store.list_records("run-1") == [final]
    await store.record(running)
    assert await store.list_records("run-1") == [final]


async def test_running_replaces_running_but_not_final(store: MongoExecutionStore) -> None:
    first = _record(status=TaskStatus.RUNNING, finished_at=None, input_artifact_ids=["a"])
    second = _record(status=TaskStatus.RUNNING, finished_at=None, input_artifact_ids=["b"])
    await store.record(first)
    await store.record(second)
    assert await store.list_records("run-1") == [second]


async def test_map_keys_with_dot_and_dollar_are_stored_encoded_and_come_back(
    store: MongoExecutionStore, raw: Any
) -> None:
    artifact = Artifact(
        name="o", artifact_id="art-1", sha256="00" * 32, size=1, created_at=T0,
        metadata={"a.b": "1", "$set": "2", "": "3", "100%": "4"},
    )  # fmt: skip
    run = RunRecord(
        run_id="run-1",
        name="wf",
        status=RunStatus.SUCCEEDED,
        created_at=T0,
        spec={"tasks": [{"id": "a", "params": {"x.y": {"$gt": 1}}}]},
        user_vars={"a.b": "$x", "$k": "v"},
        error="nul \x00 inside",
        nodes={"a": NodeSummary(status=TaskStatus.SUCCEEDED, attempts=1, artifacts=[artifact])},
    )
    await store.save_run(run)
    doc = await raw["runs"].find_one({"_id": "run-1"})
    assert doc["user_vars"] == {"a%2Eb": "$x", "%24k": "v"}
    assert doc["spec"]["tasks"][0]["params"] == {"x%2Ey": {"%24gt": 1}}
    stored_meta = doc["nodes"]["a"]["artifacts"][0]["metadata"]
    assert stored_meta == {"a%2Eb": "1", "%24set": "2", "%": "3", "100%25": "4"}
    assert doc["created_at_us"] == 1767323045123456
    assert await store.get_run("run-1") == run


async def test_record_stores_exact_microseconds_and_a_date_for_people(
    store: MongoExecutionStore, raw: Any
) -> None:
    await store.record(_record(error="a\x00b"))
    doc = await raw["executions"].find_one({})
    assert doc["_id"] == '["run-1","a",1]'
    assert doc["started_at_us"] == 1767323045123456
    assert doc["started_at"] == datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)
    [record] = await store.list_records("run-1")
    assert record.error == "a\x00b"


async def test_invalid_record_is_a_value_error_and_writes_nothing(
    store: MongoExecutionStore,
) -> None:
    naive = datetime(2026, 1, 1)  # naive: the point of the test
    with pytest.raises(ValueError, match="started_at"):
        await store.record_many([_record("ok"), _record("bad", started_at=naive)])
    with pytest.raises(ValueError, match="status"):
        await store.record(_record(status="exploded"))
    assert await store.list_records("run-1") == []


async def test_unreachable_server_raises_store_unavailable_within_seconds() -> None:
    port = find_free_port()
    store = MongoExecutionStore(
        f"mongodb://127.0.0.1:{port}/", database="x", server_selection_timeout_ms=1000
    )
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
            await store.record(_record())
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            await store.list_records("run-1")
    finally:
        await store.aclose()
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------------- outage and restart


class _FerretDB:
    """FerretDB on a fixed port that can be stopped and started again (same PostgreSQL)."""

    def __init__(self, postgresql_url: str, log_dir: Path) -> None:
        self.port = find_free_port()
        self.postgresql_url = postgresql_url
        self.log_path = log_dir / "ferretdb.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://{LOOPBACK}:{self.port}/"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(devservers_bin_dir() / "ferretdb"),
                    "--listen-addr",
                    f"{LOOPBACK}:{self.port}",
                    "--postgresql-url",
                    self.postgresql_url,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            lambda: tcp_port_open(LOOPBACK, self.port),
            what="FerretDB",
            timeout=60,
            log_path=self.log_path,
            process=self.process,
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture
def own_ferretdb() -> Iterator[_FerretDB]:
    with PostgresServer(database="ferretdb") as pg, tempfile.TemporaryDirectory() as logs:
        server = _FerretDB(pg.url, Path(logs))
        server.start()
        try:
            yield server
        finally:
            server.stop()


async def test_server_down_raises_store_unavailable_and_data_survives_a_restart(
    own_ferretdb: _FerretDB,
) -> None:
    store = MongoExecutionStore(
        own_ferretdb.uri, database="outage", server_selection_timeout_ms=2000
    )
    try:
        await store.record(_record())
        own_ferretdb.stop()
        started = time.monotonic()
        with pytest.raises(
            StoreUnavailableError, match=f"MongoDB at 127.0.0.1:{own_ferretdb.port}"
        ):
            await store.record(_record("b"))
        with pytest.raises(StoreUnavailableError):
            await store.get_run("run-1")
        assert time.monotonic() - started < 15
        own_ferretdb.start()
        await store.record(_record("b"))  # the same instance recovers
        assert [r.node_id for r in await store.list_records("run-1")] == ["a", "b"]
    finally:
        await store.aclose()
