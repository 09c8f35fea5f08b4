"""The orchestrator service through real gRPC on loopback: runs, events, cancellation, restarts.

Every scenario runs on two stacks:

- ``in-process-dispatcher``: the store service as a subprocess (embedded storage in a tmp dir)
  and the orchestrator service in the test's event loop with an in-process `Dispatcher` over
  the toolbox agents;
- ``cross-process``: store, dispatcher, toolbox adapter and orchestrator as four subprocesses
  (skipped until the dispatcher service and its client exist).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2, status_pb2

from dagwire.errors import (
    NotFoundError,
    RunAlreadyFinishedError,
    WorkflowValidationError,
)
from dagwire.models import (
    Artifact,
    RunRecord,
    RunStatus,
    TaskNode,
    TaskStatus,
    WorkflowSpec,
    utc_now,
)
from dagwire.rpc.orchestrator_client import OrchestratorClient
from dagwire.rpc.status import InvalidArgumentError
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from dagwire.runtime import Dispatcher, Orchestrator, RunEventKind
from dagwire.settings import OrchestratorSettings
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore
from dagwire.toolbox import SleepAgent, toolbox_adapters
from dagwire.v1 import orchestrator_service_pb2 as pb
from dagwire.v1 import orchestrator_service_pb2_grpc as pb_grpc
from dagwire_services.orchestrator.main import OrchestratorService
from tests.servers import REPO_ROOT
from tests.stack import (
    HELLO,
    Proc,
    collect_events,
    first_event,
    free_address,
    start_dispatcher,
    start_toolbox,
    started,
    until,
    wait_adapters,
)

STACKS = ("in-process-dispatcher", "cross-process")
CROSS_PROCESS_MODULES = (
    "dagwire.rpc.dispatcher_client",
    "dagwire_services.dispatcher.__main__",
    "dagwire_services.adapters.toolbox.__main__",
)


def _missing_modules() -> list[str]:
    missing = []
    for name in CROSS_PROCESS_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def _spec(name: str, *tasks: dict[str, Any], **top: Any) -> str:
    return json.dumps({"name": name, "tasks": list(tasks), **top})


# ---------------------------------------------------------------------- processes


class SleepProbe:
    """The toolbox's `sleep` agent, counting calls that were cancelled in flight."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        self.started += 1
        try:
            return await SleepAgent().execute(task, input_artifacts, trace_id)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


@dataclass
class Stack:
    """Store (subprocess), and the orchestrator with its dispatcher, as the mode says."""

    mode: str
    tmp: Path
    store: Proc
    executions: RemoteExecutionStore
    artifacts: RemoteArtifactStore
    dispatcher_addr: str = ""
    probe: SleepProbe | None = None
    procs: list[Proc] = field(default_factory=list)
    services: list[OrchestratorService] = field(default_factory=list)
    clients: list[OrchestratorClient] = field(default_factory=list)

    @property
    def cross_process(self) -> bool:
        return self.mode == "cross-process"

    async def orchestrator(
        self, *, lease_seconds: float = 3.0, store_retry_seconds: float = 30.0
    ) -> OrchestratorClient:
        """Start one more orchestrator service on this stack; returns a client of it."""
        if self.cross_process:
            address = free_address()
            proc = Proc(
                f"orchestrator-{len(self.procs)}",
                [
                    "dagwire_services.orchestrator",
                    "--listen-addr",
                    address,
                    "--store-addr",
                    self.store.address,
                    "--dispatcher-addr",
                    self.dispatcher_addr,
                    "--lease-seconds",
                    str(lease_seconds),
                    "--store-retry-seconds",
                    str(store_retry_seconds),
                ],
                address,
                self.tmp / f"orchestrator-{len(self.procs)}.log",
            )
            self.procs.append(proc)
            proc.start()
            await proc.wait_serving()
        else:
            dispatcher = Dispatcher()
            for key, adapter in toolbox_adapters().items():
                dispatcher.register_adapter(key, adapter)
            assert self.probe is not None
            dispatcher.register_adapter("sleep", self.probe)
            settings = OrchestratorSettings(
                store_addr=self.store.address,
                lease_seconds=lease_seconds,
                store_retry_seconds=store_retry_seconds,
                grace_seconds=2.0,
            )
            service = OrchestratorService(settings, dispatcher=dispatcher)
            self.services.append(service)
            await service.recover()
            running = await service.start("127.0.0.1:0")
            address = f"127.0.0.1:{running.port}"
        client = OrchestratorClient(address)
        self.clients.append(client)
        return client

    async def stop_orchestrators(self) -> None:
        """Stop every orchestrator of this stack (their runs' memory goes with them)."""
        for client in self.clients:
            await client.aclose()
        self.clients.clear()
        for service in self.services:
            await service.aclose()
        self.services.clear()
        for proc in [p for p in self.procs if p.name.startswith("orchestrator")]:
            proc.stop()
            self.procs.remove(proc)

    async def restart_store(self, *, down_for: float) -> None:
        """Kill the store service (SIGKILL) and start it again on its data dir and port."""
        self.store.stop(signal.SIGKILL)
        await asyncio.sleep(down_for)
        self.store.start()
        await self.store.wait_serving()

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()
        for service in self.services:
            await service.aclose()
        await self.executions.aclose()
        await self.artifacts.aclose()
        for proc in reversed(self.procs):
            proc.stop()
        self.store.stop()


@pytest.fixture(params=STACKS)
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    if request.param == "cross-process" and (missing := _missing_modules()):
        pytest.skip(f"cross-process stack needs {', '.join(missing)} (not there yet)")
    store_addr = free_address()
    store = Proc(
        "store",
        [
            "dagwire_services.store",
            "--listen-addr",
            store_addr,
            "--data-dir",
            str(tmp_path / "data"),
        ],
        store_addr,
        tmp_path / "store.log",
    )
    store.start()
    built = Stack(
        request.param,
        tmp_path,
        store,
        RemoteExecutionStore(store_addr),
        RemoteArtifactStore(store_addr),
    )
    try:
        await store.wait_serving()
        if built.cross_process:
            await _start_dispatcher_and_toolbox(built)
        else:
            built.probe = SleepProbe()
        yield built
    finally:
        await built.close()


async def _start_dispatcher_and_toolbox(stack: Stack) -> None:
    dispatcher = await start_dispatcher(stack.tmp)
    stack.procs.append(dispatcher)
    stack.dispatcher_addr = dispatcher.address
    toolbox = await start_toolbox(stack.tmp, dispatcher.address, stack.store.address)
    stack.procs.append(toolbox)
    await wait_adapters(dispatcher.address, {toolbox.address})


# ---------------------------------------------------------------------- helpers


def _error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
    raise AssertionError("no ErrorInfo in the trailers")


# ---------------------------------------------------------------------- data flow


async def test_seed_workflow_flows_data_end_to_end_and_artifacts_read_back_from_the_store(
    stack: Stack,
) -> None:
    client = await stack.orchestrator()
    run_id = await client.start_run(HELLO, user_vars={"topic": "wire"})
    events = await collect_events(client, run_id)
    summary = events[-1].summary
    assert summary is not None and summary.status is RunStatus.SUCCEEDED, summary
    (out,) = summary.nodes["both"].artifacts
    assert out.artifact_id is not None and out.content is None
    loaded = await stack.artifacts.load(out.artifact_id)
    assert loaded.content == b"HELLO WIRE / hello wire"
    assert loaded.sha256 == hashlib.sha256(b"HELLO WIRE / hello wire").hexdigest()
    assert (loaded.run_id, loaded.node_id, loaded.media_type) == (run_id, "both", "text/plain")

    records = {r.node_id: r for r in await stack.executions.list_records(run_id)}
    assert {n: r.status for n, r in records.items()} == dict.fromkeys(
        ("greet", "shout", "both"), TaskStatus.SUCCEEDED
    )
    assert records["both"].input_artifact_ids == [
        records["shout"].output_artifact_ids[0],
        records["greet"].output_artifact_ids[0],
    ]
    run = await client.get_run(run_id)
    assert run.status is RunStatus.SUCCEEDED and run.user_vars == {"topic": "wire"}
    assert run.spec["tasks"][0]["params"]["text"] == "hello ${user.topic}"  # as submitted
    assert {r.trace_id for r in records.values()} == {run.trace_id}


async def test_run_workflow_blocks_and_returns_the_summary(stack: Stack) -> None:
    client = await stack.orchestrator()
    summary = await client.run_workflow(HELLO)
    assert summary.status is RunStatus.SUCCEEDED
    assert [summary.nodes[n].status for n in ("greet", "shout", "both")] == [
        TaskStatus.SUCCEEDED
    ] * 3
    assert summary.name == "hello" and summary.trace_id


async def test_start_run_is_idempotent_on_request_id(stack: Stack) -> None:
    client = await stack.orchestrator()
    first = await client.start_run(HELLO, request_id="req-42")
    second = await client.start_run(HELLO, request_id="req-42")
    waited = await client.run_workflow(HELLO, request_id="req-42")
    assert first == second == waited.run_id
    other = await client.start_run(HELLO, request_id="req-43")
    assert other != first
    runs = (await client.list_runs()).runs
    assert sorted(r.run_id for r in runs) == sorted([first, other])
    assert (await client.get_run(first)).request_id == "req-42"


async def test_a_run_being_started_is_never_taken_for_an_orphan(tmp_path: Path) -> None:
    """Orphan recovery that runs right after the run's first save (the store has it, the
    start has not returned yet) leaves it alone: it is already among the active runs."""

    class RecoveringStore(SqliteExecutionStore):
        orchestrator: Orchestrator | None = None
        recovered: ClassVar[list[str]] = []

        async def save_run(self, run: RunRecord) -> None:
            await super().save_run(run)
            if self.orchestrator is not None and run.status == RunStatus.RUNNING:
                self.recovered += await self.orchestrator.recover_orphans()

    store = RecoveringStore(tmp_path / "executions.sqlite3")
    dispatcher = Dispatcher()
    for key, adapter in toolbox_adapters().items():
        dispatcher.register_adapter(key, adapter)
    orchestrator = Orchestrator(
        LocalArtifactStore(tmp_path / "artifacts"), store, dispatcher=dispatcher
    )
    store.orchestrator = orchestrator
    try:
        summary = await orchestrator.run_workflow(WorkflowSpec.from_yaml(HELLO))
    finally:
        await orchestrator.aclose()
        await store.aclose()
    assert summary.status is RunStatus.SUCCEEDED, summary
    assert store.recovered == []


async def test_start_run_retried_after_an_orchestrator_restart_returns_the_same_run(
    stack: Stack,
) -> None:
    first = await stack.orchestrator()
    run_id = await first.start_run(HELLO, request_id="req-before-restart")
    await collect_events(first, run_id)
    await stack.stop_orchestrators()

    second = await stack.orchestrator()  # a fresh process: nothing of the run in memory
    assert await second.start_run(HELLO, request_id="req-before-restart") == run_id
    summary = await second.run_workflow(HELLO, request_id="req-before-restart")
    assert (summary.run_id, summary.status) == (run_id, RunStatus.SUCCEEDED)
    assert [r.run_id for r in (await second.list_runs()).runs] == [run_id]  # no second run


# ---------------------------------------------------------------------- events


async def test_watch_run_replays_from_zero_and_from_a_middle_sequence_then_live_to_finish(
    stack: Stack,
) -> None:
    client = await stack.orchestrator()
    spec = _spec(
        "chain",
        {"id": "a", "agent": "sleep", "params": {"seconds": 0.3, "text": "x"}},
        {"id": "b", "agent": "upper", "depends_on": ["a"]},
        {"id": "c", "agent": "echo", "depends_on": ["b"]},
    )
    run_id = await client.start_run(spec)
    await first_event(client, run_id, started("a"))
    live = await collect_events(client, run_id)  # attached while `a` sleeps: replay, then live
    sequences = [e.sequence for e in live]
    assert sequences == list(range(1, len(live) + 1))
    assert live[-1].kind is RunEventKind.RUN_FINISHED
    assert live[-1].run_status is RunStatus.SUCCEEDED
    assert [(e.kind, e.node_id) for e in live if e.kind is not RunEventKind.RUN_FINISHED] == [
        (RunEventKind.TASK_STARTED, "a"),
        (RunEventKind.TASK_FINISHED, "a"),
        (RunEventKind.TASK_STARTED, "b"),
        (RunEventKind.TASK_FINISHED, "b"),
        (RunEventKind.TASK_STARTED, "c"),
        (RunEventKind.TASK_FINISHED, "c"),
    ]
    replay = await collect_events(client, run_id)
    assert [(e.sequence, e.kind, e.node_id) for e in replay] == [
        (e.sequence, e.kind, e.node_id) for e in live
    ]
    middle = await collect_events(client, run_id, after=3)
    assert [e.sequence for e in middle] == sequences[3:]
    assert middle[-1].kind is RunEventKind.RUN_FINISHED
    finished = [e for e in live if e.kind is RunEventKind.TASK_FINISHED and e.node_id == "c"]
    assert finished[0].artifacts[0].sha256 == hashlib.sha256(b"X").hexdigest()


# ---------------------------------------------------------------------- failures


async def test_fail_with_times_is_retried_over_the_wire_until_it_succeeds(stack: Stack) -> None:
    client = await stack.orchestrator()
    spec = _spec(
        "retry",
        {
            "id": "flaky",
            "agent": "fail",
            "params": {"times": 2, "text": "at last", "message": "boom"},
            "retry": {"max_attempts": 3, "initial_backoff": 0.05},
        },
    )
    run_id = await client.start_run(spec)
    events = await collect_events(client, run_id)
    failed = [e for e in events if e.kind is RunEventKind.ATTEMPT_FAILED]
    assert [(e.attempt, e.will_retry) for e in failed] == [(1, True), (2, True)]
    assert all("boom" in (e.error or "") for e in failed)
    assert 0.025 <= failed[0].retry_delay <= 0.05 and 0.05 <= failed[1].retry_delay <= 0.1
    summary = events[-1].summary
    assert summary is not None and summary.status is RunStatus.SUCCEEDED
    assert summary.nodes["flaky"].attempts == 3
    records = await stack.executions.list_records(run_id)
    assert [(r.attempt, r.status) for r in records] == [
        (1, TaskStatus.FAILED),
        (2, TaskStatus.FAILED),
        (3, TaskStatus.SUCCEEDED),
    ]
    content = await stack.artifacts.load(records[-1].output_artifact_ids[0])
    assert content.content == b"at last"


async def test_timeout_fails_each_attempt_over_the_wire(stack: Stack) -> None:
    client = await stack.orchestrator()
    spec = _spec(
        "timeout",
        {
            "id": "slow",
            "agent": "sleep",
            "params": {"seconds": 30},
            "timeout": 0.3,
            "retry": {"max_attempts": 2, "initial_backoff": 0.01},
        },
    )
    summary = await client.run_workflow(spec)
    node = summary.nodes["slow"]
    assert (summary.status, node.status, node.attempts) == (
        RunStatus.FAILED,
        TaskStatus.FAILED,
        2,
    )
    assert "timed out after 0.3 s" in (node.error or "")
    records = await stack.executions.list_records(summary.run_id)
    assert [(r.attempt, r.status) for r in records] == [
        (1, TaskStatus.FAILED),
        (2, TaskStatus.FAILED),
    ]
    assert all("timed out" in (r.error or "") for r in records)


async def test_fail_fast_cancels_unstarted_tasks_and_skips_downstream(stack: Stack) -> None:
    client = await stack.orchestrator()
    spec = _spec(
        "fail-fast",
        {"id": "bad", "agent": "fail", "params": {"message": "nope"}},
        {"id": "slow", "agent": "sleep", "params": {"seconds": 0.5}},
        {"id": "after_slow", "agent": "echo", "depends_on": ["slow"]},
        {"id": "after_bad", "agent": "echo", "depends_on": ["bad"]},
        fail_fast=True,
        max_parallel=2,
    )
    summary = await client.run_workflow(spec)
    statuses = {n: s.status for n, s in summary.nodes.items()}
    assert summary.status is RunStatus.FAILED
    assert statuses == {
        "bad": TaskStatus.FAILED,
        "slow": TaskStatus.SUCCEEDED,  # already running: finishes and is recorded
        "after_slow": TaskStatus.CANCELLED,
        "after_bad": TaskStatus.SKIPPED,
    }
    assert "nope" in (summary.nodes["bad"].error or "")
    recorded = {r.node_id for r in await stack.executions.list_records(summary.run_id)}
    assert recorded == {"bad", "slow"}


async def test_cancel_run_cancels_the_in_flight_call_and_records_say_so(stack: Stack) -> None:
    client = await stack.orchestrator()
    spec = _spec(
        "cancel-me",
        {"id": "nap", "agent": "sleep", "params": {"seconds": 60}},
        {"id": "next", "agent": "echo", "depends_on": ["nap"]},
    )
    run_id = await client.start_run(spec)
    await first_event(client, run_id, started("nap"))
    async with asyncio.timeout(20):  # far below the 60 s nap: the call was cancelled
        assert await client.cancel_run(run_id) is RunStatus.CANCELLED
    run = await client.get_run(run_id)
    assert run.status is RunStatus.CANCELLED
    assert {n: s.status for n, s in run.nodes.items()} == {
        "nap": TaskStatus.CANCELLED,
        "next": TaskStatus.CANCELLED,
    }
    (record,) = await stack.executions.list_records(run_id)
    assert (record.node_id, record.status) == ("nap", TaskStatus.CANCELLED)
    events = await collect_events(client, run_id)
    assert events[-1].run_status is RunStatus.CANCELLED
    if stack.probe is not None:
        assert stack.probe.cancelled == 1
    assert await client.cancel_run(run_id) is RunStatus.CANCELLED  # again: accepted

    done = await client.run_workflow(HELLO)
    with pytest.raises(RunAlreadyFinishedError) as caught:
        await client.cancel_run(done.run_id)
    assert caught.value.status == "succeeded"


# ---------------------------------------------------------------------- bad input


async def test_invalid_spec_is_invalid_argument_with_its_line_and_nothing_is_recorded(
    stack: Stack,
) -> None:
    client = await stack.orchestrator()
    typo = "name: typo\ntasks:\n  - id: a\n    agnet: echo\n"
    with pytest.raises(WorkflowValidationError) as caught:
        await client.start_run(typo)
    assert "line 4" in str(caught.value) and "agnet" in str(caught.value)

    cycle = _spec(
        "cycle",
        {"id": "a", "agent": "echo", "depends_on": ["b"]},
        {"id": "b", "agent": "echo", "depends_on": ["a"]},
    )
    with pytest.raises(WorkflowValidationError, match="cycle"):
        await client.run_workflow(cycle)
    with pytest.raises(WorkflowValidationError, match="nope"):
        await client.start_run(HELLO.replace("${user.topic}", "${user.nope}"))

    async with grpc.aio.insecure_channel(client.address) as chan:
        api = pb_grpc.OrchestratorServiceStub(chan)
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await api.StartRun(pb.StartRunRequest(spec=typo))
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _error_info(raw.value).reason == "SPEC_INVALID"
    assert (await client.list_runs()).runs == []


async def test_unknown_run_ids_are_not_found(stack: Stack) -> None:
    client = await stack.orchestrator()
    with pytest.raises(NotFoundError, match="no-such-run"):
        await client.get_run("no-such-run")
    with pytest.raises(NotFoundError, match="no-such-run"):
        await client.cancel_run("no-such-run")
    with pytest.raises(NotFoundError, match="no-such-run"):
        await collect_events(client, "no-such-run")
    async with grpc.aio.insecure_channel(client.address) as chan:
        api = pb_grpc.OrchestratorServiceStub(chan)
        with pytest.raises(grpc.aio.AioRpcError) as raw:
            await api.GetRun(pb.GetRunRequest(run_id="no-such-run"))
    assert raw.value.code() == grpc.StatusCode.NOT_FOUND
    assert _error_info(raw.value).reason == "RUN_NOT_FOUND"


async def test_list_runs_pages_newest_first_with_a_status_filter(stack: Stack) -> None:
    client = await stack.orchestrator()
    failing = _spec("failing", {"id": "a", "agent": "fail"})
    ids = []
    for spec in (HELLO, failing, HELLO, failing, HELLO):
        ids.append((await client.run_workflow(spec)).run_id)
    newest_first = ids[::-1]

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await client.list_runs(page_size=2, page_token=token)
        pages.append([r.run_id for r in page.runs])
        token = page.next_page_token
        if not token:
            break
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:]]

    page = await client.list_runs(status=RunStatus.FAILED, page_size=2)
    assert [r.run_id for r in page.runs] == [ids[3], ids[1]]
    assert all(r.status is RunStatus.FAILED and r.nodes == {} for r in page.runs)
    assert page.next_page_token == ""
    assert [r.run_id async for r in client.iter_runs(page_size=2)] == newest_first
    with pytest.raises(InvalidArgumentError, match="page_size"):
        await client.list_runs(page_size=-1)


# ---------------------------------------------------------------------- restarts


async def test_run_left_running_by_a_dead_orchestrator_is_resumed_when_the_service_starts(
    stack: Stack,
) -> None:
    now = utc_now()

    def running(run_id: str, owner: str, lease: timedelta) -> RunRecord:
        return RunRecord(
            run_id=run_id,
            name="orphan",
            status=RunStatus.RUNNING,
            created_at=now - timedelta(minutes=5),
            spec={"name": "orphan", "tasks": [{"id": "a", "agent": "echo"}]},
            request_id=run_id,
            trace_id="0" * 32,
            owner=owner,
            lease_expires_at=now + lease,
        )

    await stack.executions.save_run(running("dead-run", "orchestrator-dead", -timedelta(minutes=1)))
    await stack.executions.save_run(running("live-run", "orchestrator-alive", timedelta(hours=1)))
    client = await stack.orchestrator()
    await until(lambda: _status_is(stack.executions, "dead-run", RunStatus.SUCCEEDED), within=20)
    adopted = await client.get_run("dead-run")
    assert adopted.lease_epoch == 2  # claimed from the dead owner's epoch 1
    assert adopted.nodes["a"].status is TaskStatus.SUCCEEDED
    events = await collect_events(client, "dead-run")
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert (await client.get_run("live-run")).status is RunStatus.RUNNING  # never touched


async def test_store_restart_within_the_retry_window_is_ridden_out(stack: Stack) -> None:
    client = await stack.orchestrator(store_retry_seconds=30)
    before = await client.run_workflow(HELLO)
    spec = _spec(
        "ride-out",
        {"id": "a", "agent": "sleep", "params": {"seconds": 0.3, "text": "kept"}},
        {"id": "b", "agent": "upper", "depends_on": ["a"]},
    )
    run_id = await client.start_run(spec)
    await first_event(client, run_id, started("a"))
    await stack.restart_store(down_for=1.5)  # `a` finishes while the store is down
    events = await collect_events(client, run_id)
    summary = events[-1].summary
    assert summary is not None and summary.status is RunStatus.SUCCEEDED, summary
    records = await stack.executions.list_records(run_id)
    assert [(r.node_id, r.status) for r in records] == [
        ("a", TaskStatus.SUCCEEDED),
        ("b", TaskStatus.SUCCEEDED),
    ]
    out = await stack.artifacts.load(records[-1].output_artifact_ids[0])
    assert out.content == b"KEPT"
    await until(lambda: _status_is(stack.executions, run_id, RunStatus.SUCCEEDED), within=20)
    assert len(await stack.executions.list_records(before.run_id)) == 3  # nothing lost


async def test_store_down_past_the_retry_window_fails_the_run_and_keeps_what_was_recorded(
    stack: Stack,
) -> None:
    client = await stack.orchestrator(store_retry_seconds=1.0)
    before = await client.run_workflow(HELLO)
    spec = _spec(
        "store-down",
        {"id": "a", "agent": "sleep", "params": {"seconds": 0.2}},
        {"id": "b", "agent": "echo", "depends_on": ["a"]},
    )
    run_id = await client.start_run(spec)
    await first_event(client, run_id, started("a"))
    stack.store.stop(signal.SIGKILL)
    async with asyncio.timeout(30):
        events = await collect_events(client, run_id)  # served from memory: the store is down
    assert events[-1].run_status is RunStatus.FAILED
    assert "store unavailable" in (events[-1].error or "")
    stack.store.start()
    await stack.store.wait_serving()
    # the final status is written once the store answers again
    await until(lambda: _status_is(stack.executions, run_id, RunStatus.FAILED), within=30)
    stored = await stack.executions.get_run(run_id)
    assert stored is not None and "store unavailable" in (stored.error or "")
    assert len(await stack.executions.list_records(before.run_id)) == 3  # nothing lost
    assert (await client.get_run(before.run_id)).status is RunStatus.SUCCEEDED


async def _status_is(executions: RemoteExecutionStore, run_id: str, status: RunStatus) -> bool:
    with contextlib.suppress(Exception):
        record = await executions.get_run(run_id)
        return record is not None and record.status == status
    return False


# ---------------------------------------------------------------------- shutdown


@pytest.fixture
async def store_only(tmp_path: Path) -> AsyncIterator[Stack]:
    """The in-process-dispatcher stack alone (shutdown tests drive the service directly)."""
    address = free_address()
    store = Proc(
        "store",
        ["dagwire_services.store", "--listen-addr", address, "--data-dir", str(tmp_path / "d")],
        address,
        tmp_path / "store.log",
    )
    store.start()
    built = Stack(
        "in-process-dispatcher",
        tmp_path,
        store,
        RemoteExecutionStore(address),
        RemoteArtifactStore(address),
        probe=SleepProbe(),
    )
    try:
        await store.wait_serving()
        yield built
    finally:
        await built.close()


async def test_graceful_stop_lets_runs_finish_within_grace_then_cancels_the_rest(
    store_only: Stack,
) -> None:
    client = await store_only.orchestrator()
    service = store_only.services[-1]
    short = await client.start_run(
        _spec("short", {"id": "a", "agent": "sleep", "params": {"seconds": 0.5}})
    )
    long = await client.start_run(
        _spec("long", {"id": "a", "agent": "sleep", "params": {"seconds": 60}})
    )
    await first_event(client, long, started("a"))
    watcher = asyncio.ensure_future(collect_events(client, long))
    await asyncio.sleep(0.1)
    stopping = asyncio.ensure_future(service.stop(grace=1.5))
    await asyncio.sleep(0.2)
    async with grpc.aio.insecure_channel(client.address) as chan:
        with pytest.raises(grpc.aio.AioRpcError):  # refuses new calls
            await pb_grpc.OrchestratorServiceStub(chan).GetRun(
                pb.GetRunRequest(run_id=short), timeout=2
            )
    async with asyncio.timeout(30):
        await stopping
        events = await watcher
    assert events[-1].run_status is RunStatus.CANCELLED  # the watcher saw the end
    assert await _status_is(store_only.executions, short, RunStatus.SUCCEEDED)
    assert await _status_is(store_only.executions, long, RunStatus.CANCELLED)
    (record,) = await store_only.executions.list_records(long)
    assert record.status is TaskStatus.CANCELLED


async def test_orchestrator_process_logs_its_instance_and_recovered_runs_and_stops_on_sigterm(
    tmp_path: Path, store_only: Stack
) -> None:
    if "dagwire.rpc.dispatcher_client" in _missing_modules():
        pytest.skip("the process needs dagwire.rpc.dispatcher_client (not there yet)")
    address = free_address()
    proc = Proc(
        "orchestrator",
        [
            "dagwire_services.orchestrator",
            "--listen-addr",
            address,
            "--store-addr",
            store_only.store.address,
            "--instance-id",
            "orchestrator-test-1",
        ],
        address,
        tmp_path / "orchestrator.log",
    )
    proc.start()
    try:
        await proc.wait_serving()
    finally:
        code = proc.stop(signal.SIGTERM)
    assert code == 0, proc.log_tail()
    messages = [line.get("message", "") for line in proc.log_lines()]
    assert any("orchestrator-test-1" in m for m in messages), messages
    assert any(m.startswith("adopted 0 orphaned run(s)") for m in messages), messages
    assert any(m.startswith("orchestrator serving on " + address) for m in messages), messages


def test_orchestrator_process_invalid_setting_is_one_line_naming_the_variable() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dagwire_services.orchestrator"],
        cwd=REPO_ROOT,
        env={**os.environ, "DAGWIRE_LEASE_SECONDS": "-1"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "DAGWIRE_LEASE_SECONDS" in lines[0], lines
