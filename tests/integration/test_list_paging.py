"""Listings page under the gRPC message limit (docs/limits.md), through real gRPC on loopback.

A store service subprocess (embedded storage) and an orchestrator service in the test's event
loop; runs are written straight into the store, as finished runs of any size would be.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from dagwire.limits import DEFAULT_MAX_MESSAGE_BYTES, PAGE_BYTE_BUDGET
from dagwire.models import NodeSummary, RunRecord, RunStatus, TaskStatus, utc_now
from dagwire.rpc.orchestrator_client import OrchestratorClient
from dagwire.rpc.store_client import RemoteExecutionStore
from dagwire.runtime import Dispatcher
from dagwire.settings import OrchestratorSettings
from dagwire_services.orchestrator.main import OrchestratorService
from tests.stack import Proc, free_address


@dataclass
class Services:
    store: Proc
    executions: RemoteExecutionStore
    client: OrchestratorClient


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    address = free_address()
    store = Proc(
        "store",
        ["dagwire_services.store", "--listen-addr", address, "--data-dir", str(tmp_path / "d")],
        address,
        tmp_path / "store.log",
    )
    store.start()
    executions = RemoteExecutionStore(address)
    service: OrchestratorService | None = None
    client: OrchestratorClient | None = None
    try:
        await store.wait_serving()
        service = OrchestratorService(
            OrchestratorSettings(store_addr=address, grace_seconds=1.0), dispatcher=Dispatcher()
        )
        running = await service.start("127.0.0.1:0")
        client = OrchestratorClient(f"127.0.0.1:{running.port}")
        yield Services(store, executions, client)
    finally:
        if client is not None:
            await client.aclose()
        if service is not None:
            await service.aclose()
        await executions.aclose()
        store.stop()


def finished_run(
    index: int, *, nodes: int = 0, error_bytes: int = 0, var_bytes: int = 0
) -> RunRecord:
    created = utc_now() - timedelta(hours=1) + timedelta(seconds=index)
    return RunRecord(
        run_id=f"run-{index:03d}",
        name=f"big-{index}",
        status=RunStatus.FAILED,
        created_at=created,
        finished_at=created + timedelta(seconds=1),
        spec={
            "name": f"big-{index}",
            "tasks": [{"id": f"t{i}", "agent": "echo"} for i in range(nodes)],
        },
        user_vars={"blob": "v" * var_bytes} if var_bytes else {},
        error="one task failed",
        nodes={
            f"t{i}": NodeSummary(TaskStatus.FAILED, 1, [], "e" * error_bytes) for i in range(nodes)
        },
    )


async def test_list_runs_pages_past_finished_runs_larger_than_a_message(
    services: Services,
) -> None:
    # two finished runs of ~9 MB each (spec and task summaries): one page of both is more than
    # the 16 MiB message limit, which made `dagwire runs` fail for everyone
    big = [finished_run(i, nodes=3000, error_bytes=3000) for i in (1, 2)]
    small = [finished_run(i) for i in range(3, 8)]
    for run in [*big, *small]:
        await services.executions.save_run(run)
    listed = [r.run_id async for r in services.client.iter_runs()]
    assert listed == [f"run-{i:03d}" for i in range(7, 0, -1)]
    # the store service's own listing pages under the limit too, details included
    full = await services.executions.list_runs(limit=50)
    assert [r.run_id for r in full] == listed
    assert len(full[-1].nodes) == 3000


async def test_list_runs_pages_by_bytes_when_listed_runs_are_large(services: Services) -> None:
    # ListRuns leaves out spec and nodes, but user_vars go out: 8 runs of 3 MB each are more
    # than one message holds
    runs = [finished_run(i, var_bytes=3 << 20) for i in range(1, 9)]
    for run in runs:
        await services.executions.save_run(run)
    first = await services.client.list_runs(page_size=50)
    assert first.next_page_token
    assert 1 <= len(first.runs) < 8
    assert sum(len(r.user_vars["blob"]) for r in first.runs) <= max(PAGE_BYTE_BUDGET, 3 << 20)
    listed = [r.run_id async for r in services.client.iter_runs(page_size=50)]
    assert listed == [f"run-{i:03d}" for i in range(8, 0, -1)]
    assert PAGE_BYTE_BUDGET < DEFAULT_MAX_MESSAGE_BYTES
