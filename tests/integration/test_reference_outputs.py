"""An adapter written from the proto alone: it uploads its output with PutArtifact and returns
it by reference (`artifact_id` only), as `adapter_service.proto` allows.

The run must show the store's sha256 and size for that output, and an id that does not exist,
or that was uploaded for another run or task, must fail the attempt with a clear error.
Real gRPC servers on loopback: the store service over the embedded stores and a raw adapter
server built on the generated stubs (no SDK).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest

from dagwire.models import RunStatus, TaskStatus
from dagwire.rpc.adapter_client import AdapterClient
from dagwire.rpc.serve import RunningServer, Service, start_server
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from dagwire.runtime import Dispatcher, Orchestrator
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore
from dagwire.v1 import adapter_service_pb2 as apb
from dagwire.v1 import adapter_service_pb2_grpc as apb_grpc
from dagwire.v1 import common_pb2
from dagwire.v1 import store_service_pb2 as spb
from dagwire.v1 import store_service_pb2_grpc as spb_grpc
from dagwire_services.store.servicer import store_services

CONTENT = b"uploaded by the adapter itself\n" * 100

#: Which run and task the raw adapter names in its PutArtifact header, from the request.
HeaderFor = Callable[[apb.ExecuteRequest], tuple[str, str]]


class RawAdapter(apb_grpc.AgentAdapterServiceServicer):
    """Uploads `CONTENT` and answers with the artifact id alone (or with `reply_id`)."""

    def __init__(self, store_addr: str, header_for: HeaderFor, reply_id: str = "") -> None:
        self.store_addr = store_addr
        self.header_for = header_for
        self.reply_id = reply_id

    async def Execute(
        self, request: apb.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> apb.ExecuteResponse:
        run_id, node_id = self.header_for(request)

        async def parts() -> AsyncIterator[spb.PutArtifactRequest]:
            header = spb.ArtifactHeader(
                name="out", media_type="text/plain", run_id=run_id, node_id=node_id
            )
            yield spb.PutArtifactRequest(header=header)
            yield spb.PutArtifactRequest(chunk=CONTENT)

        async with grpc.aio.insecure_channel(self.store_addr) as channel:
            stored = await spb_grpc.ArtifactStoreServiceStub(channel).PutArtifact(parts())
        artifact_id = self.reply_id or stored.artifact.artifact_id
        return apb.ExecuteResponse(
            output_artifacts=[common_pb2.Artifact(name="out", artifact_id=artifact_id)]
        )


@dataclass
class Rig:
    store: RunningServer
    store_addr: str

    async def run(self, header_for: HeaderFor, reply_id: str = "") -> tuple[Orchestrator, str]:
        adapter_server = await start_server(
            "127.0.0.1:0",
            [
                Service(
                    apb.DESCRIPTOR.services_by_name["AgentAdapterService"].full_name,
                    lambda server: apb_grpc.add_AgentAdapterServiceServicer_to_server(
                        RawAdapter(self.store_addr, header_for, reply_id), server
                    ),
                )
            ],
        )
        self._servers.append(adapter_server)
        dispatcher = Dispatcher()
        client = AdapterClient(f"127.0.0.1:{adapter_server.port}")
        self._clients.append(client)
        dispatcher.register_adapter("raw", client)
        orchestrator = Orchestrator(
            RemoteArtifactStore(self.store_addr),
            RemoteExecutionStore(self.store_addr),
            dispatcher=dispatcher,
        )
        self._orchestrators.append(orchestrator)
        spec = {"name": "by-reference", "tasks": [{"id": "a", "agent": "raw"}]}
        summary = await orchestrator.run_workflow(spec)
        return orchestrator, summary.run_id

    def __post_init__(self) -> None:
        self._servers: list[RunningServer] = []
        self._clients: list[AdapterClient] = []
        self._orchestrators: list[Orchestrator] = []

    async def close(self) -> None:
        for orchestrator in self._orchestrators:
            await orchestrator.aclose()
            await orchestrator.artifact_store.aclose()
            await orchestrator.execution_store.aclose()
        for client in self._clients:
            await client.aclose()
        for server in self._servers:
            await server.stop(None)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = await start_server(
        "127.0.0.1:0",
        store_services(
            LocalArtifactStore(tmp_path / "artifacts"), SqliteExecutionStore(tmp_path / "x.db")
        ),
    )
    built = Rig(store, f"127.0.0.1:{store.port}")
    yield built
    await built.close()
    await store.stop(None)


def _own(request: apb.ExecuteRequest) -> tuple[str, str]:
    return request.run_id, request.node_id


async def test_output_uploaded_by_the_adapter_shows_the_stores_sha256_and_size(rig: Rig) -> None:
    orchestrator, run_id = await rig.run(_own)
    record = await orchestrator.get_run(run_id)
    assert record.status is RunStatus.SUCCEEDED, record.error
    (artifact,) = record.nodes["a"].artifacts
    assert artifact.sha256 == hashlib.sha256(CONTENT).hexdigest()
    assert artifact.size == len(CONTENT)
    events = [e async for e in orchestrator.watch_run(run_id)]
    summary = events[-1].summary
    assert summary is not None
    assert summary.nodes["a"].artifacts[0].sha256 == artifact.sha256
    (recorded,) = await orchestrator.execution_store.list_records(run_id)
    assert recorded.output_artifact_ids == [artifact.artifact_id]


async def test_output_id_that_is_not_in_the_store_fails_the_attempt_clearly(rig: Rig) -> None:
    orchestrator, run_id = await rig.run(_own, reply_id="01a24f02-0000-7000-8000-000000000000")
    record = await orchestrator.get_run(run_id)
    assert record.status is RunStatus.FAILED
    node = record.nodes["a"]
    assert node.status is TaskStatus.FAILED
    assert "is not in the store" in (node.error or ""), node.error


async def test_output_uploaded_for_another_task_fails_the_attempt_clearly(rig: Rig) -> None:
    orchestrator, run_id = await rig.run(lambda request: (request.run_id, "someone-else"))
    record = await orchestrator.get_run(run_id)
    assert record.status is RunStatus.FAILED
    error = record.nodes["a"].error or ""
    assert "was uploaded for run" in error and "someone-else" in error, error
