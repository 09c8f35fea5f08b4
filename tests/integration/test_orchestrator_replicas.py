"""Two orchestrator processes on one store, on FerretDB + MinIO (docs/durability.md).

What a user of a replicated deployment relies on: a run survives its orchestrator being
killed (another replica adopts and resumes it, a succeeded task is not run again, the attempt
in flight is recorded lost and retried), any replica answers for any run, the same
`request_id` sent to both replicas at once makes one run, and a cancel through either replica
stops the run.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest_asyncio

from dagwire.models import RunStatus, TaskStatus
from dagwire.rpc.orchestrator_client import OrchestratorClient
from dagwire.rpc.store_client import RemoteExecutionStore
from dagwire.runtime import RunEventKind
from dagwire.runtime._state import LOST_ATTEMPT_ERROR
from tests.servers import S3Endpoint
from tests.stack import (
    Proc,
    collect_events,
    dispatcher_proc,
    first_event,
    free_address,
    orchestrator_proc,
    start_all,
    started,
    toolbox_proc,
    until,
    wait_adapters,
)

LEASE_SECONDS = "2"


@dataclass
class Replicas:
    tmp: Path
    store: Proc
    dispatcher: Proc
    toolbox: Proc
    orchestrators: list[Proc]
    executions: RemoteExecutionStore
    clients: dict[int, OrchestratorClient] = field(default_factory=dict)

    def client(self, index: int) -> OrchestratorClient:
        if index not in self.clients:
            self.clients[index] = OrchestratorClient(self.orchestrators[index].address)
        return self.clients[index]

    def executed(self, node_id: str) -> int:
        """How many calls of `node_id` the toolbox executed (from its debug log)."""
        return sum(
            1
            for line in self.toolbox.log_lines()
            if line.get("node_id") == node_id
            and str(line.get("message", "")).startswith("executing")
        )


@pytest_asyncio.fixture
async def replicas(
    tmp_path: Path,
    mongodb_uri: str,
    mongodb_database_name: str,
    s3_endpoint: S3Endpoint,
    s3_bucket_name: str,
) -> AsyncIterator[Replicas]:
    parts = urlsplit(mongodb_uri)
    uri = urlunsplit((parts.scheme, parts.netloc, "/" + mongodb_database_name, parts.query, ""))
    store_addr = free_address()
    store = Proc(
        "store",
        [
            "dagwire_services.store",
            "--listen-addr",
            store_addr,
            "--data-dir",
            str(tmp_path / "data"),
            "--mongodb-uri",
            uri,
            "--s3-endpoint",
            s3_endpoint.endpoint,
            "--s3-access-key",
            s3_endpoint.access_key,
            "--s3-bucket",
            s3_bucket_name,
        ],
        store_addr,
        tmp_path / "store.log",
        env={"DAGWIRE_S3_SECRET_KEY": s3_endpoint.secret_key},
    )
    dispatcher = dispatcher_proc(tmp_path)
    toolbox = toolbox_proc(tmp_path, dispatcher.address, store_addr, debug=True)
    orchestrators = [
        orchestrator_proc(
            tmp_path,
            store_addr,
            dispatcher.address,
            "--lease-seconds",
            LEASE_SECONDS,
            "--on-stop",
            "hand-over",
            "--grace-seconds",
            "0.5",
            name=f"orchestrator-{i}",
        )
        for i in range(2)
    ]
    built = Replicas(
        tmp_path, store, dispatcher, toolbox, orchestrators, RemoteExecutionStore(store_addr)
    )
    procs = [store, dispatcher, toolbox, *orchestrators]
    try:
        await start_all(*procs)
        await wait_adapters(dispatcher.address, {toolbox.address})
        yield built
    finally:
        for client in built.clients.values():
            await client.aclose()
        await built.executions.aclose()
        for proc in reversed(procs):
            proc.stop(signal.SIGKILL)


CHAIN = """\
name: survives
tasks:
  - id: first
    agent: echo
    params: {text: "one"}
  - id: slow
    agent: sleep
    params: {seconds: 4}
    depends_on: [first]
  - id: last
    agent: upper
    depends_on: [slow]
"""


async def test_a_run_whose_orchestrator_is_killed_is_resumed_by_the_other_replica(
    replicas: Replicas,
) -> None:
    owner, other = replicas.client(0), replicas.client(1)
    run_id = await owner.start_run(CHAIN)
    await first_event(owner, run_id, started("slow"))
    replicas.orchestrators[0].stop(signal.SIGKILL)  # mid-attempt: `slow` is in flight

    events = await collect_events(other, run_id)  # from the store, then live after adoption
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))  # no gap, no repeat
    finished = events[-1]
    assert finished.kind is RunEventKind.RUN_FINISHED
    assert finished.run_status is RunStatus.SUCCEEDED, finished.error
    summary = finished.summary
    assert summary is not None
    assert summary.nodes["first"].attempts == 1  # succeeded before the crash: not run again
    assert summary.nodes["slow"].attempts == 2  # the lost attempt counts as made
    record = await other.get_run(run_id)
    assert record.owner != "" and record.lease_epoch == 2

    records = {(r.node_id, r.attempt): r for r in await replicas.executions.list_records(run_id)}
    assert records[("first", 1)].status == TaskStatus.SUCCEEDED
    assert ("first", 2) not in records
    assert records[("slow", 1)].status == TaskStatus.FAILED
    assert records[("slow", 1)].error == LOST_ATTEMPT_ERROR
    assert records[("slow", 2)].status == TaskStatus.SUCCEEDED
    assert replicas.executed("first") == 1
    # the resumed task reads the same input artifact the first owner stored
    assert records[("slow", 2)].input_artifact_ids == records[("first", 1)].output_artifact_ids


async def test_an_owner_paused_past_its_lease_is_fenced_off_by_the_store(
    replicas: Replicas,
) -> None:
    # A pause (GC, a frozen VM, SIGSTOP) outlasts the lease: the other replica adopts the run.
    # When the old owner wakes up with `slow`'s reply in its socket, the store refuses its
    # writes (they carry a superseded lease epoch), so it cannot overwrite the adopter's
    # record of the lost attempt nor append events to the adopter's numbering.
    owner, other = replicas.client(0), replicas.client(1)
    run_id = await owner.start_run(CHAIN)
    await first_event(owner, run_id, started("slow"))
    paused = replicas.orchestrators[0]
    assert paused.popen is not None
    paused.popen.send_signal(signal.SIGSTOP)
    try:

        async def adopted() -> bool:
            return (await other.get_run(run_id)).lease_epoch == 2

        await until(adopted)
        await asyncio.sleep(4.5)  # the first owner's attempt of `slow` has ended meanwhile
    finally:
        paused.popen.send_signal(signal.SIGCONT)

    events = await collect_events(other, run_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].run_status is RunStatus.SUCCEEDED, events[-1].error

    async def let_go() -> bool:
        return any(
            line.get("message") == "lost the lease of a run; handing it over"
            for line in paused.log_lines()
        )

    await until(let_go, within=10)
    records = {(r.node_id, r.attempt): r for r in await replicas.executions.list_records(run_id)}
    assert records[("slow", 1)].status == TaskStatus.FAILED
    assert records[("slow", 1)].error == LOST_ATTEMPT_ERROR
    assert records[("slow", 2)].status == TaskStatus.SUCCEEDED
    record = await other.get_run(run_id)
    assert record.status is RunStatus.SUCCEEDED and record.lease_epoch == 2
    stored = await replicas.executions.list_events(run_id)
    assert [e.sequence for e in stored] == [e.sequence for e in events]


async def test_the_same_request_id_on_both_replicas_at_once_makes_one_run(
    replicas: Replicas,
) -> None:
    spec = "name: once\ntasks:\n  - {id: a, agent: echo, params: {text: hi}}\n"
    clients = [replicas.client(0), replicas.client(1)]
    for attempt in range(5):
        request_id = f"deploy-{attempt}-{time.time_ns()}"
        run_ids = await asyncio.gather(
            *(c.start_run(spec, request_id=request_id) for c in clients for _ in range(2))
        )
        assert len(set(run_ids)) == 1, run_ids
        events = await collect_events(clients[1], run_ids[0])
        assert events[-1].run_status is RunStatus.SUCCEEDED
        records = await replicas.executions.list_records(run_ids[0])
        assert [(r.node_id, r.attempt) for r in records] == [("a", 1)]  # driven once


async def test_any_replica_answers_for_a_run_driven_by_the_other(replicas: Replicas) -> None:
    owner, other = replicas.client(0), replicas.client(1)
    run_id = await owner.start_run(CHAIN)
    await first_event(owner, run_id, started("slow"))

    # GetRun on the replica that does not drive the run shows the live task statuses
    async def other_sees_slow_running() -> bool:
        record = await other.get_run(run_id)
        return record.nodes["slow"].status is TaskStatus.RUNNING

    await until(other_sees_slow_running, within=10)
    seen = await other.get_run(run_id)
    assert seen.status is RunStatus.RUNNING
    assert seen.nodes["first"].status is TaskStatus.SUCCEEDED
    # both replicas stream the same events, replayed from any sequence number
    through_owner, through_other = await asyncio.gather(
        collect_events(owner, run_id), collect_events(other, run_id)
    )
    assert [e.to_json() for e in through_owner] == [e.to_json() for e in through_other]
    middle = await collect_events(other, run_id, after=3)
    assert [e.sequence for e in middle] == [e.sequence for e in through_owner[3:]]
    listed = [r.run_id for r in (await other.list_runs(page_size=10)).runs]
    assert run_id in listed


async def test_cancel_through_the_other_replica_stops_the_run(replicas: Replicas) -> None:
    owner, other = replicas.client(0), replicas.client(1)
    run_id = await owner.start_run(CHAIN)
    await first_event(owner, run_id, started("slow"))
    began = time.monotonic()
    status = await other.cancel_run(run_id)
    took = time.monotonic() - began
    assert status is RunStatus.CANCELLED
    events = await collect_events(owner, run_id)
    assert events[-1].run_status is RunStatus.CANCELLED
    assert events[-1].summary is not None
    assert events[-1].summary.nodes["slow"].status is TaskStatus.CANCELLED
    assert events[-1].summary.nodes["last"].status is TaskStatus.CANCELLED
    print(f"cancel through the non-owner replica took {took * 1000:.0f} ms")


async def test_a_replica_stopped_with_sigterm_hands_its_runs_over(replicas: Replicas) -> None:
    owner, other = replicas.client(0), replicas.client(1)
    run_id = await owner.start_run(CHAIN)
    await first_event(owner, run_id, started("slow"))
    code = replicas.orchestrators[0].stop(signal.SIGTERM)
    assert code == 0, replicas.orchestrators[0].log_tail()
    messages = [str(line.get("message", "")) for line in replicas.orchestrators[0].log_lines()]
    assert any(m.startswith("handed 1 workflow(s)") for m in messages), messages

    events = await collect_events(other, run_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].run_status is RunStatus.SUCCEEDED, events[-1].error  # not cancelled
    records = {(r.node_id, r.attempt): r for r in await replicas.executions.list_records(run_id)}
    assert records[("slow", 1)].error == LOST_ATTEMPT_ERROR
    assert records[("slow", 2)].status == TaskStatus.SUCCEEDED
    assert replicas.executed("first") == 1
