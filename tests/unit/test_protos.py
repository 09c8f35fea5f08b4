"""The generated `dagwire.v1` package: its RPCs, its style rules, and that it is not stale."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import EnumDescriptor, FileDescriptor, ServiceDescriptor

from dagwire.v1 import (
    adapter_service_pb2,
    adapter_service_pb2_grpc,
    common_pb2,
    dispatcher_service_pb2,
    orchestrator_service_pb2,
    store_service_pb2,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_MODULES = [
    "common",
    "orchestrator_service",
    "dispatcher_service",
    "store_service",
    "adapter_service",
]

# service -> {rpc: (client_streaming, server_streaming)}
EXPECTED_RPCS: dict[str, dict[str, tuple[bool, bool]]] = {
    "OrchestratorService": {
        "StartRun": (False, False),
        "RunWorkflow": (False, False),
        "GetRun": (False, False),
        "ListRuns": (False, False),
        "CancelRun": (False, False),
        "WatchRun": (False, True),
    },
    "DispatcherService": {
        "Dispatch": (False, False),
        "RegisterAdapter": (False, False),
        "Heartbeat": (False, False),
        "DeregisterAdapter": (False, False),
        "ListAdapters": (False, False),
    },
    "ArtifactStoreService": {
        "PutArtifact": (True, False),
        "GetArtifact": (False, True),
        "StatArtifact": (False, False),
        "ListArtifacts": (False, False),
    },
    "ExecutionStoreService": {
        "RecordExecutions": (False, False),
        "RecordOutcomes": (False, False),
        "ListExecutionRecords": (False, False),
        "SaveRunRecord": (False, False),
        "GetRunRecord": (False, False),
        "ListRunRecords": (False, False),
        "CreateRunRecord": (False, False),
        "ClaimRunLease": (False, False),
        "GetRunLeaseClaim": (False, False),
        "AppendRunEvents": (False, False),
        "ReadRunEvents": (False, False),
        "TruncateRunEvents": (False, False),
        "RequestRunCancel": (False, False),
        "BatchGetRunCancelRequests": (False, False),
        "PutRegistryEntry": (False, False),
        "DeleteRegistryEntry": (False, False),
        "ListRegistryEntries": (False, False),
        "PruneRegistryEntries": (False, False),
    },
    "AgentAdapterService": {
        "Execute": (False, False),
        "Describe": (False, False),
    },
}


def _files() -> list[FileDescriptor]:
    return [importlib.import_module(f"dagwire.v1.{name}_pb2").DESCRIPTOR for name in PROTO_MODULES]


def _services() -> dict[str, ServiceDescriptor]:
    return {name: svc for f in _files() for name, svc in f.services_by_name.items()}


def _enums() -> list[EnumDescriptor]:
    found: list[EnumDescriptor] = []
    for f in _files():
        found.extend(f.enum_types_by_name.values())
        pending = list(f.message_types_by_name.values())
        while pending:
            message = pending.pop()
            found.extend(message.enum_types)
            pending.extend(message.nested_types)
    return found


def _load_gen_protos() -> ModuleType:
    path = REPO_ROOT / "scripts" / "gen_protos.py"
    spec = importlib.util.spec_from_file_location("dagwire_gen_protos", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", PROTO_MODULES)
@pytest.mark.parametrize("suffix", ["_pb2", "_pb2_grpc"])
def test_generated_module_imports_under_dagwire_v1(name: str, suffix: str) -> None:
    module = importlib.import_module(f"dagwire.v1.{name}{suffix}")

    assert module.__name__ == f"dagwire.v1.{name}{suffix}"


def test_generated_modules_are_in_package_dagwire_v1() -> None:
    assert {f.package for f in _files()} == {"dagwire.v1"}


def test_services_have_exactly_the_expected_rpcs_and_streaming_shapes() -> None:
    services = _services()

    assert set(services) == set(EXPECTED_RPCS)
    for service_name, rpcs in EXPECTED_RPCS.items():
        methods = services[service_name].methods_by_name
        actual = {name: (m.client_streaming, m.server_streaming) for name, m in methods.items()}
        assert actual == rpcs, service_name


def test_every_rpc_has_its_own_method_request_and_response() -> None:
    seen: set[str] = set()
    for service in _services().values():
        for method in service.methods:
            assert method.input_type.name == f"{method.name}Request", method.full_name
            assert method.output_type.name == f"{method.name}Response", method.full_name
            assert method.input_type.full_name not in seen, method.full_name
            assert method.output_type.full_name not in seen, method.full_name
            seen |= {method.input_type.full_name, method.output_type.full_name}


def test_every_service_name_ends_in_service() -> None:
    assert all(name.endswith("Service") for name in _services())


def test_every_list_rpc_pages_with_size_token_and_next_token() -> None:
    list_methods = [m for s in _services().values() for m in s.methods if m.name.startswith("List")]

    assert len(list_methods) == 6
    for method in list_methods:
        request = method.input_type.fields_by_name
        assert request["page_size"].type == request["page_size"].TYPE_INT32, method.name
        assert request["page_token"].type == request["page_token"].TYPE_STRING, method.name
        assert "next_page_token" in method.output_type.fields_by_name, method.name


def test_every_enum_zero_value_is_unspecified_and_values_carry_the_enum_prefix() -> None:
    enums = _enums()

    assert {e.name for e in enums} >= {"RunStatus", "TaskStatus", "AdapterHealth"}
    for enum in enums:
        prefix = "".join(f"_{c}" if c.isupper() else c.upper() for c in enum.name).lstrip("_")
        assert enum.values_by_number[0].name == f"{prefix}_UNSPECIFIED", enum.full_name
        assert all(v.name.startswith(f"{prefix}_") for v in enum.values), enum.full_name


def test_status_enums_name_every_state_of_the_python_api() -> None:
    run_states = {v.name for v in common_pb2.RunStatus.DESCRIPTOR.values}
    task_states = {v.name for v in common_pb2.TaskStatus.DESCRIPTOR.values}

    assert run_states == {
        f"RUN_STATUS_{s}" for s in ("UNSPECIFIED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
    }
    assert task_states >= {
        f"TASK_STATUS_{s}"
        for s in ("RUNNING", "SUCCEEDED", "FAILED", "SKIPPED", "CANCELLED", "PENDING")
    }


def test_protos_import_only_well_known_types_besides_their_own() -> None:
    for f in _files():
        for dep in f.dependencies:
            assert dep.name.startswith(("google/protobuf/", "dagwire/v1/")), (f.name, dep.name)


def test_execute_request_round_trip_keeps_integers_in_params_json() -> None:
    params: dict[str, Any] = {"count": 3, "zero": 0, "big": 2**63 - 1, "ratio": 0.5, "s": "é"}
    request = adapter_service_pb2.ExecuteRequest(
        agent="echo",
        params_json=json.dumps(params),
        run_id="r1",
        node_id="greet",
        attempt=2,
        trace_id="t1",
        idempotency_key="r1/greet/2",
        input_artifacts=[
            common_pb2.Artifact(artifact_id="a1", name="small.txt", content=b"hi"),
            common_pb2.Artifact(
                artifact_id="a2",
                name="big.bin",
                reference=common_pb2.ArtifactReference(store_address="127.0.0.1:50053"),
            ),
        ],
    )
    request.deadline.FromSeconds(1_700_000_000)

    decoded = adapter_service_pb2.ExecuteRequest.FromString(request.SerializeToString())
    decoded_params = json.loads(decoded.params_json)

    assert decoded_params == params
    assert type(decoded_params["count"]) is int
    assert type(decoded_params["zero"]) is int
    assert decoded.idempotency_key == "r1/greet/2"
    assert decoded.deadline.ToSeconds() == 1_700_000_000
    small, big = decoded.input_artifacts
    assert (small.WhichOneof("body"), small.content) == ("content", b"hi")
    assert big.WhichOneof("body") == "reference"
    assert big.reference.store_address == "127.0.0.1:50053"


def test_artifact_with_empty_inline_content_differs_from_metadata_only() -> None:
    empty = common_pb2.Artifact(name="empty.txt", content=b"")
    metadata_only = common_pb2.Artifact(name="empty.txt")

    decoded_empty = common_pb2.Artifact.FromString(empty.SerializeToString())
    decoded_metadata_only = common_pb2.Artifact.FromString(metadata_only.SerializeToString())

    assert decoded_empty.WhichOneof("body") == "content"
    assert decoded_empty.content == b""
    assert decoded_metadata_only.WhichOneof("body") is None


def test_put_artifact_stream_messages_are_a_header_or_a_chunk() -> None:
    header = store_service_pb2.PutArtifactRequest(
        header=store_service_pb2.ArtifactHeader(name="out.bin", run_id="r1", node_id="n1")
    )
    chunk = store_service_pb2.PutArtifactRequest(chunk=b"\x00" * 10)

    assert header.WhichOneof("part") == "header"
    assert not header.header.HasField("size")
    assert chunk.WhichOneof("part") == "chunk"


def test_run_event_carries_exactly_one_kind_of_event() -> None:
    event = common_pb2.RunEvent(
        sequence=7,
        run_id="r1",
        attempt_failed=common_pb2.RunEvent.AttemptFailed(
            node_id="n1", attempt=1, error="boom", will_retry=True
        ),
    )
    event.attempt_failed.retry_delay.FromMilliseconds(200)

    decoded = common_pb2.RunEvent.FromString(event.SerializeToString())

    assert decoded.WhichOneof("event") == "attempt_failed"
    assert decoded.attempt_failed.retry_delay.ToMilliseconds() == 200
    watch = orchestrator_service_pb2.WatchRunResponse(event=decoded)
    assert watch.event.sequence == 7


def test_list_requests_default_to_unfiltered_first_page() -> None:
    for request in (
        orchestrator_service_pb2.ListRunsRequest(),
        store_service_pb2.ListRunRecordsRequest(),
        dispatcher_service_pb2.ListAdaptersRequest(),
    ):
        assert request.page_size == 0
        assert request.page_token == ""
    assert orchestrator_service_pb2.ListRunsRequest().status == common_pb2.RUN_STATUS_UNSPECIFIED


class _EchoAdapter(adapter_service_pb2_grpc.AgentAdapterServiceServicer):
    async def Execute(
        self,
        request: adapter_service_pb2.ExecuteRequest,
        context: grpc.aio.ServicerContext[
            adapter_service_pb2.ExecuteRequest, adapter_service_pb2.ExecuteResponse
        ],
    ) -> adapter_service_pb2.ExecuteResponse:
        trace_ids = [
            str(value)
            for key, value in context.invocation_metadata() or ()
            if key == "x-dagwire-trace-id"
        ]
        text = f"{request.params_json}|{','.join(trace_ids)}"
        return adapter_service_pb2.ExecuteResponse(
            output_artifacts=[common_pb2.Artifact(name="out.txt", content=text.encode())]
        )

    async def Describe(
        self,
        request: adapter_service_pb2.DescribeRequest,
        context: grpc.aio.ServicerContext[
            adapter_service_pb2.DescribeRequest, adapter_service_pb2.DescribeResponse
        ],
    ) -> adapter_service_pb2.DescribeResponse:
        return adapter_service_pb2.DescribeResponse(agents=["echo"], capacity=1)


async def test_generated_adapter_stub_and_servicer_talk_over_loopback() -> None:
    server = grpc.aio.server()
    adapter_service_pb2_grpc.add_AgentAdapterServiceServicer_to_server(_EchoAdapter(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = adapter_service_pb2_grpc.AgentAdapterServiceStub(channel)
            response = await stub.Execute(
                adapter_service_pb2.ExecuteRequest(agent="echo", params_json='{"n": 1}'),
                metadata=(("x-dagwire-trace-id", "trace-1"),),
                timeout=10,
            )
    finally:
        await server.stop(None)

    assert [a.content for a in response.output_artifacts] == [b'{"n": 1}|trace-1']


def test_generated_code_is_not_stale() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to regenerate the protos")
    gen_protos = _load_gen_protos()

    problems = gen_protos.stale_files()

    assert problems == [], "dagwire/v1 is stale; run `make protos`: " + "; ".join(problems)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to regenerate the protos")
    gen_protos = _load_gen_protos()

    first = gen_protos.generate(tmp_path / "a")
    second = gen_protos.generate(tmp_path / "b")

    assert first == second
    for rel in first:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
