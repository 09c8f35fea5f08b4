"""The server foundation on loopback: status interceptor, trace ids, health, size limits."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dagwire.errors import NotFoundError
from dagwire.models import ExecutionRecord, RunRecord, RunStatus
from dagwire.rpc.logs import current_context
from dagwire.rpc.serve import RunningServer, server_options, start_server
from dagwire.rpc.status import TRACE_ID_KEY, RemoteError, error_from_rpc
from dagwire.v1 import store_service_pb2 as pb
from dagwire.v1 import store_service_pb2_grpc as pb_grpc
from dagwire_services.store.servicer import store_services


class _BrokenExecutions:
    """An execution store whose every call fails the way a bug would (pure test double)."""

    seen_trace_ids: ClassVar[list[str]] = []

    async def record(self, record: ExecutionRecord) -> None:
        raise RuntimeError("bug")

    async def record_many(self, records: Sequence[ExecutionRecord]) -> None:
        raise RuntimeError("bug")

    async def list_records(self, run_id: str) -> list[ExecutionRecord]:
        return []

    async def save_run(self, run: RunRecord) -> None:
        raise RuntimeError("bug")

    async def get_run(self, run_id: str) -> RunRecord | None:
        self.seen_trace_ids.append(str(current_context().get("trace_id", "")))
        raise KeyError("internal detail")

    async def list_runs(
        self, *, status: RunStatus | str | None = None, limit: int = 50, after: str | None = None
    ) -> list[RunRecord]:
        raise NotFoundError(f"run {after!r} not found", kind="run", id=str(after))

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    running = await start_server(
        "127.0.0.1:0",
        store_services(Any, _BrokenExecutions()),  # type: ignore[arg-type]
    )
    yield running
    await running.stop(None)


@pytest.fixture
async def api(server: RunningServer) -> AsyncIterator[pb_grpc.ExecutionStoreServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.ExecutionStoreServiceStub(channel)


async def test_unexpected_exception_is_internal_naming_operation_and_trace_id_and_logged(
    api: pb_grpc.ExecutionStoreServiceAsyncStub, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.GetRunRecord(
            pb.GetRunRecordRequest(run_id="r1"), metadata=((TRACE_ID_KEY, "trace-42"),)
        )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == (
        "internal error in GetRunRecord (trace id trace-42); the server log has the details"
    )
    assert _BrokenExecutions.seen_trace_ids[-1] == "trace-42"
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "GetRunRecord failed" in record.getMessage()
    assert record.exc_info is not None and "internal detail" in str(record.exc_info[1])


async def test_call_without_trace_id_still_gets_one_in_the_error(
    api: pb_grpc.ExecutionStoreServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.GetRunRecord(pb.GetRunRecordRequest(run_id="r1"))
    back = error_from_rpc(caught.value)
    assert isinstance(back, RemoteError)
    assert len(back.metadata["trace_id"]) == 32


async def test_mapped_errors_pass_through_the_interceptor_with_their_code(
    api: pb_grpc.ExecutionStoreServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.ListRunRecords(pb.ListRunRecordsRequest(page_size=-5))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "page_size must be 0 (the default of 50) or positive, got -5"


async def test_health_is_serving_after_start_and_not_serving_after_stop(
    server: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="dagwire.v1.ExecutionStoreService")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await server.stop(0.1)
    response = await server.health.Check(health_pb2.HealthCheckRequest(service=""), None)  # type: ignore[arg-type]
    assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_server_options_set_both_message_limits_and_refuse_port_sharing() -> None:
    options = dict(server_options(1234567))
    assert options["grpc.max_send_message_length"] == 1234567
    assert options["grpc.max_receive_message_length"] == 1234567
    assert options["grpc.so_reuseport"] == 0
    assert options["grpc.keepalive_time_ms"] > 0
