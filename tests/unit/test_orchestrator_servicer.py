"""The orchestrator servicer's StartRun: the spec is parsed off the event loop, and only once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import dagwire.spec._model as spec_model
from dagwire.errors import WorkflowValidationError
from dagwire.models import WorkflowSpec
from dagwire.runtime import Dispatcher, Orchestrator
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore
from dagwire.toolbox import toolbox_adapters
from dagwire.v1.orchestrator_service_pb2 import StartRunRequest
from dagwire_services.orchestrator.servicer import OrchestratorServicer


@pytest.fixture
async def servicer(tmp_path: Path) -> AsyncIterator[tuple[OrchestratorServicer, Orchestrator]]:
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    executions = SqliteExecutionStore(tmp_path / "executions.sqlite3")
    dispatcher = Dispatcher()
    for key, adapter in toolbox_adapters().items():
        dispatcher.register_adapter(key, adapter)
    orchestrator = Orchestrator(artifacts, executions, dispatcher=dispatcher)
    yield OrchestratorServicer(orchestrator), orchestrator
    await orchestrator.aclose()
    await artifacts.aclose()
    await executions.aclose()


def big_spec(tasks: int) -> str:
    lines = ["name: big", "vars: {who: world}", "tasks:"]
    for i in range(tasks):
        lines += [
            f"  - id: t{i}",
            "    agent: echo",
            f"    params: {{text: 'hello ${{user.who}} {i}', list: [1, 2, {{a: b}}]}}",
        ]
    return "\n".join(lines) + "\n"


async def test_start_run_parses_a_large_spec_without_stalling_the_event_loop(
    servicer: tuple[OrchestratorServicer, Orchestrator],
) -> None:
    service, orchestrator = servicer
    text = big_spec(1500)
    started = time.perf_counter()
    WorkflowSpec.from_yaml(text)
    parse_seconds = time.perf_counter() - started
    if parse_seconds < 0.3:
        pytest.skip(f"this machine parses the spec in {parse_seconds:.2f} s: nothing to see")

    gaps: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    request = StartRunRequest(spec=text, request_id="big-1")
    response = await service.StartRun(request, None)  # type: ignore[arg-type]
    stop.set()
    await ticker
    await orchestrator.cancel_run(response.run_id)
    # the parse took parse_seconds; on the loop, one gap would be at least that long
    assert max(gaps) < max(0.25, parse_seconds / 3), (max(gaps), parse_seconds)


async def test_start_run_parses_and_resolves_its_spec_once(
    servicer: tuple[OrchestratorServicer, Orchestrator], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, orchestrator = servicer
    calls: Counter[str] = Counter()
    to_plain = spec_model.to_plain
    check_workflow = spec_model.check_workflow
    resolve = WorkflowSpec.resolve

    def counted_to_plain(*args: Any, **kwargs: Any) -> Any:
        calls["to_plain"] += 1
        return to_plain(*args, **kwargs)

    def counted_check(*args: Any, **kwargs: Any) -> Any:
        calls["validate"] += 1
        return check_workflow(*args, **kwargs)

    def counted_resolve(self: WorkflowSpec, *args: Any, **kwargs: Any) -> WorkflowSpec:
        if not self.is_resolved:
            calls["resolve"] += 1
        return resolve(self, *args, **kwargs)

    monkeypatch.setattr(spec_model, "to_plain", counted_to_plain)
    monkeypatch.setattr(spec_model, "check_workflow", counted_check)
    monkeypatch.setattr(WorkflowSpec, "resolve", counted_resolve)
    request = StartRunRequest(spec=big_spec(3), user_vars={"who": "you"})
    response = await service.StartRun(request, None)  # type: ignore[arg-type]
    summary = await orchestrator.wait_run(response.run_id)
    assert summary.status == "succeeded"
    assert calls == Counter(to_plain=1, validate=1, resolve=1)


async def test_start_run_rejects_a_deeply_nested_spec_quickly_with_its_line(
    servicer: tuple[OrchestratorServicer, Orchestrator],
) -> None:
    service, orchestrator = servicer
    text = "name: deep\ntasks:\n  - id: a\n    agent: echo\n    params: " + "[" * 5000 + "]" * 5000
    started = time.perf_counter()
    with pytest.raises(WorkflowValidationError, match=r"^line 5: .*levels deep"):
        await service.StartRun(StartRunRequest(spec=text), None)  # type: ignore[arg-type]
    assert time.perf_counter() - started < 0.5
    assert orchestrator.active_run_ids == []
