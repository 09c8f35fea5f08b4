"""In-process orchestration overhead per task: a no-op adapter, embedded stores (SQLite + files)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from dagwire.models import Artifact, RunStatus, TaskNode
from dagwire.runtime import Dispatcher, FunctionAdapter, Orchestrator
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore


async def _noop(task: TaskNode, inputs: list[Artifact], trace_id: str) -> list[Artifact]:
    return [Artifact(name="out", content=b"ok", media_type="text/plain")]


def chain(n: int) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = [{"id": "t0", "agent": "noop"}]
    tasks += [{"id": f"t{i}", "agent": "noop", "depends_on": [f"t{i - 1}"]} for i in range(1, n)]
    return {"name": f"chain-{n}", "tasks": tasks}


def fan_out(n: int, max_parallel: int) -> dict[str, Any]:
    tasks = [{"id": f"t{i}", "agent": "noop"} for i in range(n)]
    return {"name": f"fan-out-{n}", "max_parallel": max_parallel, "tasks": tasks}


async def _measure(label: str, spec: dict[str, Any], n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dagwire-bench-") as tmp:
        root = Path(tmp)
        artifacts = LocalArtifactStore(root / "artifacts")
        executions = SqliteExecutionStore(root / "executions.sqlite3")
        dispatcher = Dispatcher()
        dispatcher.register_adapter("noop", FunctionAdapter(_noop))
        orchestrator = Orchestrator(artifacts, executions, dispatcher=dispatcher)
        # warm up: open the stores, touch every code path once
        await orchestrator.run_workflow(chain(3))
        started = time.perf_counter()
        summary = await orchestrator.run_workflow(spec)
        elapsed = time.perf_counter() - started
        assert summary.status is RunStatus.SUCCEEDED, summary.error
        records = await executions.list_records(summary.run_id)
        assert len(records) == n
        await orchestrator.aclose()
        await artifacts.aclose()
        await executions.aclose()
    return {
        "benchmark": f"in-process {label}",
        "tasks": n,
        "seconds": round(elapsed, 3),
        "per_task_ms": round(elapsed / n * 1000, 3),
    }


async def _run() -> list[dict[str, Any]]:
    return [
        await _measure("chain", chain(1000), 1000),
        await _measure("fan-out (max_parallel 1000)", fan_out(1000, 1000), 1000),
        await _measure("fan-out (max_parallel 8)", fan_out(1000, 8), 1000),
    ]


def run() -> list[dict[str, Any]]:
    """Rows: chain of 1,000 and fan-out of 1,000 no-op tasks through the in-process runtime."""
    return asyncio.run(_run())


if __name__ == "__main__":
    from bench.table import print_table

    print_table(run())
