"""RecordOutcomes through a real store service on loopback: the orchestrator's one-round-trip
write of an attempt's small outputs and its record (embedded backends behind the service)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dagwire.limits import (
    MAX_ARTIFACT_NAME_BYTES,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_VALUE_BYTES,
)
from dagwire.models import Artifact, ExecutionRecord, RunStatus, TaskNode, TaskStatus, utc_now
from dagwire.rpc.serve import RunningServer, start_server
from dagwire.rpc.status import InvalidArgumentError
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from dagwire.runtime import Dispatcher, FunctionAdapter, Orchestrator
from dagwire.stores.base import OutcomeRecorder
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore
from dagwire_services.store.servicer import store_services


@pytest.fixture
async def clients(
    tmp_path: Path,
) -> AsyncIterator[tuple[RemoteArtifactStore, RemoteExecutionStore]]:
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    executions = SqliteExecutionStore(tmp_path / "executions.sqlite3")
    running: RunningServer = await start_server(
        "127.0.0.1:0", store_services(artifacts, executions)
    )
    address = f"127.0.0.1:{running.port}"
    remote_artifacts = RemoteArtifactStore(address)
    remote_executions = RemoteExecutionStore(address)
    try:
        yield remote_artifacts, remote_executions
    finally:
        await remote_artifacts.aclose()
        await remote_executions.aclose()
        await running.stop(None)
        await artifacts.aclose()
        await executions.aclose()


def _record(run_id: str, node_id: str) -> ExecutionRecord:
    now = utc_now()
    return ExecutionRecord(
        run_id=run_id,
        node_id=node_id,
        attempt=1,
        agent="echo",
        status=TaskStatus.SUCCEEDED,
        started_at=now,
        finished_at=now,
        trace_id="0" * 32,
        input_artifact_ids=["in-1"],
    )


def _output(run_id: str, node_id: str, text: str) -> Artifact:
    return Artifact(
        name="out",
        content=text.encode(),
        media_type="text/plain",
        metadata={"k.e$y": "v"},
        run_id=run_id,
        node_id=node_id,
    )


async def test_outcomes_of_many_tasks_finishing_together_are_stored_and_recorded(
    clients: tuple[RemoteArtifactStore, RemoteExecutionStore],
) -> None:
    artifacts, executions = clients
    assert isinstance(executions, OutcomeRecorder)
    assert executions.records_outputs_for(artifacts)
    run_id = "run-outcomes"
    stored = await asyncio.gather(
        *(
            executions.record_outcome(
                _record(run_id, f"t{i}"), [_output(run_id, f"t{i}", f"hello {i}")]
            )
            for i in range(60)
        )
    )
    records = {r.node_id: r for r in await executions.list_records(run_id)}
    assert len(records) == 60
    for i, (artifact,) in enumerate(stored):
        assert artifact.artifact_id is not None and artifact.content == f"hello {i}".encode()
        assert records[f"t{i}"].output_artifact_ids == [artifact.artifact_id]
        assert records[f"t{i}"].input_artifact_ids == ["in-1"]
        loaded = await artifacts.load(artifact.artifact_id)
        assert loaded.content == f"hello {i}".encode()
        assert (loaded.run_id, loaded.node_id, loaded.metadata) == (
            run_id,
            f"t{i}",
            {"k.e$y": "v"},
        )
    assert len({a.artifact_id for (a,) in stored}) == 60  # identical bytes still get own ids


async def test_an_invalid_output_fails_only_its_own_outcome_and_names_it(
    clients: tuple[RemoteArtifactStore, RemoteExecutionStore],
) -> None:
    _, executions = clients
    run_id = "run-invalid"
    bad = Artifact(name="../escape", content=b"x", run_id=run_id, node_id="bad")
    results = await asyncio.gather(
        executions.record_outcome(_record(run_id, "bad"), [bad]),
        executions.record_outcome(_record(run_id, "good"), [_output(run_id, "good", "ok")]),
        return_exceptions=True,
    )
    assert isinstance(results[0], ValueError) and "'../escape'" in str(results[0]), results[0]
    assert isinstance(results[1], list) and results[1][0].artifact_id
    assert [r.node_id for r in await executions.list_records(run_id)] == ["good"]


async def test_an_attempt_without_outputs_is_recorded_with_no_artifact_ids(
    clients: tuple[RemoteArtifactStore, RemoteExecutionStore],
) -> None:
    _, executions = clients
    assert await executions.record_outcome(_record("run-empty", "t"), []) == []
    (record,) = await executions.list_records("run-empty")
    assert record.status is TaskStatus.SUCCEEDED and record.output_artifact_ids == []


async def test_a_remote_execution_store_of_another_service_does_not_take_the_outputs(
    clients: tuple[RemoteArtifactStore, RemoteExecutionStore], tmp_path: Path
) -> None:
    _, executions = clients
    elsewhere = RemoteArtifactStore("127.0.0.1:1")
    assert not executions.records_outputs_for(elsewhere)
    assert not executions.records_outputs_for(LocalArtifactStore(tmp_path / "other"))


async def test_orchestrator_over_the_store_service_records_outputs_with_each_attempt(
    clients: tuple[RemoteArtifactStore, RemoteExecutionStore],
) -> None:
    artifacts, executions = clients

    async def shout(task: TaskNode, inputs: list[Artifact], trace_id: str) -> list[Artifact]:
        text = b"".join(a.content or b"" for a in inputs) or b"hi"
        return [Artifact(name="out", content=text.upper(), media_type="text/plain")]

    async def bad_name(task: TaskNode, inputs: list[Artifact], trace_id: str) -> list[Artifact]:
        return [Artifact(name="a/b", content=b"x")]

    dispatcher = Dispatcher()
    dispatcher.register_adapter("shout", FunctionAdapter(shout))
    dispatcher.register_adapter("bad", FunctionAdapter(bad_name))
    orchestrator = Orchestrator(artifacts, executions, dispatcher=dispatcher)
    try:
        summary = await orchestrator.run_workflow(
            {
                "name": "outcomes",
                "tasks": [
                    {"id": "first", "agent": "shout"},
                    {"id": "second", "agent": "shout", "depends_on": ["first"]},
                    {"id": "broken", "agent": "bad", "retry": {"max_attempts": 2}},
                ],
            }
        )
    finally:
        await orchestrator.aclose()
    assert summary.status is RunStatus.FAILED
    (out,) = summary.nodes["second"].artifacts
    assert out.artifact_id is not None
    assert (await artifacts.load(out.artifact_id)).content == b"HI"
    broken = summary.nodes["broken"]
    assert broken.status is TaskStatus.FAILED and broken.attempts == 2
    assert broken.error is not None and "'a/b'" in broken.error
    records = {(r.node_id, r.attempt): r for r in await executions.list_records(summary.run_id)}
    assert records[("second", 1)].output_artifact_ids == [out.artifact_id]
    assert records[("second", 1)].input_artifact_ids == (records[("first", 1)].output_artifact_ids)
    assert [records[("broken", n)].status for n in (1, 2)] == [TaskStatus.FAILED] * 2
    assert records[("broken", 1)].output_artifact_ids == []


async def test_outputs_over_the_name_and_metadata_limits_are_refused_and_nothing_is_stored(
    clients: tuple[RemoteArtifactStore, RemoteExecutionStore],
) -> None:
    artifacts, executions = clients
    run_id = "run-limits"
    huge = {f"k{i}": "v" * MAX_METADATA_VALUE_BYTES for i in range(5)}  # 320 KiB in all
    over = Artifact(name="out", content=b"x", metadata=huge, run_id=run_id, node_id="big")
    with pytest.raises(InvalidArgumentError) as refused:
        await executions.record_outcome(_record(run_id, "big"), [over])
    assert "outputs[0].metadata" in str(refused.value)
    assert "MAX_METADATA_BYTES" in str(refused.value)
    assert await executions.list_records(run_id) == []
    assert await artifacts.list(run_id) == []


@pytest.mark.parametrize(
    ("fields", "field", "limit"),
    [
        ({"name": "n" * (MAX_ARTIFACT_NAME_BYTES + 1)}, "header.name", "MAX_ARTIFACT_NAME_BYTES"),
        (
            {"metadata": {str(i): "" for i in range(MAX_METADATA_ENTRIES + 1)}},
            "header.metadata",
            "MAX_METADATA_ENTRIES",
        ),
    ],
)
async def test_put_artifact_over_a_limit_is_invalid_argument_naming_the_field_and_limit(
    clients: tuple[RemoteArtifactStore, RemoteExecutionStore],
    fields: dict[str, object],
    field: str,
    limit: str,
) -> None:
    artifacts, _ = clients
    values: dict[str, object] = {"name": "out", "run_id": "run-put", "node_id": "n", **fields}

    async def chunks() -> AsyncIterator[bytes]:
        yield b"content"

    with pytest.raises(InvalidArgumentError) as refused:
        await artifacts.store_stream(Artifact(**values), chunks())  # type: ignore[arg-type]
    assert refused.value.field == field
    assert limit in str(refused.value)
    assert await artifacts.list("run-put") == []
