"""The orchestrator in-process, on the embedded stores and the toolbox agents."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagwire.errors import (
    NonRetryableError,
    NotFoundError,
    ResourceExhaustedError,
    RunAlreadyFinishedError,
    StoreUnavailableError,
    WorkflowValidationError,
)
from dagwire.models import (
    Artifact,
    RetryPolicy,
    RunEventRecord,
    RunRecord,
    RunStatus,
    TaskNode,
    TaskStatus,
)
from dagwire.runtime import Dispatcher, FunctionAdapter, Orchestrator, RunEventKind, backoff_delay
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore
from dagwire.toolbox import blob_chunks, toolbox_adapters


class Recorder:
    """An adapter that records every call it gets and answers like echo."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[TaskNode, list[Artifact], str]] = []
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0

    async def execute(
        self, task: TaskNode, inputs: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        self.calls.append((task, inputs, trace_id))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return [Artifact(name="out", content=f"{task.id}".encode(), media_type="text/plain")]


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[LocalArtifactStore, SqliteExecutionStore]]:
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    executions = SqliteExecutionStore(tmp_path / "executions.sqlite3")
    yield artifacts, executions
    await artifacts.aclose()
    await executions.aclose()


@pytest.fixture
async def orchestrator(
    stores: tuple[LocalArtifactStore, SqliteExecutionStore],
) -> AsyncIterator[Orchestrator]:
    dispatcher = Dispatcher()
    for key, adapter in toolbox_adapters().items():
        dispatcher.register_adapter(key, adapter)
    orch = Orchestrator(*stores, dispatcher=dispatcher)
    yield orch
    await orch.aclose()


def register(orch: Orchestrator, key: str, adapter: Any) -> None:
    dispatcher = orch.dispatcher
    assert isinstance(dispatcher, Dispatcher)
    dispatcher.register_adapter(key, adapter)


def fast_retry(max_attempts: int) -> dict[str, Any]:
    return {"max_attempts": max_attempts, "initial_backoff": 0.001, "max_backoff": 0.01}


async def test_run_workflow_passes_outputs_downstream_and_stores_them(
    orchestrator: Orchestrator,
) -> None:
    spec = {
        "name": "hello",
        "vars": {"topic": "gRPC"},
        "tasks": [
            {"id": "greet", "agent": "echo", "params": {"text": "hello ${user.topic}"}},
            {"id": "shout", "agent": "upper", "depends_on": ["greet"]},
        ],
    }
    summary = await orchestrator.run_workflow(spec)

    assert summary.status == RunStatus.SUCCEEDED
    assert summary.nodes["greet"].status == TaskStatus.SUCCEEDED
    [out] = summary.nodes["shout"].artifacts
    assert out.content is None
    assert out.run_id == summary.run_id and out.node_id == "shout"
    loaded = await orchestrator.artifact_store.load(out.artifact_id or "")
    assert loaded.content == b"HELLO GRPC"
    assert loaded.sha256 == hashlib.sha256(b"HELLO GRPC").hexdigest()
    assert loaded.size == 10
    assert loaded.media_type == "text/plain"


async def test_run_workflow_user_vars_override_spec_vars(orchestrator: Orchestrator) -> None:
    spec = {
        "name": "vars",
        "vars": {"who": "spec", "n": 3},
        "tasks": [
            {"id": "a", "agent": "echo", "params": {"text": "${user.who} ${user.n} $${user.who}"}}
        ],
    }
    summary = await orchestrator.run_workflow(spec, user_vars={"who": "cli"})
    [out] = summary.nodes["a"].artifacts
    assert (
        await orchestrator.artifact_store.load(out.artifact_id or "")
    ).content == b"cli 3 ${user.who}"


async def test_run_workflow_inputs_arrive_in_depends_on_order_with_content(
    orchestrator: Orchestrator,
) -> None:
    recorder = Recorder()
    register(orchestrator, "rec", recorder)
    spec = {
        "name": "fan-in",
        "tasks": [
            {"id": "a", "agent": "echo", "params": {"text": "A"}},
            {"id": "b", "agent": "echo", "params": {"text": "B"}},
            {"id": "c", "agent": "echo", "params": {"text": "C"}},
            {"id": "join", "agent": "rec", "depends_on": ["c", "a", "b"]},
        ],
    }
    await orchestrator.run_workflow(spec)
    [(task, inputs, _)] = recorder.calls
    assert [a.content for a in inputs] == [b"C", b"A", b"B"]
    assert [a.node_id for a in inputs] == ["c", "a", "b"]
    assert task.attempt == 1


async def test_run_workflow_uses_one_trace_id_for_every_dispatch(
    orchestrator: Orchestrator,
) -> None:
    recorder = Recorder()
    register(orchestrator, "rec", recorder)
    tasks = [{"id": f"t{i}", "agent": "rec"} for i in range(5)]
    summary = await orchestrator.run_workflow({"name": "trace", "tasks": tasks})
    trace_ids = {trace for _, _, trace in recorder.calls}
    assert len(trace_ids) == 1
    [trace_id] = trace_ids
    assert summary.trace_id == trace_id and len(trace_id) == 32
    records = await orchestrator.execution_store.list_records(summary.run_id)
    assert {r.trace_id for r in records} == {trace_id}


async def test_run_workflow_saves_run_as_running_then_final(orchestrator: Orchestrator) -> None:
    seen: list[RunRecord | None] = []

    async def peek(task: TaskNode, inputs: list[Artifact], trace_id: str) -> list[Artifact]:
        runs = await orchestrator.execution_store.list_runs()
        seen.append(runs[0] if runs else None)
        return []

    register(orchestrator, "peek", FunctionAdapter(peek))
    summary = await orchestrator.run_workflow(
        {"name": "peek", "tasks": [{"id": "p", "agent": "peek"}]}
    )
    assert seen[0] is not None and seen[0].status == RunStatus.RUNNING
    assert seen[0].run_id == summary.run_id
    stored = await orchestrator.execution_store.get_run(summary.run_id)
    assert stored is not None
    assert stored.status == RunStatus.SUCCEEDED
    assert stored.finished_at is not None and stored.finished_at >= stored.created_at
    assert stored.spec["name"] == "peek"
    assert stored.nodes["p"].status == TaskStatus.SUCCEEDED


async def test_run_workflow_records_one_execution_record_per_attempt(
    orchestrator: Orchestrator,
) -> None:
    spec = {
        "name": "retry",
        "tasks": [
            {"id": "src", "agent": "echo", "params": {"text": "x"}},
            {
                "id": "flaky",
                "agent": "fail",
                "depends_on": ["src"],
                "params": {"times": 2},
                "retry": fast_retry(3),
            },
        ],
    }
    summary = await orchestrator.run_workflow(spec)
    assert summary.status == RunStatus.SUCCEEDED
    assert summary.nodes["flaky"].attempts == 3
    records = [
        r
        for r in await orchestrator.execution_store.list_records(summary.run_id)
        if r.node_id == "flaky"
    ]
    assert [(r.attempt, r.status) for r in records] == [
        (1, TaskStatus.FAILED),
        (2, TaskStatus.FAILED),
        (3, TaskStatus.SUCCEEDED),
    ]
    assert records[0].error is not None and "failed on purpose" in records[0].error
    src_out = summary.nodes["src"].artifacts[0].artifact_id
    assert all(r.input_artifact_ids == [src_out] for r in records)
    assert records[2].output_artifact_ids == [summary.nodes["flaky"].artifacts[0].artifact_id]
    assert all(r.finished_at is not None and r.finished_at >= r.started_at for r in records)


async def test_run_workflow_gives_up_after_max_attempts(orchestrator: Orchestrator) -> None:
    spec = {
        "name": "doomed",
        "tasks": [
            {"id": "f", "agent": "fail", "params": {"message": "boom"}, "retry": fast_retry(2)}
        ],
    }
    summary = await orchestrator.run_workflow(spec)
    assert summary.status == RunStatus.FAILED
    node = summary.nodes["f"]
    assert (node.status, node.attempts) == (TaskStatus.FAILED, 2)
    assert node.error is not None and "boom" in node.error


async def test_run_workflow_does_not_retry_non_retryable_errors(orchestrator: Orchestrator) -> None:
    async def refuse(task: TaskNode, inputs: list[Artifact], trace_id: str) -> list[Artifact]:
        raise NonRetryableError("bad params: no prompt")

    register(orchestrator, "refuse", FunctionAdapter(refuse))
    spec = {"name": "nr", "tasks": [{"id": "r", "agent": "refuse", "retry": fast_retry(5)}]}
    summary = await orchestrator.run_workflow(spec)
    assert summary.nodes["r"].attempts == 1
    assert summary.nodes["r"].error == "bad params: no prompt"


async def test_run_workflow_unknown_agent_fails_that_task_naming_the_key(
    orchestrator: Orchestrator,
) -> None:
    spec = {
        "name": "typo",
        "tasks": [
            {"id": "bad", "agent": "ecoh", "retry": fast_retry(3)},
            {"id": "after", "agent": "echo", "depends_on": ["bad"]},
            {"id": "other", "agent": "echo", "params": {"text": "independent"}},
        ],
    }
    summary = await orchestrator.run_workflow(spec)
    assert summary.status == RunStatus.FAILED
    bad = summary.nodes["bad"]
    assert bad.status == TaskStatus.FAILED and bad.attempts == 1
    assert bad.error is not None and "'ecoh'" in bad.error
    assert summary.nodes["after"].status == TaskStatus.SKIPPED
    assert summary.nodes["after"].attempts == 0
    assert summary.nodes["other"].status == TaskStatus.SUCCEEDED
    records = await orchestrator.execution_store.list_records(summary.run_id)
    assert sorted(r.node_id for r in records) == ["bad", "other"]  # skipped: no record


async def test_run_workflow_timeout_cancels_the_adapter_call_and_retries(
    orchestrator: Orchestrator,
) -> None:
    slow = Recorder(delay=30)
    register(orchestrator, "slow", slow)
    spec = {
        "name": "slow",
        "tasks": [{"id": "s", "agent": "slow", "timeout": 0.05, "retry": fast_retry(2)}],
    }
    summary = await orchestrator.run_workflow(spec)
    node = summary.nodes["s"]
    assert (node.status, node.attempts) == (TaskStatus.FAILED, 2)
    assert node.error == "task 's' attempt 2 timed out after 0.05 s"
    assert slow.cancelled == 2 and slow.in_flight == 0


async def test_run_workflow_respects_max_parallel(orchestrator: Orchestrator) -> None:
    recorder = Recorder(delay=0.01)
    register(orchestrator, "rec", recorder)
    tasks = [{"id": f"t{i}", "agent": "rec"} for i in range(40)]
    summary = await orchestrator.run_workflow({"name": "wide", "max_parallel": 7, "tasks": tasks})
    assert summary.status == RunStatus.SUCCEEDED
    assert recorder.max_in_flight == 7


async def test_run_workflow_fail_fast_cancels_unstarted_and_skips_downstream(
    orchestrator: Orchestrator,
) -> None:
    spec = {
        "name": "ff",
        "fail_fast": True,
        "max_parallel": 2,
        "tasks": [
            {"id": "boom", "agent": "fail"},
            {"id": "slow", "agent": "sleep", "params": {"seconds": 0.2, "text": "done"}},
            {"id": "later", "agent": "echo", "params": {"text": "never"}},
            {"id": "child", "agent": "echo", "depends_on": ["boom"]},
        ],
    }
    summary = await orchestrator.run_workflow(spec)
    statuses = {k: v.status for k, v in summary.nodes.items()}
    assert statuses == {
        "boom": TaskStatus.FAILED,
        "slow": TaskStatus.SUCCEEDED,  # already running: finishes and is recorded
        "later": TaskStatus.CANCELLED,
        "child": TaskStatus.SKIPPED,
    }
    assert summary.status == RunStatus.FAILED


async def test_run_workflow_without_fail_fast_keeps_independent_branches(
    orchestrator: Orchestrator,
) -> None:
    spec = {
        "name": "branches",
        "max_parallel": 1,
        "tasks": [
            {"id": "boom", "agent": "fail"},
            {"id": "child", "agent": "echo", "depends_on": ["boom"]},
            {"id": "grandchild", "agent": "echo", "depends_on": ["child"]},
            {"id": "other", "agent": "echo", "params": {"text": "ok"}},
        ],
    }
    summary = await orchestrator.run_workflow(spec)
    statuses = {k: v.status for k, v in summary.nodes.items()}
    assert statuses == {
        "boom": TaskStatus.FAILED,
        "child": TaskStatus.SKIPPED,
        "grandchild": TaskStatus.SKIPPED,
        "other": TaskStatus.SUCCEEDED,
    }


async def test_cancel_run_cancels_in_flight_calls_and_unfinished_tasks(
    orchestrator: Orchestrator,
) -> None:
    slow = Recorder(delay=30)
    register(orchestrator, "slow", slow)
    spec = {
        "name": "cancel",
        "tasks": [
            {"id": "s1", "agent": "slow"},
            {"id": "s2", "agent": "slow"},
            {"id": "after", "agent": "echo", "depends_on": ["s1"]},
        ],
    }
    run_id = await orchestrator.start_run(spec)
    while len(slow.calls) < 2:
        await asyncio.sleep(0.005)
    status = await orchestrator.cancel_run(run_id)
    assert status == RunStatus.CANCELLED
    summary = await orchestrator.wait_run(run_id)
    assert {k: v.status for k, v in summary.nodes.items()} == dict.fromkeys(
        ["s1", "s2", "after"], TaskStatus.CANCELLED
    )
    assert slow.cancelled == 2
    records = await orchestrator.execution_store.list_records(run_id)
    assert sorted((r.node_id, r.status) for r in records) == [
        ("s1", TaskStatus.CANCELLED),
        ("s2", TaskStatus.CANCELLED),
    ]
    stored = await orchestrator.execution_store.get_run(run_id)
    assert stored is not None and stored.status == RunStatus.CANCELLED
    assert await orchestrator.cancel_run(run_id) == RunStatus.CANCELLED  # repeat: accepted


async def test_cancel_run_on_a_finished_run_is_refused(orchestrator: Orchestrator) -> None:
    summary = await orchestrator.run_workflow(
        {"name": "x", "tasks": [{"id": "a", "agent": "echo"}]}
    )
    with pytest.raises(RunAlreadyFinishedError, match="already finished with status 'succeeded'"):
        await orchestrator.cancel_run(summary.run_id)
    with pytest.raises(NotFoundError):
        await orchestrator.cancel_run("no-such-run")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {
                "name": "c",
                "tasks": [
                    {"id": "a", "agent": "echo", "depends_on": ["b"]},
                    {"id": "b", "agent": "echo", "depends_on": ["a"]},
                ],
            },
            "cycle",
        ),
        (
            {"name": "u", "tasks": [{"id": "a", "agent": "echo", "params": {"t": "${user.nope}"}}]},
            "nope",
        ),
        ({"name": "k", "tasks": [{"id": "a", "agnet": "echo"}]}, "agnet"),
    ],
)
async def test_run_workflow_invalid_spec_runs_and_records_nothing(
    orchestrator: Orchestrator, spec: dict[str, Any], message: str
) -> None:
    recorder = Recorder()
    register(orchestrator, "echo", recorder)
    with pytest.raises(WorkflowValidationError, match=message):
        await orchestrator.run_workflow(spec)
    assert recorder.calls == []
    assert await orchestrator.execution_store.list_runs() == []


async def test_run_workflow_resource_exhausted_waits_the_asked_delay(
    orchestrator: Orchestrator,
) -> None:
    async def busy(task: TaskNode, inputs: list[Artifact], trace_id: str) -> list[Artifact]:
        if task.attempt == 1:
            raise ResourceExhaustedError("quota", retry_after=0.2)
        return []

    register(orchestrator, "busy", FunctionAdapter(busy))
    summary = await orchestrator.run_workflow(
        {"name": "q", "tasks": [{"id": "b", "agent": "busy", "retry": fast_retry(2)}]}
    )
    first, second = await orchestrator.execution_store.list_records(summary.run_id)
    assert first.finished_at is not None
    assert (second.started_at - first.finished_at).total_seconds() >= 0.2


async def test_run_workflow_adapter_returning_garbage_fails_clearly(
    orchestrator: Orchestrator,
) -> None:
    async def garbage(task: TaskNode, inputs: list[Artifact], trace_id: str) -> Any:
        return "not a list"

    register(orchestrator, "garbage", FunctionAdapter(garbage))
    summary = await orchestrator.run_workflow(
        {"name": "g", "tasks": [{"id": "g", "agent": "garbage"}]}
    )
    assert summary.nodes["g"].error == (
        "TypeError: adapter for agent 'garbage' returned str, expected a list of Artifact"
    )


async def test_watch_run_replays_then_follows_and_ends_with_run_finished(
    orchestrator: Orchestrator,
) -> None:
    spec = {
        "name": "w",
        "tasks": [
            {"id": "a", "agent": "sleep", "params": {"seconds": 0.05}},
            {
                "id": "b",
                "agent": "fail",
                "depends_on": ["a"],
                "params": {"times": 1},
                "retry": fast_retry(2),
            },
        ],
    }
    run_id = await orchestrator.start_run(spec)
    events = [e async for e in orchestrator.watch_run(run_id)]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert [
        (e.kind, e.node_id, e.attempt) for e in events if e.kind != RunEventKind.TASK_FINISHED
    ] == [
        (RunEventKind.TASK_STARTED, "a", 1),
        (RunEventKind.TASK_STARTED, "b", 1),
        (RunEventKind.ATTEMPT_FAILED, "b", 1),
        (RunEventKind.TASK_STARTED, "b", 2),
        (RunEventKind.RUN_FINISHED, "", 0),
    ]
    assert events[-1].run_status == RunStatus.SUCCEEDED
    late = [e async for e in orchestrator.watch_run(run_id, after_sequence=3)]
    assert late == events[3:]


async def test_start_run_is_idempotent_on_request_id(orchestrator: Orchestrator) -> None:
    spec = {"name": "idem", "tasks": [{"id": "a", "agent": "echo"}]}
    first = await orchestrator.start_run(spec, request_id="req-1")
    second = await orchestrator.start_run(spec, request_id="req-1")
    assert first == second
    await orchestrator.wait_run(first)
    assert len(await orchestrator.execution_store.list_runs()) == 1


async def test_run_workflow_blob_artifact_matches_its_definition(
    orchestrator: Orchestrator,
) -> None:
    size = 100_000
    summary = await orchestrator.run_workflow(
        {"name": "b", "tasks": [{"id": "b", "agent": "blob", "params": {"size": size, "seed": 7}}]}
    )
    [out] = summary.nodes["b"].artifacts
    expected = b"".join(hashlib.sha256(f"7:{i}".encode()).digest() for i in range(size // 32 + 1))[
        :size
    ]
    assert out.size == size
    assert out.sha256 == hashlib.sha256(expected).hexdigest()
    assert b"".join(blob_chunks(size, 7)) == expected


async def test_run_workflow_wide_fan_out_and_fan_in(orchestrator: Orchestrator) -> None:
    tasks: list[dict[str, Any]] = [
        {"id": f"w{i}", "agent": "echo", "params": {"text": str(i % 10)}} for i in range(1000)
    ]
    tasks.append({"id": "join", "agent": "concat", "depends_on": [f"w{i}" for i in range(1000)]})
    summary = await orchestrator.run_workflow({"name": "wide", "max_parallel": 200, "tasks": tasks})
    assert summary.status == RunStatus.SUCCEEDED
    [out] = summary.nodes["join"].artifacts
    loaded = await orchestrator.artifact_store.load(out.artifact_id or "")
    assert loaded.content == ("0123456789" * 100).encode()
    assert len(await orchestrator.execution_store.list_records(summary.run_id)) == 1001


class FlakyExecutionStore:
    """Delegates to a real store but answers `StoreUnavailableError` for the first N writes."""

    def __init__(self, inner: SqliteExecutionStore, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    async def record(self, record: Any) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailableError("connection refused")
        await self.inner.record(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_run_workflow_rides_out_a_short_store_outage(
    stores: tuple[LocalArtifactStore, SqliteExecutionStore],
) -> None:
    artifacts, executions = stores
    flaky = FlakyExecutionStore(executions, failures=3)
    orch = Orchestrator(artifacts, flaky, store_retry_seconds=5)  # type: ignore[arg-type]
    register(orch, "echo", toolbox_adapters()["echo"])
    summary = await orch.run_workflow({"name": "o", "tasks": [{"id": "a", "agent": "echo"}]})
    assert summary.status == RunStatus.SUCCEEDED
    assert len(await executions.list_records(summary.run_id)) == 1


async def test_an_adapter_that_cannot_reach_its_store_fails_the_attempt_not_the_run(
    orchestrator: Orchestrator,
) -> None:
    """Found by the fault suite (kill -9 of a store replica): an adapter's STORE_UNAVAILABLE
    used to fail the whole run at once with "store unavailable"; it is a retryable attempt."""
    calls: list[int] = []

    async def storeless(task: TaskNode, inputs: list[Artifact], trace_id: str) -> list[Artifact]:
        calls.append(task.attempt)
        if task.attempt == 1:
            raise StoreUnavailableError("store service at 127.0.0.1:1 is unavailable")
        return [Artifact(name="out", content=b"ok")]

    register(orchestrator, "storeless", FunctionAdapter(storeless))
    summary = await orchestrator.run_workflow(
        {"name": "s", "tasks": [{"id": "a", "agent": "storeless", "retry": fast_retry(3)}]}
    )
    assert summary.status == RunStatus.SUCCEEDED, summary.error
    assert calls == [1, 2]
    assert summary.nodes["a"].attempts == 2


async def test_run_workflow_fails_with_store_unavailable_after_the_retry_window(
    stores: tuple[LocalArtifactStore, SqliteExecutionStore],
) -> None:
    artifacts, executions = stores
    flaky = FlakyExecutionStore(executions, failures=10**9)
    orch = Orchestrator(artifacts, flaky, store_retry_seconds=0.3)  # type: ignore[arg-type]
    register(orch, "echo", toolbox_adapters()["echo"])
    summary = await orch.run_workflow(
        {
            "name": "o",
            "tasks": [
                {"id": "a", "agent": "echo"},
                {"id": "b", "agent": "echo", "depends_on": ["a"]},
            ],
        }
    )
    assert summary.status == RunStatus.FAILED
    assert summary.error is not None and summary.error.startswith("store unavailable")
    assert summary.nodes["b"].status == TaskStatus.CANCELLED
    stored = await executions.get_run(summary.run_id)
    assert stored is not None and stored.status == RunStatus.FAILED  # run records still writable


@given(
    attempt=st.integers(min_value=1, max_value=60),
    initial=st.floats(min_value=0, max_value=5),
    multiplier=st.floats(min_value=1, max_value=10),
    cap=st.floats(min_value=0, max_value=30),
)
def test_backoff_delay_stays_within_jitter_bounds_and_cap(
    attempt: int, initial: float, multiplier: float, cap: float
) -> None:
    policy = RetryPolicy(
        max_attempts=100, initial_backoff=initial, multiplier=multiplier, max_backoff=cap
    )
    delay = backoff_delay(policy, attempt, rng=random.Random(attempt))
    computed = min(initial * multiplier ** (attempt - 1), cap)
    assert 0.5 * computed - 1e-9 <= delay <= computed + 1e-9
    assert delay <= cap + 1e-9


async def test_watch_run_replays_a_finished_run_from_the_store_in_a_new_orchestrator(
    orchestrator: Orchestrator,
) -> None:
    spec = {
        "name": "replay",
        "tasks": [
            {"id": "a", "agent": "fail", "params": {"times": 1}, "retry": fast_retry(2)},
            {"id": "b", "agent": "echo", "depends_on": ["a"]},
        ],
    }
    summary = await orchestrator.run_workflow(spec)
    fresh = Orchestrator(orchestrator.artifact_store, orchestrator.execution_store)
    events = [e async for e in fresh.watch_run(summary.run_id)]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert [(e.kind, e.node_id, e.attempt) for e in events] == [
        (RunEventKind.TASK_STARTED, "a", 1),
        (RunEventKind.ATTEMPT_FAILED, "a", 1),
        (RunEventKind.TASK_STARTED, "a", 2),
        (RunEventKind.TASK_FINISHED, "a", 0),
        (RunEventKind.TASK_STARTED, "b", 1),
        (RunEventKind.TASK_FINISHED, "b", 0),
        (RunEventKind.RUN_FINISHED, "", 0),
    ]
    assert events[1].will_retry is True
    assert events[-1].summary is not None
    assert events[-1].summary.status == RunStatus.SUCCEEDED
    tail = [e async for e in fresh.watch_run(summary.run_id, after_sequence=5)]
    assert [e.kind for e in tail] == [RunEventKind.TASK_FINISHED, RunEventKind.RUN_FINISHED]
    with pytest.raises(NotFoundError):
        [e async for e in fresh.watch_run("no-such-run")]


async def test_recover_orphans_fails_lapsed_runs_it_cannot_resume(
    stores: tuple[LocalArtifactStore, SqliteExecutionStore],
) -> None:
    artifacts, executions = stores
    now = datetime.now(UTC)

    def running(run_id: str, owner: str, lease: timedelta) -> RunRecord:
        return RunRecord(
            run_id=run_id,
            name="n",
            status=RunStatus.RUNNING,
            created_at=now,
            owner=owner,
            lease_expires_at=now + lease,
        )

    await executions.save_run(running("dead", "orchestrator-old", timedelta(seconds=-1)))
    await executions.save_run(running("alive", "orchestrator-other", timedelta(seconds=60)))
    orch = Orchestrator(artifacts, executions)
    assert await orch.recover_orphans() == ["dead"]
    dead = await executions.get_run("dead")
    alive = await executions.get_run("alive")
    assert dead is not None
    assert dead.status == RunStatus.FAILED
    assert dead.error is not None
    assert dead.error.startswith("could not resume the run: its stored spec is no longer valid")
    assert alive is not None
    assert alive.status == RunStatus.RUNNING


async def test_inputs_held_by_reference_reach_in_process_adapters_with_content(
    orchestrator: Orchestrator,
) -> None:
    async def streams_itself(
        task: TaskNode, inputs: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        stored = await orchestrator.artifact_store.store(
            Artifact(name="big", content=b"x" * 1000, run_id=task.run_id, node_id=task.id)
        )
        return [stored.without_content()]  # a reference: content None, artifact_id set

    recorder = Recorder()
    register(orchestrator, "streams", FunctionAdapter(streams_itself))
    register(orchestrator, "rec", recorder)
    summary = await orchestrator.run_workflow(
        {
            "name": "ref",
            "tasks": [
                {"id": "a", "agent": "streams"},
                {"id": "b", "agent": "rec", "depends_on": ["a"]},
            ],
        }
    )
    assert summary.status == RunStatus.SUCCEEDED
    [(_, inputs, _)] = recorder.calls
    assert [a.content for a in inputs] == [b"x" * 1000]


async def test_a_run_whose_owner_stopped_mid_attempt_is_resumed_by_another_orchestrator(
    stores: tuple[LocalArtifactStore, SqliteExecutionStore],
) -> None:
    artifacts, executions = stores
    calls: list[tuple[str, int]] = []

    class Counting(Recorder):
        async def execute(
            self, task: TaskNode, inputs: list[Artifact], trace_id: str
        ) -> list[Artifact]:
            calls.append((task.id, task.attempt))
            return await super().execute(task, inputs, trace_id)

    def dispatcher(slow_delay: float) -> Dispatcher:
        d = Dispatcher()
        d.register_adapter("quick", Counting())
        d.register_adapter("slow", Counting(delay=slow_delay))
        return d

    spec = {
        "name": "resume",
        "tasks": [
            {"id": "first", "agent": "quick"},
            {"id": "slow", "agent": "slow", "depends_on": ["first"], "retry": {"max_attempts": 1}},
            {"id": "last", "agent": "quick", "depends_on": ["slow"]},
        ],
    }
    owner = Orchestrator(
        artifacts, executions, dispatcher=dispatcher(60), instance_id="owner", lease_seconds=0.3
    )
    adopter = Orchestrator(
        artifacts, executions, dispatcher=dispatcher(0), instance_id="adopter", lease_seconds=0.3
    )
    run_id = await owner.start_run(spec)
    async for event in adopter.watch_run(run_id):  # from the store: the start is durable
        if event.kind is RunEventKind.TASK_STARTED and event.node_id == "slow":
            break
    for state in list(owner._active.values()):
        owner._abandon(state)  # what a killed owner leaves: no more writes, the lease lapses
    await owner.aclose()

    await adopter.recover_orphans()  # then it keeps looking, every third of its lease
    async with asyncio.timeout(10):
        while (stored := await executions.get_run(run_id)) is None or stored.owner != "adopter":
            await asyncio.sleep(0.02)
        summary = await adopter.wait_run(run_id)
    await adopter.aclose()

    assert summary.status is RunStatus.SUCCEEDED, summary.error
    assert calls.count(("first", 1)) == 1  # succeeded before the crash: never dispatched again
    assert ("slow", 2) in calls  # a new attempt although max_attempts is 1
    assert summary.nodes["slow"].attempts == 2
    records = {(r.node_id, r.attempt): r for r in await executions.list_records(run_id)}
    assert records[("slow", 1)].status == TaskStatus.FAILED
    assert records[("slow", 1)].error == "orchestrator lost the attempt"
    assert records[("slow", 1)].input_artifact_ids == records[("first", 1)].output_artifact_ids
    assert records[("slow", 2)].status == TaskStatus.SUCCEEDED
    stored = await executions.get_run(run_id)
    assert stored is not None and stored.owner == "adopter" and stored.lease_epoch == 2
    events = [e async for e in adopter.watch_run(run_id)]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    lost = [e for e in events if e.kind is RunEventKind.ATTEMPT_FAILED]
    assert [(e.node_id, e.attempt, e.will_retry) for e in lost] == [("slow", 1, True)]


async def test_an_adopter_resumes_past_unpublished_events_its_predecessor_left_after_a_hole(
    stores: tuple[LocalArtifactStore, SqliteExecutionStore],
) -> None:
    # An interrupted batch (or a database that lost its last commits) can leave stored events
    # 1..n, a hole, then n+4 and n+5, never published. The adopter must not collide with them.
    artifacts, executions = stores

    def dispatcher(delay: float) -> Dispatcher:
        d = Dispatcher()
        d.register_adapter("quick", Recorder())
        d.register_adapter("slow", Recorder(delay=delay))
        return d

    spec = {
        "name": "hole",
        "tasks": [
            {"id": "first", "agent": "quick"},
            {"id": "slow", "agent": "slow", "depends_on": ["first"]},
            {"id": "last", "agent": "quick", "depends_on": ["slow"]},
        ],
    }
    owner = Orchestrator(
        artifacts, executions, dispatcher=dispatcher(60), instance_id="owner", lease_seconds=0.3
    )
    adopter = Orchestrator(
        artifacts, executions, dispatcher=dispatcher(0), instance_id="adopter", lease_seconds=0.3
    )
    run_id = await owner.start_run(spec)
    async for event in adopter.watch_run(run_id):
        if event.kind is RunEventKind.TASK_STARTED and event.node_id == "slow":
            published = event.sequence
            break
    for state in list(owner._active.values()):
        owner._abandon(state)
    await owner.aclose()
    stray = {"kind": "task_finished", "node_id": "slow", "task_status": "succeeded"}
    await executions.append_events(
        [RunEventRecord(run_id, published + gap, 1, stray) for gap in (4, 5)]
    )

    await adopter.recover_orphans()
    async with asyncio.timeout(10):
        while (stored := await executions.get_run(run_id)) is None or stored.owner != "adopter":
            await asyncio.sleep(0.02)
        summary = await adopter.wait_run(run_id)
    await adopter.aclose()

    assert summary.status is RunStatus.SUCCEEDED, summary.error
    stored_events = await executions.list_events(run_id)
    assert [e.sequence for e in stored_events] == list(range(1, len(stored_events) + 1))
    assert all(e.epoch == 2 for e in stored_events[published:])  # the strays are gone
    events = [e async for e in Orchestrator(artifacts, executions).watch_run(run_id)]
    assert events[-1].kind is RunEventKind.RUN_FINISHED
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def test_a_claim_whose_claimer_died_before_writing_the_run_record_is_claimed_past(
    stores: tuple[LocalArtifactStore, SqliteExecutionStore],
) -> None:
    artifacts, executions = stores
    spec = {"name": "claimed", "tasks": [{"id": "a", "agent": "quick"}]}

    def dispatcher(delay: float) -> Dispatcher:
        d = Dispatcher()
        d.register_adapter("quick", Recorder(delay=delay))
        return d

    owner = Orchestrator(
        artifacts, executions, dispatcher=dispatcher(60), instance_id="owner", lease_seconds=0.3
    )
    run_id = await owner.start_run(spec)
    async for event in owner.watch_run(run_id):
        if event.kind is RunEventKind.TASK_STARTED:
            break
    for state in list(owner._active.values()):
        owner._abandon(state)
    await owner.aclose()
    # an adopter that won epoch 2 and died before its next write: the record still says 1
    assert await executions.claim_run(run_id, 2, "died-at-once")

    adopter = Orchestrator(
        artifacts, executions, dispatcher=dispatcher(0), instance_id="adopter", lease_seconds=0.3
    )
    await adopter.recover_orphans()
    async with asyncio.timeout(10):
        while (stored := await executions.get_run(run_id)) is None or stored.owner != "adopter":
            await asyncio.sleep(0.02)
        summary = await adopter.wait_run(run_id)
    await adopter.aclose()
    assert summary.status is RunStatus.SUCCEEDED, summary.error
    stored = await executions.get_run(run_id)
    assert stored is not None and stored.lease_epoch == 3


class RenewalGate:
    """Delegates to a real store, holding back every lease renewal (a save of a running run
    that already has one) until `release` is set, as a slow store would."""

    def __init__(self, inner: SqliteExecutionStore) -> None:
        self.inner = inner
        self.renewal_waiting = asyncio.Event()
        self.release = asyncio.Event()

    async def save_run(self, run: RunRecord) -> None:
        stored = await self.inner.get_run(run.run_id)
        if stored is not None and not RunStatus(run.status).is_final:
            self.renewal_waiting.set()
            await self.release.wait()
        await self.inner.save_run(run)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_run_finishing_while_its_lease_renewal_is_in_flight_is_stored_final(
    stores: tuple[LocalArtifactStore, SqliteExecutionStore],
) -> None:
    """Found by CI (one run in three): the renewal's write used to put its stale `running`
    record back in memory after the run had finished, and the final save wrote that."""
    artifacts, executions = stores
    gated = RenewalGate(executions)
    orch = Orchestrator(artifacts, gated, lease_seconds=0.3)  # type: ignore[arg-type]

    class WaitsForTheRenewal(Recorder):
        async def execute(
            self, task: TaskNode, inputs: list[Artifact], trace_id: str
        ) -> list[Artifact]:
            await gated.renewal_waiting.wait()
            return await super().execute(task, inputs, trace_id)

    register(orch, "rec", WaitsForTheRenewal())
    run_id = await orch.start_run({"name": "renew", "tasks": [{"id": "a", "agent": "rec"}]})
    async with asyncio.timeout(10):
        state = orch._active[run_id]
        while not state.finishing:  # the run ends while the renewal is held back
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        gated.release.set()
        summary = await orch.wait_run(run_id)
    await orch.aclose()
    assert summary.status is RunStatus.SUCCEEDED
    stored = await executions.get_run(run_id)
    assert stored is not None and stored.status == RunStatus.SUCCEEDED


async def test_events_come_in_causal_order_a_failed_tasks_end_before_its_dependents_skips(
    orchestrator: Orchestrator,
) -> None:
    spec = {
        "name": "causal",
        "tasks": [
            {"id": "root", "agent": "echo"},
            {"id": "bad", "agent": "fail", "params": {"times": 5}, "depends_on": ["root"]},
            {"id": "child", "agent": "echo", "depends_on": ["bad"]},
            {"id": "grandchild", "agent": "echo", "depends_on": ["child"]},
            {"id": "next", "agent": "echo", "depends_on": ["root"]},
        ],
    }
    summary = await orchestrator.run_workflow(spec)
    events = [e async for e in orchestrator.watch_run(summary.run_id)]
    position = {
        (e.kind, e.node_id): i
        for i, e in enumerate(events)
        if e.kind is not RunEventKind.RUN_FINISHED
    }
    finished = RunEventKind.TASK_FINISHED
    assert position[(finished, "bad")] < position[(finished, "child")]
    assert position[(finished, "child")] < position[(finished, "grandchild")]
    assert position[(finished, "root")] < position[(RunEventKind.TASK_STARTED, "bad")]
    assert position[(finished, "root")] < position[(RunEventKind.TASK_STARTED, "next")]
    skipped = [e for e in events if e.kind is finished and e.task_status is TaskStatus.SKIPPED]
    assert {e.node_id for e in skipped} == {"child", "grandchild"}
    assert events[-1].kind is RunEventKind.RUN_FINISHED
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
