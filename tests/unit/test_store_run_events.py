"""Run events through the store service: what is stored is what was sent, invalid events are
refused whole, many events of one call travel without a task each, and calls made while a
batch is in flight go out together once it returns (docs/durability.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest

from dagwire.models import RunEventRecord
from dagwire.rpc.serve import start_server
from dagwire.rpc.status import InvalidArgumentError
from dagwire.rpc.store_client import RemoteExecutionStore, _Coalescer
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore
from dagwire.v1 import store_service_pb2 as pb
from dagwire.v1 import store_service_pb2_grpc as pb_grpc
from dagwire_services.store.servicer import store_services


class RecordingExecutions(SqliteExecutionStore):
    """Keeps every batch of events the servicer hands to the store."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.appended: list[list[RunEventRecord]] = []

    async def append_events(self, events: Sequence[RunEventRecord]) -> None:
        self.appended.append(list(events))
        await super().append_events(events)


@dataclass
class Service:
    executions: RecordingExecutions
    client: RemoteExecutionStore
    api: pb_grpc.ExecutionStoreServiceAsyncStub


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    executions = RecordingExecutions(tmp_path / "executions.sqlite3")
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    running = await start_server("127.0.0.1:0", store_services(artifacts, executions))
    address = f"127.0.0.1:{running.port}"
    client = RemoteExecutionStore(address)
    async with grpc.aio.insecure_channel(address) as channel:
        yield Service(
            executions,
            client,
            pb_grpc.ExecutionStoreServiceStub(channel),
        )
    await client.aclose()
    await running.stop(None)
    await executions.aclose()
    await artifacts.aclose()


def event(run_id: str, sequence: int, **data: object) -> RunEventRecord:
    return RunEventRecord(run_id, sequence, 1, {"sequence": sequence, "kind": "x", **data})


async def test_events_round_trip_and_the_store_keeps_the_text_it_was_sent(
    service: Service,
) -> None:
    sent = [event("run-1", 1, note="café ✓"), event("run-1", 2, nested={"a": [1, 2.5, None]})]
    await service.client.append_events(sent)

    stored = await service.client.list_events("run-1")
    assert [(e.run_id, e.sequence, e.epoch, e.data) for e in stored] == [
        (e.run_id, e.sequence, e.epoch, e.data) for e in sent
    ]
    # the servicer passed on the validated text instead of having the store encode it again
    (batch,) = service.executions.appended
    assert [e.data_json for e in batch] == [json.dumps(e.data, ensure_ascii=False) for e in sent]
    assert [e.data for e in batch] == [e.data for e in sent]


async def test_a_record_without_text_is_encoded_by_the_store(tmp_path: Path) -> None:
    store = SqliteExecutionStore(tmp_path / "executions.sqlite3")
    try:
        await store.append_events([event("run-1", 1, note="é"), event("run-1", 2)])
        assert [e.data for e in await store.list_events("run-1")] == [
            event("run-1", 1, note="é").data,
            event("run-1", 2).data,
        ]
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("data_json", "message"),
    [
        ('{"kind": "x"', "is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"text"', "must be a JSON object"),
        ("", "is not JSON"),
    ],
)
async def test_an_event_that_is_not_a_json_object_is_refused_and_nothing_is_stored(
    service: Service, data_json: str, message: str
) -> None:
    request = pb.AppendRunEventsRequest(
        events=[
            pb.StoredRunEvent(run_id="run-1", sequence=1, epoch=1, data_json='{"ok": true}'),
            pb.StoredRunEvent(run_id="run-1", sequence=2, epoch=1, data_json=data_json),
        ]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.api.AppendRunEvents(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"events[1].data_json {message}" in (caught.value.details() or "")
    assert await service.client.list_events("run-1") == []
    assert service.executions.appended == []


async def test_many_events_of_one_call_are_all_stored_in_few_calls_without_a_task_each(
    service: Service,
) -> None:
    events = [event("run-1", i, text="x" * 100) for i in range(1, 1201)]
    tasks_before = len(asyncio.all_tasks())
    appending = asyncio.ensure_future(service.client.append_events(events))
    await asyncio.sleep(0)  # the call queued its events and waits for the batches
    assert len(asyncio.all_tasks()) - tasks_before < 10
    await appending

    stored = await service.client.list_events("run-1")
    stored += await service.client.list_events("run-1", after=stored[-1].sequence)
    assert [e.sequence for e in stored] == list(range(1, 1201))
    assert len(service.executions.appended) == 3  # batches of at most 500 events


async def test_a_refused_batch_fails_the_call_that_queued_it(service: Service) -> None:
    with pytest.raises(InvalidArgumentError, match="sequence must be at least 1"):
        await service.client.append_events([event("run-1", 1), event("run-1", 0)])
    assert await service.client.list_events("run-1") == []


async def test_calls_made_while_a_batch_is_in_flight_go_out_together_once_it_returns() -> None:
    sent: list[list[int]] = []
    release = asyncio.Event()

    async def send(items: list[int]) -> list[int]:
        sent.append(items)
        if len(sent) == 1:
            await release.wait()
        return [i * 10 for i in items]

    coalescer: _Coalescer[int, int] = _Coalescer(send)
    first = asyncio.ensure_future(coalescer.submit(1))
    await asyncio.sleep(0.01)
    assert sent == [[1]]  # a lone call goes out at once
    later = [asyncio.ensure_future(coalescer.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0)
    more = asyncio.ensure_future(coalescer.submit(4))  # a later tick, still in flight
    await asyncio.sleep(0.01)
    assert sent == [[1]]
    release.set()
    assert await asyncio.gather(first, *later, more) == [10, 20, 30, 40]
    assert sent == [[1], [2, 3, 4]]


async def test_a_failed_batch_fails_its_callers_and_the_next_batch_still_goes_out() -> None:
    sent: list[list[int]] = []

    async def send(items: list[int]) -> list[int]:
        sent.append(items)
        await asyncio.sleep(0.01)
        if 1 in items:
            raise RuntimeError("store down")
        return items

    coalescer: _Coalescer[int, int] = _Coalescer(send)
    first = asyncio.ensure_future(coalescer.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    second = asyncio.ensure_future(coalescer.submit(2))
    with pytest.raises(RuntimeError, match="store down"):
        await first
    assert await second == 2
    assert sent == [[1], [2]]
