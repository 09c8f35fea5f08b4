"""Two orchestrator replicas on one store service, reached through one ``ipv4:A,B`` target.

Every service is a real process on loopback (store with embedded storage, dispatcher, toolbox
adapter, two orchestrators sharing the store). A client balanced over both replicas starts
runs and reads them through either; then one replica is killed (SIGKILL) and the calls keep
succeeding, while watchers, the library's and the CLI's, reconnect and follow their run to
`run_finished` with no gap in the sequence numbers.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dagwire.models import RunStatus, TaskNode
from dagwire.rpc.dispatcher_client import RemoteDispatcher
from dagwire.rpc.orchestrator_client import OrchestratorClient
from dagwire.runtime import RunEvent, RunEventKind
from tests.servers import REPO_ROOT
from tests.stack import (
    HELLO,
    Proc,
    collect_events,
    dispatcher_proc,
    free_address,
    orchestrator_proc,
    start_all,
    start_dispatcher,
    start_toolbox,
    until,
    wait_adapters,
)

LEASE_SECONDS = "2"

# Long enough to kill an orchestrator while `nap` runs; the adopter gives `nap` a new attempt.
SLOW = """\
name: slow
tasks:
  - {id: nap, agent: sleep, params: {seconds: 3, text: rested}}
  - {id: wake, agent: upper, depends_on: [nap]}
"""

_SCRIPT = Path(sys.executable).parent / "dagwire"
DAGWIRE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dagwire_cli.main"]


@dataclass
class Replicas:
    """The running stack; `orchestrators` are not started until `start_orchestrators`."""

    tmp: Path
    store: Proc
    dispatcher: Proc
    procs: list[Proc] = field(default_factory=list)
    orchestrators: list[Proc] = field(default_factory=list)

    @property
    def target(self) -> str:
        """The one target naming every orchestrator replica."""
        return "ipv4:" + ",".join(o.address for o in self.orchestrators)

    def orchestrator(self, name: str) -> Proc:
        proc = orchestrator_proc(
            self.tmp,
            self.store.address,
            self.dispatcher.address,
            "--lease-seconds",
            LEASE_SECONDS,
            "--instance-id",
            name,
            name=name,
        )
        self.orchestrators.append(proc)
        return proc


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Replicas]:
    store_addr = free_address()
    store = Proc(
        "store",
        ["dagwire_services.store", "--listen-addr", store_addr, "--data-dir", str(tmp_path / "d")],
        store_addr,
        tmp_path / "store.log",
    )
    procs = [store]
    stack: Replicas | None = None
    try:
        await start_all(store)
        dispatcher = await start_dispatcher(tmp_path)
        procs.append(dispatcher)
        toolbox = await start_toolbox(tmp_path, dispatcher.address, store.address)
        procs.append(toolbox)
        await wait_adapters(dispatcher.address, {toolbox.address})
        stack = Replicas(tmp_path, store, dispatcher, procs)
        yield stack
    finally:
        for proc in stack.orchestrators if stack is not None else []:
            proc.stop(signal.SIGKILL)
        for proc in reversed(procs):
            proc.stop()


def _gapless(events: list[RunEvent]) -> None:
    """The events are the whole run: sequences 1..N, each once, ending with run_finished."""
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].kind is RunEventKind.RUN_FINISHED


async def _watch(
    client: OrchestratorClient, run_id: str, seen: list[RunEvent], reconnects: list[int]
) -> list[RunEvent]:
    async for event in client.watch_run(
        run_id, on_reconnect=lambda last, _why: reconnects.append(last)
    ):
        seen.append(event)
    return seen


async def test_two_orchestrators_on_one_store_serve_every_run_and_survive_one_killed(
    replicas: Replicas,
) -> None:
    a = replicas.orchestrator("orchestrator-a")
    b = replicas.orchestrator("orchestrator-b")
    await start_all(a, b)
    async with (
        OrchestratorClient(replicas.target) as client,
        OrchestratorClient(a.address) as via_a,
        OrchestratorClient(b.address) as via_b,
    ):
        # balanced: the runs started through the one target are owned by both replicas
        run_ids = [await client.start_run(HELLO) for _ in range(6)]
        for run_id in run_ids:
            events = await collect_events(client, run_id)
            _gapless(events)
            assert events[-1].run_status is RunStatus.SUCCEEDED
        owners = set()
        for run_id in run_ids:  # any replica answers for any run
            seen_by_a, seen_by_b = await via_a.get_run(run_id), await via_b.get_run(run_id)
            assert seen_by_a.status is seen_by_b.status is RunStatus.SUCCEEDED
            assert seen_by_a.summary().nodes["both"].status == "succeeded"
            owners.add(seen_by_a.owner)
        assert owners == {"orchestrator-a", "orchestrator-b"}
        for one in (via_a, via_b, client):
            listed = {r.run_id for r in (await one.list_runs(page_size=100)).runs}
            assert set(run_ids) <= listed

        # four watchers of one slow run over the balanced channel: two on each replica
        slow = await client.start_run(SLOW)
        seen: list[list[RunEvent]] = [[] for _ in range(4)]
        reconnects: list[int] = []
        watchers = [asyncio.create_task(_watch(client, slow, s, reconnects)) for s in seen]
        await until(lambda: _all_attached(seen))
        a.stop(signal.SIGKILL)

        for _ in range(4):  # every call still succeeds, on the replica left
            started = await client.start_run(HELLO)
            assert (await client.get_run(started)).run_id == started
            assert started in {r.run_id for r in (await client.list_runs(page_size=100)).runs}
            assert (await client.get_run(run_ids[0])).status is RunStatus.SUCCEEDED
        async with asyncio.timeout(60):
            followed = await asyncio.gather(*watchers)
        assert reconnects, "no watcher was on the killed replica"
        for events in followed:
            _gapless(events)
            assert events[-1].run_status is RunStatus.SUCCEEDED
        summary = (await client.get_run(slow)).summary()
        assert summary.status is RunStatus.SUCCEEDED
        assert summary.nodes["wake"].status == "succeeded"


async def _all_attached(seen: list[list[RunEvent]]) -> bool:
    return all(seen)


def _cli(*args: str) -> subprocess.Popen[bytes]:
    """`dagwire ARGS` as a user runs it, its stdout and stderr piped."""
    return subprocess.Popen(
        [*DAGWIRE, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _read_until(proc: subprocess.Popen[bytes], needle: str, within: float = 30.0) -> str:
    """Read `proc`'s stderr until a line holds `needle`; returns what was read."""
    assert proc.stderr is not None
    text = ""
    deadline = time.monotonic() + within
    while needle not in text:
        assert time.monotonic() < deadline, f"never saw {needle!r} in:\n{text}"
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 65536).decode(errors="replace")
            assert chunk, f"stderr closed before {needle!r}:\n{text}"
            text += chunk
    return text


async def test_cli_watch_reconnects_to_the_other_replica_when_its_orchestrator_is_killed(
    replicas: Replicas,
) -> None:
    a = replicas.orchestrator("orchestrator-a")
    b = replicas.orchestrator("orchestrator-b")
    await start_all(a)  # b is named in the target but not up yet: the watch lands on a
    async with OrchestratorClient(replicas.target) as client:
        run_id = await client.start_run(SLOW)
    watch = _cli("watch", run_id, "--server", replicas.target, "--output", "json")
    try:
        before = _read_until(watch, "nap: running")
        a.stop(signal.SIGKILL)  # mid-`nap`; the CLI reconnects once b serves
        await start_all(b)
        stdout, rest = await asyncio.to_thread(watch.communicate, timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    stderr = before + rest.decode(errors="replace")
    assert watch.returncode == 0, stderr
    notes = [line for line in stderr.splitlines() if "reconnecting" in line]
    assert len(notes) == 1, stderr
    assert f"lost the event stream of run {run_id}" in notes[0]
    summary = json.loads(stdout)
    assert summary["run_id"] == run_id
    assert summary["status"] == "succeeded"
    assert summary["nodes"]["wake"]["status"] == "succeeded"
    # each task shown once finished, in order: nothing replayed twice after the reconnect
    finished = [
        line.split()[1].rstrip(":")
        for line in stderr.splitlines()
        if " succeeded after " in line and not line.startswith("dagwire")
    ]
    assert finished == ["nap", "wake"], stderr


async def test_a_dispatch_lost_with_its_dispatcher_is_resent_once_with_the_same_attempt(
    tmp_path: Path,
) -> None:
    store_addr = free_address()
    store = Proc(
        "store",
        ["dagwire_services.store", "--listen-addr", store_addr, "--data-dir", str(tmp_path / "d")],
        store_addr,
        tmp_path / "store.log",
    )
    first = dispatcher_proc(tmp_path, name="dispatcher-1")
    procs = [store, first]
    try:
        await start_all(store, first)
        toolbox = await start_toolbox(tmp_path, first.address, store_addr, debug=True)
        procs.append(toolbox)
        await wait_adapters(first.address, {toolbox.address})
        # the second replica routes to the same adapter; it is named but not up yet, so the
        # first send lands on the first replica
        second = dispatcher_proc(
            tmp_path, static_adapters=f"sleep={toolbox.address}", name="dispatcher-2"
        )
        procs.append(second)
        dispatcher = RemoteDispatcher(f"ipv4:{first.address},{second.address}")
        task = TaskNode(
            id="nap", agent="sleep", params={"seconds": 2, "text": "rested"}, run_id="run-1"
        )
        try:
            sent = asyncio.create_task(dispatcher.dispatch(task, [], "0" * 32))
            await until(lambda: _executions(toolbox, "nap", 1))
            first.stop(signal.SIGKILL)  # mid-call: the re-send waits for the second replica
            await start_all(second)
            async with asyncio.timeout(60):
                (output,) = await sent
        finally:
            await dispatcher.aclose()
        assert output.content == b"rested"
        executions = await _executions(toolbox, "nap", 2)
        assert executions == [("run-1", "nap", 1), ("run-1", "nap", 1)]  # same attempt, same key
    finally:
        for proc in reversed(procs):
            proc.stop()


async def _executions(toolbox: Proc, node_id: str, at_least: int) -> list[tuple[str, str, int]]:
    """The (run, task, attempt) of each call of `node_id` the adapter began (from its log)."""
    calls = [
        (line.get("run_id", ""), line.get("node_id", ""), line.get("attempt", 0))
        for line in toolbox.log_lines()
        if str(line.get("message", "")).startswith("executing ") and line.get("node_id") == node_id
    ]
    return calls if len(calls) >= at_least else []
