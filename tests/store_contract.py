"""The store contract (docs/contracts.md §4, §6), as tests every `ArtifactStore`/`ExecutionStore`
must pass.

A test module runs the suite against a backend by importing it
(``from tests.store_contract import *``) and providing these fixtures:

- ``artifact_store``: a fresh, empty `ArtifactStore`;
- ``reopen_artifact_store``: a callable returning a *new* instance on the same backing storage;
- ``execution_store``: a fresh, empty `ExecutionStore`;
- ``reopen_execution_store``: a callable returning a new instance on the same backing storage.

The fixtures own every instance they hand out (and close them at teardown).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from dagwire.errors import LeaseLostError, NotFoundError
from dagwire.limits import (
    MAX_ARTIFACT_NAME_BYTES,
    MAX_METADATA_BYTES,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES,
)
from dagwire.models import (
    Artifact,
    ExecutionRecord,
    NodeSummary,
    RegistryEntry,
    RunEventRecord,
    RunRecord,
    RunStatus,
    TaskStatus,
)
from dagwire.stores import ArtifactStore, ExecutionStore, ServiceRegistry
from dagwire.stores.base import (
    FencedStore,
    PagedArtifactStore,
    PagedExecutionStore,
    RunLedger,
    record_key,
)

__all__ = [
    "test_artifact_store_fresh_instance_loads_every_stored_artifact",
    "test_artifact_store_satisfies_the_protocol",
    "test_execution_store_fresh_instance_sees_every_record_and_run",
    "test_execution_store_keeps_a_service_registry",
    "test_execution_store_satisfies_the_protocol",
    "test_fenced_store_refuses_writes_of_a_superseded_epoch_and_keeps_the_others",
    "test_get_run_unknown_id_returns_none",
    "test_ledger_claims_each_epoch_exactly_once_even_concurrently",
    "test_ledger_creates_a_run_once_per_run_id",
    "test_ledger_events_are_listed_in_order_and_repeats_are_ignored",
    "test_ledger_superseded_names_the_runs_whose_next_epoch_was_claimed",
    "test_ledger_truncate_removes_only_earlier_epochs_events_after_the_prefix",
    "test_list_page_walks_every_artifact_once_in_list_order",
    "test_list_records_is_ordered_by_start_time_then_node_then_attempt",
    "test_list_records_of_a_run_larger_than_one_page_lists_each_once",
    "test_list_records_page_limit_must_be_positive",
    "test_list_records_page_walks_every_record_once_in_list_order",
    "test_list_records_unknown_run_is_empty",
    "test_list_returns_the_runs_artifacts_in_store_order_without_content",
    "test_list_runs_after_an_unknown_run_id_raises_not_found",
    "test_list_runs_default_page_is_50_newest",
    "test_list_runs_filters_by_status",
    "test_list_runs_pagination_with_after_covers_every_run_exactly_once",
    "test_list_runs_returns_newest_first",
    "test_list_runs_without_details_leaves_out_spec_and_nodes",
    "test_list_unknown_run_is_empty",
    "test_load_unknown_id_raises_not_found_naming_it",
    "test_media_type_defaults_to_octet_stream",
    "test_metadata_keys_with_dot_and_dollar_come_back_unchanged",
    "test_name_that_is_not_utf8_is_a_value_error_naming_the_field",
    "test_name_with_nul_is_a_value_error_naming_the_field",
    "test_names_and_metadata_at_their_limits_round_trip",
    "test_names_and_metadata_over_their_limits_are_refused_and_nothing_is_stored",
    "test_open_and_stat_unknown_id_raise_not_found",
    "test_open_yields_chunks_of_at_most_1_mib",
    "test_record_datetimes_round_trip_as_timezone_aware_utc",
    "test_record_final_status_overwrites_running",
    "test_record_is_idempotent_per_run_node_attempt",
    "test_record_many_writes_every_record_once",
    "test_record_running_never_overwrites_a_final_status",
    "test_record_upsert_replaces_fields_of_the_same_attempt",
    "test_records_of_500_concurrent_calls_land_exactly_once",
    "test_registry_delete_removes_one_entry_and_unknown_deletes_succeed",
    "test_registry_entries_outlive_the_store_instance",
    "test_registry_lists_one_kind_in_key_order_with_keyset_paging",
    "test_registry_prune_removes_only_entries_expired_before_the_cutoff",
    "test_registry_put_replaces_the_entry_of_its_kind_and_key",
    "test_registry_refuses_empty_keys_and_naive_expiry",
    "test_save_run_and_get_run_round_trip_every_field",
    "test_save_run_upserts_by_run_id",
    "test_stat_returns_metadata_without_content",
    "test_store_and_load_round_trip_content_and_metadata",
    "test_store_empty_content_round_trips",
    "test_store_fills_id_sha256_size_and_created_at",
    "test_store_identical_content_twice_gives_two_ids_one_digest",
    "test_store_many_concurrently_lists_every_artifact_once",
    "test_store_returns_a_new_value_and_does_not_mutate_the_input",
    "test_store_stream_5_mib_round_trips_in_chunks",
    "test_store_stream_that_fails_half_way_leaves_nothing_listed",
    "test_unicode_names_round_trip",
]

MIB = 1 << 20
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

ReopenArtifactStore = Callable[[], ArtifactStore]
ReopenExecutionStore = Callable[[], ExecutionStore]


def _artifact(content: bytes | None = b"hello", **fields: object) -> Artifact:
    values: dict[str, object] = {"name": "out.txt", "run_id": "run-1", "node_id": "node-a"}
    values.update(fields)
    return Artifact(content=content, **values)  # type: ignore[arg-type]


def _record(node_id: str = "a", attempt: int = 1, **fields: object) -> ExecutionRecord:
    values: dict[str, object] = {
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
    return ExecutionRecord(**values)  # type: ignore[arg-type]


def _run(run_id: str, created_at: datetime = T0, **fields: object) -> RunRecord:
    values: dict[str, object] = {
        "run_id": run_id,
        "name": "wf",
        "status": RunStatus.RUNNING,
        "created_at": created_at,
    }
    values.update(fields)
    return RunRecord(**values)  # type: ignore[arg-type]


async def _chunks(total: int, size: int) -> AsyncIterator[bytes]:
    rng = random.Random(total)
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield rng.randbytes(n)
        sent += n
        await asyncio.sleep(0)


def _expected(total: int, size: int) -> bytes:
    rng = random.Random(total)
    out = bytearray()
    while len(out) < total:
        out += rng.randbytes(min(size, total - len(out)))
    return bytes(out)


# ---------------------------------------------------------------------- artifact store


def test_artifact_store_satisfies_the_protocol(artifact_store: ArtifactStore) -> None:
    assert isinstance(artifact_store, ArtifactStore)


async def test_store_and_load_round_trip_content_and_metadata(
    artifact_store: ArtifactStore,
) -> None:
    given = _artifact(b"payload", media_type="text/plain", metadata={"lang": "en"})
    stored = await artifact_store.store(given)
    assert stored.artifact_id is not None
    loaded = await artifact_store.load(stored.artifact_id)
    assert loaded.content == b"payload"
    assert loaded.without_content() == stored.without_content()


async def test_store_fills_id_sha256_size_and_created_at(artifact_store: ArtifactStore) -> None:
    before = datetime.now(UTC)
    stored = await artifact_store.store(_artifact(b"abc"))
    assert isinstance(stored.artifact_id, str) and stored.artifact_id
    assert stored.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert stored.size == 3
    assert stored.created_at is not None and stored.created_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=5) <= stored.created_at <= datetime.now(UTC)
    assert (stored.run_id, stored.node_id, stored.name) == ("run-1", "node-a", "out.txt")


async def test_store_returns_a_new_value_and_does_not_mutate_the_input(
    artifact_store: ArtifactStore,
) -> None:
    given = _artifact(b"x", metadata={"k": "v"})
    snapshot = dataclasses.replace(given, metadata=dict(given.metadata))
    stored = await artifact_store.store(given)
    assert stored is not given
    assert given == snapshot
    assert given.artifact_id is None and given.sha256 is None and given.size is None


async def test_store_identical_content_twice_gives_two_ids_one_digest(
    artifact_store: ArtifactStore,
) -> None:
    first = await artifact_store.store(_artifact(b"same bytes", node_id="a"))
    second = await artifact_store.store(_artifact(b"same bytes", node_id="b"))
    assert first.artifact_id != second.artifact_id
    assert first.sha256 == second.sha256
    assert (await artifact_store.load(first.artifact_id or "")).node_id == "a"
    assert (await artifact_store.load(second.artifact_id or "")).node_id == "b"


async def test_list_returns_the_runs_artifacts_in_store_order_without_content(
    artifact_store: ArtifactStore,
) -> None:
    ids = []
    for i in range(5):
        stored = await artifact_store.store(_artifact(f"c{i}".encode(), name=f"a{i}"))
        ids.append(stored.artifact_id)
    await artifact_store.store(_artifact(b"other", run_id="run-2"))
    listed = await artifact_store.list("run-1")
    assert [a.artifact_id for a in listed] == ids
    assert [a.name for a in listed] == [f"a{i}" for i in range(5)]
    assert all(a.content is None for a in listed)
    assert all(a.sha256 is not None and a.size == 2 for a in listed)


async def test_list_unknown_run_is_empty(artifact_store: ArtifactStore) -> None:
    assert await artifact_store.list("no-such-run") == []


async def test_load_unknown_id_raises_not_found_naming_it(artifact_store: ArtifactStore) -> None:
    with pytest.raises(NotFoundError, match="no-such-artifact") as caught:
        await artifact_store.load("no-such-artifact")
    assert isinstance(caught.value, LookupError)


async def test_open_and_stat_unknown_id_raise_not_found(artifact_store: ArtifactStore) -> None:
    with pytest.raises(NotFoundError, match="missing-id"):
        await artifact_store.stat("missing-id")
    with pytest.raises(NotFoundError, match="missing-id"):
        async for _ in artifact_store.open("missing-id"):
            pass


async def test_stat_returns_metadata_without_content(artifact_store: ArtifactStore) -> None:
    stored = await artifact_store.store(_artifact(b"12345", metadata={"a": "b"}))
    stat = await artifact_store.stat(stored.artifact_id or "")
    assert stat.content is None
    assert stat == stored.without_content()


async def test_metadata_keys_with_dot_and_dollar_come_back_unchanged(
    artifact_store: ArtifactStore,
) -> None:
    metadata = {"a.b": "1", "$set": "2", "x.$y.z": "3", "plain": "4", "": "empty key"}
    stored = await artifact_store.store(_artifact(metadata=metadata))
    assert (await artifact_store.load(stored.artifact_id or "")).metadata == metadata
    [listed] = await artifact_store.list("run-1")
    assert listed.metadata == metadata


async def test_unicode_names_round_trip(artifact_store: ArtifactStore) -> None:
    name = "résumé — 報告 🚀.txt"
    stored = await artifact_store.store(_artifact(name=name, metadata={"ключ": "значение"}))
    loaded = await artifact_store.load(stored.artifact_id or "")
    assert loaded.name == name
    assert loaded.metadata == {"ключ": "значение"}


async def test_name_with_nul_is_a_value_error_naming_the_field(
    artifact_store: ArtifactStore,
) -> None:
    with pytest.raises(ValueError, match="name"):
        await artifact_store.store(_artifact(name="bad\x00name"))
    assert await artifact_store.list("run-1") == []


async def test_name_that_is_not_utf8_is_a_value_error_naming_the_field(
    artifact_store: ArtifactStore,
) -> None:
    with pytest.raises(ValueError, match="name"):
        await artifact_store.store(_artifact(name="bad\udc80name"))
    assert await artifact_store.list("run-1") == []


async def test_store_empty_content_round_trips(artifact_store: ArtifactStore) -> None:
    stored = await artifact_store.store(_artifact(b""))
    assert stored.size == 0
    assert stored.sha256 == hashlib.sha256(b"").hexdigest()
    assert (await artifact_store.load(stored.artifact_id or "")).content == b""
    assert [c async for c in artifact_store.open(stored.artifact_id or "")] in ([], [b""])


async def test_media_type_defaults_to_octet_stream(artifact_store: ArtifactStore) -> None:
    stored = await artifact_store.store(Artifact(name="n", content=b"x", run_id="run-1"))
    assert stored.media_type == "application/octet-stream"
    assert (await artifact_store.load(stored.artifact_id or "")).media_type == (
        "application/octet-stream"
    )


async def test_store_stream_5_mib_round_trips_in_chunks(artifact_store: ArtifactStore) -> None:
    total, size = 5 * MIB + 123, 64 * 1024 + 7
    stored = await artifact_store.store_stream(
        _artifact(None, name="big.bin"), _chunks(total, size)
    )
    expected = _expected(total, size)
    assert stored.content is None
    assert stored.size == total
    assert stored.sha256 == hashlib.sha256(expected).hexdigest()
    received = bytearray()
    async for chunk in artifact_store.open(stored.artifact_id or ""):
        received += chunk
    assert bytes(received) == expected
    assert (await artifact_store.load(stored.artifact_id or "")).content == expected
    assert [a.artifact_id for a in await artifact_store.list("run-1")] == [stored.artifact_id]


async def test_open_yields_chunks_of_at_most_1_mib(artifact_store: ArtifactStore) -> None:
    content = random.Random(3).randbytes(3 * MIB + 5)
    stored = await artifact_store.store(_artifact(content))
    chunks = [c async for c in artifact_store.open(stored.artifact_id or "")]
    assert len(chunks) >= 4
    assert all(len(c) <= MIB for c in chunks)
    assert b"".join(chunks) == content


async def test_store_stream_that_fails_half_way_leaves_nothing_listed(
    artifact_store: ArtifactStore,
) -> None:
    class Broken(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * MIB
        raise Broken("connection dropped")

    with pytest.raises(Broken, match="connection dropped"):
        await artifact_store.store_stream(_artifact(None), failing())
    assert await artifact_store.list("run-1") == []


async def test_store_many_concurrently_lists_every_artifact_once(
    artifact_store: ArtifactStore,
) -> None:
    stored = await asyncio.gather(
        *(artifact_store.store(_artifact(f"c{i % 10}".encode(), name=f"n{i}")) for i in range(200))
    )
    listed = await artifact_store.list("run-1")
    assert sorted(str(a.artifact_id) for a in listed) == sorted(str(a.artifact_id) for a in stored)
    assert len({a.artifact_id for a in stored}) == 200


async def test_artifact_store_fresh_instance_loads_every_stored_artifact(
    artifact_store: ArtifactStore, reopen_artifact_store: ReopenArtifactStore
) -> None:
    small = await artifact_store.store(_artifact(b"small", metadata={"a.b": "c"}))
    big = await artifact_store.store_stream(_artifact(None, name="big"), _chunks(2 * MIB, 100_000))
    await artifact_store.aclose()
    fresh = reopen_artifact_store()
    loaded = await fresh.load(small.artifact_id or "")
    assert loaded.content == b"small"
    assert loaded.without_content() == small.without_content()
    assert (await fresh.load(big.artifact_id or "")).content == _expected(2 * MIB, 100_000)
    assert [a.artifact_id for a in await fresh.list("run-1")] == [
        small.artifact_id,
        big.artifact_id,
    ]


# ---------------------------------------------------------------------- execution store


def test_execution_store_satisfies_the_protocol(execution_store: ExecutionStore) -> None:
    assert isinstance(execution_store, ExecutionStore)


async def test_record_is_idempotent_per_run_node_attempt(execution_store: ExecutionStore) -> None:
    await execution_store.record(_record())
    await execution_store.record(_record())
    assert await execution_store.list_records("run-1") == [_record()]


async def test_record_upsert_replaces_fields_of_the_same_attempt(
    execution_store: ExecutionStore,
) -> None:
    await execution_store.record(_record(status=TaskStatus.FAILED, error="boom"))
    await execution_store.record(_record(status=TaskStatus.SUCCEEDED, output_artifact_ids=["x"]))
    [stored] = await execution_store.list_records("run-1")
    assert stored.status == TaskStatus.SUCCEEDED
    assert stored.output_artifact_ids == ["x"]
    assert stored.error is None


async def test_record_running_never_overwrites_a_final_status(
    execution_store: ExecutionStore,
) -> None:
    final = _record(status=TaskStatus.FAILED, error="boom", output_artifact_ids=[])
    await execution_store.record(final)
    await execution_store.record(_record(status=TaskStatus.RUNNING, finished_at=None))
    assert await execution_store.list_records("run-1") == [final]


async def test_record_final_status_overwrites_running(execution_store: ExecutionStore) -> None:
    await execution_store.record(_record(status=TaskStatus.RUNNING, finished_at=None))
    final = _record(status=TaskStatus.SUCCEEDED, output_artifact_ids=["art-1"])
    await execution_store.record(final)
    assert await execution_store.list_records("run-1") == [final]


async def test_list_records_is_ordered_by_start_time_then_node_then_attempt(
    execution_store: ExecutionStore,
) -> None:
    expected = [
        _record("z", 1, started_at=T0),
        _record("a", 1, started_at=T0 + timedelta(microseconds=1)),
        _record("a", 2, started_at=T0 + timedelta(seconds=2)),
        _record("b", 1, started_at=T0 + timedelta(seconds=2)),
        _record("b", 2, started_at=T0 + timedelta(seconds=2)),
        _record("c", 1, started_at=T0 + timedelta(days=1)),
    ]
    shuffled = list(expected)
    random.Random(7).shuffle(shuffled)
    for record in shuffled:
        await execution_store.record(record)
    await execution_store.record(_record("other", run_id="run-2"))
    assert await execution_store.list_records("run-1") == expected


async def test_list_records_unknown_run_is_empty(execution_store: ExecutionStore) -> None:
    assert await execution_store.list_records("no-such-run") == []


async def test_record_datetimes_round_trip_as_timezone_aware_utc(
    execution_store: ExecutionStore,
) -> None:
    started = datetime(2026, 3, 29, 1, 59, 59, 999999, tzinfo=UTC)
    finished = datetime(2026, 3, 29, 4, 0, 0, 1, tzinfo=timezone(timedelta(hours=2)))
    await execution_store.record(_record(started_at=started, finished_at=finished))
    [stored] = await execution_store.list_records("run-1")
    assert stored.started_at == started and stored.finished_at == finished
    assert stored.started_at.utcoffset() == timedelta(0)
    assert stored.finished_at is not None and stored.finished_at.utcoffset() == timedelta(0)
    assert stored.started_at.microsecond == 999999 and stored.finished_at.microsecond == 1


async def test_records_of_500_concurrent_calls_land_exactly_once(
    execution_store: ExecutionStore,
) -> None:
    records = [
        _record(f"n{i:03d}", started_at=T0 + timedelta(microseconds=i), input_artifact_ids=[str(i)])
        for i in range(500)
    ]
    await asyncio.gather(*(execution_store.record(r) for r in records))
    await asyncio.gather(*(execution_store.record(r) for r in records[:100]))  # repeats
    assert await execution_store.list_records("run-1") == records


async def test_record_many_writes_every_record_once(execution_store: ExecutionStore) -> None:
    records = [_record(f"n{i}", started_at=T0 + timedelta(seconds=i)) for i in range(20)]
    await execution_store.record_many(records)
    await execution_store.record_many(records[:5])
    assert await execution_store.list_records("run-1") == records


async def test_save_run_and_get_run_round_trip_every_field(execution_store: ExecutionStore) -> None:
    run = RunRecord(
        run_id="run-1",
        name="hello",
        status=RunStatus.FAILED,
        created_at=T0,
        finished_at=T0 + timedelta(minutes=1, microseconds=7),
        spec={"name": "hello", "tasks": [{"id": "a", "agent": "echo", "params": {"n": 3}}]},
        user_vars={"topic": "gRPC", "a.b": "$x"},
        request_id="req-1",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        error="task 'a' failed",
        nodes={
            "a": NodeSummary(
                status=TaskStatus.FAILED,
                attempts=3,
                error="boom",
                artifacts=[
                    Artifact(name="o", artifact_id="art-1", sha256="00" * 32, size=1, created_at=T0)
                ],
            ),
            "b": NodeSummary(status=TaskStatus.SKIPPED),
        },
    )
    await execution_store.save_run(run)
    assert await execution_store.get_run("run-1") == run


async def test_get_run_unknown_id_returns_none(execution_store: ExecutionStore) -> None:
    assert await execution_store.get_run("no-such-run") is None


async def test_save_run_upserts_by_run_id(execution_store: ExecutionStore) -> None:
    await execution_store.save_run(_run("run-1"))
    finished = _run("run-1", status=RunStatus.SUCCEEDED, finished_at=T0 + timedelta(seconds=3))
    await execution_store.save_run(finished)
    assert await execution_store.get_run("run-1") == finished
    assert await execution_store.list_runs() == [finished]


async def test_list_runs_returns_newest_first(execution_store: ExecutionStore) -> None:
    for i in (3, 1, 4, 0, 2):
        await execution_store.save_run(_run(f"run-{i}", T0 + timedelta(seconds=i)))
    runs = await execution_store.list_runs()
    assert [r.run_id for r in runs] == ["run-4", "run-3", "run-2", "run-1", "run-0"]


async def test_list_runs_filters_by_status(execution_store: ExecutionStore) -> None:
    statuses = [RunStatus.RUNNING, RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.SUCCEEDED]
    for i, status in enumerate(statuses):
        await execution_store.save_run(_run(f"run-{i}", T0 + timedelta(seconds=i), status=status))
    succeeded = await execution_store.list_runs(status=RunStatus.SUCCEEDED)
    assert [r.run_id for r in succeeded] == ["run-3", "run-1"]
    assert [r.run_id for r in await execution_store.list_runs(status="failed")] == ["run-2"]
    assert await execution_store.list_runs(status=RunStatus.CANCELLED) == []


async def test_list_runs_pagination_with_after_covers_every_run_exactly_once(
    execution_store: ExecutionStore,
) -> None:
    # Ties on created_at (three runs a second) must not lose or repeat runs across pages.
    run_ids = [f"run-{i:02d}" for i in range(23)]
    await asyncio.gather(
        *(
            execution_store.save_run(_run(r, T0 + timedelta(seconds=i // 3)))
            for i, r in enumerate(run_ids)
        )
    )
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = await execution_store.list_runs(limit=5, after=after)
        if not page:
            break
        pages += 1
        assert len(page) <= 5
        seen += [r.run_id for r in page]
        after = page[-1].run_id
    assert seen == sorted(run_ids, key=lambda r: (run_ids.index(r) // 3, r), reverse=True)
    assert pages == 5


async def test_list_runs_after_an_unknown_run_id_raises_not_found(
    execution_store: ExecutionStore,
) -> None:
    await execution_store.save_run(_run("run-1"))
    with pytest.raises(NotFoundError, match="no-such-run"):
        await execution_store.list_runs(after="no-such-run")


async def test_list_runs_default_page_is_50_newest(execution_store: ExecutionStore) -> None:
    await asyncio.gather(
        *(
            execution_store.save_run(_run(f"run-{i:02d}", T0 + timedelta(seconds=i)))
            for i in range(60)
        )
    )
    runs = await execution_store.list_runs()
    assert [r.run_id for r in runs] == [f"run-{i:02d}" for i in range(59, 9, -1)]


async def test_execution_store_fresh_instance_sees_every_record_and_run(
    execution_store: ExecutionStore, reopen_execution_store: ReopenExecutionStore
) -> None:
    records = [_record(f"n{i}", started_at=T0 + timedelta(seconds=i)) for i in range(10)]
    await asyncio.gather(*(execution_store.record(r) for r in records))
    run = _run("run-1", status=RunStatus.SUCCEEDED, finished_at=T0 + timedelta(seconds=20))
    await execution_store.save_run(run)
    await execution_store.aclose()
    fresh = reopen_execution_store()
    assert await fresh.list_records("run-1") == records
    assert await fresh.get_run("run-1") == run
    assert await fresh.list_runs() == [run]


# ---------------------------------------------------------------------- keyset paging


async def test_list_records_page_walks_every_record_once_in_list_order(
    execution_store: ExecutionStore,
) -> None:
    if not isinstance(execution_store, PagedExecutionStore):
        pytest.skip("this store pages on the server side only (its list_records follows pages)")
    # ties on started_at (four attempts a second) must not lose or repeat records
    records = [
        _record(f"n{i % 7}", i // 7 + 1, started_at=T0 + timedelta(seconds=i // 4))
        for i in range(45)
    ]
    await execution_store.record_many(records)
    await execution_store.record(_record("other", run_id="run-2"))
    expected = await execution_store.list_records("run-1")
    seen: list[ExecutionRecord] = []
    after = None
    pages = 0
    while True:
        page = await execution_store.list_records_page("run-1", after=after, limit=10)
        if not page:
            break
        pages += 1
        assert len(page) <= 10
        seen += page
        after = record_key(page[-1])
    assert seen == expected and len(seen) == 45
    assert pages == 5


async def test_list_records_page_limit_must_be_positive(execution_store: ExecutionStore) -> None:
    if not isinstance(execution_store, PagedExecutionStore):
        pytest.skip("this store pages on the server side only")
    with pytest.raises(ValueError, match="limit"):
        await execution_store.list_records_page("run-1", limit=0)
    assert await execution_store.list_records_page("no-such-run") == []


async def test_list_records_of_a_run_larger_than_one_page_lists_each_once(
    execution_store: ExecutionStore,
) -> None:
    records = [
        _record(f"n{i:04d}", started_at=T0 + timedelta(milliseconds=i // 3)) for i in range(2100)
    ]
    await execution_store.record_many(records)
    listed = await execution_store.list_records("run-1")
    assert [(r.node_id, r.attempt) for r in listed] == [(r.node_id, r.attempt) for r in records]


async def test_list_page_walks_every_artifact_once_in_list_order(
    artifact_store: ArtifactStore,
) -> None:
    if not isinstance(artifact_store, PagedArtifactStore):
        pytest.skip("this store pages on the server side only (its list follows pages)")
    for i in range(23):
        await artifact_store.store(_artifact(f"content {i}".encode(), name=f"out-{i}.txt"))
    await artifact_store.store(_artifact(run_id="run-2"))
    expected = await artifact_store.list("run-1")
    seen: list[Artifact] = []
    after: str | None = None
    while True:
        page = await artifact_store.list_page("run-1", after=after, limit=5)
        if not page:
            break
        assert len(page) <= 5 and all(a.content is None for a in page)
        seen += page
        after = page[-1].artifact_id
    assert seen == expected and len(seen) == 23
    assert await artifact_store.list_page("no-such-run") == []
    with pytest.raises(ValueError, match="limit"):
        await artifact_store.list_page("run-1", limit=0)


async def test_list_runs_without_details_leaves_out_spec_and_nodes(
    execution_store: ExecutionStore,
) -> None:
    spec = {"name": "wf", "tasks": [{"id": "a", "agent": "echo"}]}
    nodes = {"a": NodeSummary(TaskStatus.SUCCEEDED, 1)}
    await execution_store.save_run(
        _run("run-1", spec=spec, nodes=nodes, user_vars={"k": "v"}, status=RunStatus.SUCCEEDED)
    )
    [full] = await execution_store.list_runs()
    assert full.spec == spec and set(full.nodes) == {"a"}
    [brief] = await execution_store.list_runs(details=False)
    assert brief.spec == {} and brief.nodes == {}
    assert (brief.run_id, brief.user_vars, brief.status) == ("run-1", {"k": "v"}, "succeeded")


# ---------------------------------------------------------------------- service registry


def _registry(store: ExecutionStore) -> ServiceRegistry:
    assert isinstance(store, ServiceRegistry)
    return store


def _entry(
    key: str, expires_at: datetime = T0, kind: str = "adapter", **data: object
) -> RegistryEntry:
    return RegistryEntry(kind, key, expires_at, dict(data))


def test_execution_store_keeps_a_service_registry(execution_store: ExecutionStore) -> None:
    assert isinstance(execution_store, ServiceRegistry)


async def test_registry_put_replaces_the_entry_of_its_kind_and_key(
    execution_store: ExecutionStore,
) -> None:
    registry = _registry(execution_store)
    await registry.put_entry(_entry("a-1", address="127.0.0.1:1", agents=["echo"]))
    later = _entry("a-1", T0 + timedelta(seconds=10), address="127.0.0.1:2", capacity=3)
    await registry.put_entry(later)
    await registry.put_entry(_entry("a-1", kind="dispatcher", in_flight={"a-1": 2}))
    assert await registry.list_entries("adapter") == [later]
    dispatchers = await registry.list_entries("dispatcher")
    assert [(e.key, e.data) for e in dispatchers] == [("a-1", {"in_flight": {"a-1": 2}})]


async def test_registry_lists_one_kind_in_key_order_with_keyset_paging(
    execution_store: ExecutionStore,
) -> None:
    registry = _registry(execution_store)
    keys = [f"k{i:03d}" for i in range(25)]
    shuffled = list(keys)
    random.Random(7).shuffle(shuffled)
    await asyncio.gather(*(registry.put_entry(_entry(k, n=i)) for i, k in enumerate(shuffled)))
    await registry.put_entry(_entry("k000", kind="other"))
    seen: list[str] = []
    after = ""
    while True:
        page = await registry.list_entries("adapter", after=after, limit=10)
        seen += [e.key for e in page]
        if len(page) < 10:
            break
        after = page[-1].key
    assert seen == keys
    assert await registry.list_entries("nothing-here") == []


async def test_registry_delete_removes_one_entry_and_unknown_deletes_succeed(
    execution_store: ExecutionStore,
) -> None:
    registry = _registry(execution_store)
    await registry.put_entry(_entry("a"))
    await registry.put_entry(_entry("b"))
    await registry.delete_entry("adapter", "a")
    await registry.delete_entry("adapter", "never-registered")
    await registry.delete_entry("dispatcher", "b")  # another kind: "b" stays
    assert [e.key for e in await registry.list_entries("adapter")] == ["b"]


async def test_registry_prune_removes_only_entries_expired_before_the_cutoff(
    execution_store: ExecutionStore,
) -> None:
    registry = _registry(execution_store)
    for i in range(4):
        await registry.put_entry(_entry(f"a{i}", T0 + timedelta(seconds=i)))
    await registry.put_entry(_entry("d0", T0, kind="dispatcher"))
    assert await registry.prune_entries("adapter", T0 + timedelta(seconds=2)) == 2
    assert [e.key for e in await registry.list_entries("adapter")] == ["a2", "a3"]
    assert [e.key for e in await registry.list_entries("dispatcher")] == ["d0"]


async def test_registry_entries_outlive_the_store_instance(
    execution_store: ExecutionStore, reopen_execution_store: ReopenExecutionStore
) -> None:
    entry = _entry("a-1", T0 + timedelta(microseconds=7), agents=["echo", "ünï"], capacity=4)
    await _registry(execution_store).put_entry(entry)
    await execution_store.aclose()
    found = await _registry(reopen_execution_store()).list_entries("adapter")
    assert found == [entry]
    assert found[0].expires_at.utcoffset() == timedelta(0)


async def test_registry_refuses_empty_keys_and_naive_expiry(
    execution_store: ExecutionStore,
) -> None:
    registry = _registry(execution_store)
    with pytest.raises(ValueError, match="key must be non-empty"):
        await registry.put_entry(_entry(""))
    with pytest.raises(ValueError, match="expires_at"):
        await registry.put_entry(_entry("a", datetime(2026, 1, 1)))
    assert await registry.list_entries("adapter") == []


# ---------------------------------------------------------------------- the run ledger


def _ledger(store: ExecutionStore) -> RunLedger:
    if not isinstance(store, RunLedger):
        pytest.skip("this execution store keeps no run ledger")
    return store


def _event(run_id: str, sequence: int, epoch: int = 1) -> RunEventRecord:
    return RunEventRecord(run_id, sequence, epoch, {"kind": "task_started", "n": sequence})


async def test_ledger_creates_a_run_once_per_run_id(execution_store: ExecutionStore) -> None:
    ledger = _ledger(execution_store)
    results = await asyncio.gather(
        *(ledger.create_run(_run("run-c", name=f"w{i}")) for i in range(5))
    )
    assert sorted(results) == [False, False, False, False, True]
    stored = await execution_store.get_run("run-c")
    assert stored is not None and stored.name == f"w{results.index(True)}"


async def test_ledger_claims_each_epoch_exactly_once_even_concurrently(
    execution_store: ExecutionStore,
) -> None:
    ledger = _ledger(execution_store)
    claims = await asyncio.gather(*(ledger.claim_run("run-l", 2, f"o{i}") for i in range(6)))
    assert claims.count(True) == 1
    assert await ledger.lease_claimed("run-l", 2)
    assert not await ledger.lease_claimed("run-l", 3)
    assert await ledger.claim_run("run-l", 3, "o9")  # the next epoch is free again


async def test_ledger_superseded_names_the_runs_whose_next_epoch_was_claimed(
    execution_store: ExecutionStore,
) -> None:
    ledger = _ledger(execution_store)
    assert await ledger.claim_run("run-a", 2, "adopter")
    assert await ledger.claim_run("run-b", 2, "adopter")
    leases = {"run-a": 1, "run-b": 2, "run-c": 1, "run-d": 0}
    # run-a's owner of epoch 1 was fenced off; run-b's epoch-2 owner is the adopter itself;
    # run-c was never claimed; epoch 0 is never fenced
    assert await ledger.superseded(leases) == {"run-a"}
    assert await ledger.superseded({}) == set()


async def test_ledger_events_are_listed_in_order_and_repeats_are_ignored(
    execution_store: ExecutionStore,
) -> None:
    ledger = _ledger(execution_store)
    await ledger.append_events([_event("run-e", n) for n in (1, 2, 3)])
    await ledger.append_events([_event("run-e", n, epoch=1) for n in (2, 3, 4)])  # a retry
    listed = await ledger.list_events("run-e")
    assert [(e.sequence, e.data["n"]) for e in listed] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert [e.sequence for e in await ledger.list_events("run-e", after=2, limit=1)] == [3]


async def test_ledger_truncate_removes_only_earlier_epochs_events_after_the_prefix(
    execution_store: ExecutionStore,
) -> None:
    ledger = _ledger(execution_store)
    # an interrupted batch left a hole: 1, then 6 and 7 (never published)
    await ledger.append_events([_event("run-t", n) for n in (1, 6, 7)])
    await ledger.append_events([_event("run-other", n) for n in (1, 6)])
    assert await ledger.truncate_events("run-t", 1, 2) == 2
    assert [e.sequence for e in await ledger.list_events("run-t")] == [1]
    await ledger.append_events([_event("run-t", n, epoch=2) for n in (2, 3)])
    assert await ledger.truncate_events("run-t", 1, 2) == 0  # epoch 2's own events stay
    assert [(e.sequence, e.epoch) for e in await ledger.list_events("run-t")] == [
        (1, 1),
        (2, 2),
        (3, 2),
    ]
    assert [e.sequence for e in await ledger.list_events("run-other")] == [1, 6]


async def test_fenced_store_refuses_writes_of_a_superseded_epoch_and_keeps_the_others(
    execution_store: ExecutionStore,
) -> None:
    ledger = _ledger(execution_store)
    if not isinstance(execution_store, FencedStore):
        pytest.skip("this execution store does not fence writes (only the store service does)")
    assert await ledger.create_run(_run("run-old", lease_epoch=1))
    assert await ledger.create_run(_run("run-ok", lease_epoch=1))
    execution_store.fence("run-old", 1)
    execution_store.fence("run-ok", 1)
    assert await ledger.claim_run("run-old", 2, "adopter")  # another orchestrator took it
    with pytest.raises(LeaseLostError, match="run-old"):
        await execution_store.save_run(_run("run-old", lease_epoch=1, name="stale"))
    # writes of two runs coalesced into one call: only the superseded run's are refused
    results = await asyncio.gather(
        execution_store.record(_record(run_id="run-old")),
        execution_store.record(_record(run_id="run-ok")),
        ledger.append_events([_event("run-old", 1)]),
        ledger.append_events([_event("run-ok", 1)]),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == [
        "LeaseLostError",
        "NoneType",
        "LeaseLostError",
        "NoneType",
    ]
    assert await execution_store.list_records("run-old") == []
    assert [r.run_id for r in await execution_store.list_records("run-ok")] == ["run-ok"]
    assert await ledger.list_events("run-old") == []
    assert len(await ledger.list_events("run-ok")) == 1
    stored = await execution_store.get_run("run-old")
    assert stored is not None and stored.name == "wf"
    # the adopter, writing under epoch 2, is not fenced
    execution_store.fence("run-old", 2)
    await execution_store.save_run(_run("run-old", lease_epoch=2, name="adopted"))
    stored = await execution_store.get_run("run-old")
    assert stored is not None and stored.name == "adopted"


# ---------------------------------------------------------------------- artifact limits

_OVER_LIMITS: dict[str, tuple[dict[str, object], str]] = {
    "name": ({"name": "n" * (MAX_ARTIFACT_NAME_BYTES + 1)}, r"name.*MAX_ARTIFACT_NAME_BYTES"),
    "name in bytes": (  # under the limit in characters, over it in UTF-8 bytes
        {"name": "é" * (MAX_ARTIFACT_NAME_BYTES // 2 + 1)},
        r"name.*MAX_ARTIFACT_NAME_BYTES",
    ),
    "entries": (
        {"metadata": {f"k{i}": "" for i in range(MAX_METADATA_ENTRIES + 1)}},
        r"metadata.*MAX_METADATA_ENTRIES",
    ),
    "key": ({"metadata": {"k" * (MAX_METADATA_KEY_BYTES + 1): "v"}}, r"metadata.*MAX_METADATA_KEY"),
    "value": (
        {"metadata": {"k": "v" * (MAX_METADATA_VALUE_BYTES + 1)}},
        r"metadata\['k'\].*MAX_METADATA_VALUE_BYTES",
    ),
    "total": (
        {
            "metadata": {
                f"k{i}": "v" * MAX_METADATA_VALUE_BYTES
                for i in range(MAX_METADATA_BYTES // MAX_METADATA_VALUE_BYTES + 1)
            }
        },
        r"metadata.*MAX_METADATA_BYTES",
    ),
}


@pytest.mark.parametrize("case", sorted(_OVER_LIMITS))
async def test_names_and_metadata_over_their_limits_are_refused_and_nothing_is_stored(
    artifact_store: ArtifactStore, case: str
) -> None:
    fields, message = _OVER_LIMITS[case]
    with pytest.raises(ValueError, match=message):
        await artifact_store.store(_artifact(**fields))
    with pytest.raises(ValueError, match=message):
        await artifact_store.store_stream(_artifact(None, **fields), _chunks(3, 1))
    assert await artifact_store.list("run-1") == []


async def test_names_and_metadata_at_their_limits_round_trip(artifact_store: ArtifactStore) -> None:
    name = "n" * MAX_ARTIFACT_NAME_BYTES
    value = "v" * MAX_METADATA_VALUE_BYTES
    metadata = {f"{i:0{MAX_METADATA_KEY_BYTES}d}": value for i in range(3)}
    metadata.update({f"k{i}": "" for i in range(MAX_METADATA_ENTRIES - len(metadata))})
    stored = await artifact_store.store(_artifact(name=name, metadata=metadata))
    loaded = await artifact_store.load(stored.artifact_id or "")
    assert (loaded.name, loaded.metadata) == (name, metadata)
