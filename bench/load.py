"""Load through a replicated stack on FerretDB + MinIO: many runs at once, one very large run.

Two store replicas on one FerretDB + MinIO, two orchestrator replicas (each run lands on one
of them, alternating), two dispatcher replicas sharing the adapter registry through the store
(docs/registry.md) and a toolbox adapter, every process its own. The dispatchers reach the
stores, and the orchestrators the dispatchers, through an ``ipv4:`` target listing every
replica (docs/targets.md); the toolbox registers once, through the first dispatcher, and the
other one routes to it from the registry in the store. Two loads:

- ``DAGWIRE_BENCH_LOAD_RUNS`` (default 100) runs of ``DAGWIRE_BENCH_LOAD_TASKS`` (default 100)
  `echo` tasks each, all started at once (10 layers of 10 tasks, each task needing the whole
  previous layer), followed to their end through WatchRun;
- one run of ``DAGWIRE_BENCH_LOAD_BIG`` (default 10,000) `echo` tasks, a fan-out with
  `max_parallel` 500.

Every run must succeed. The table gives wall time, tasks per second and ms per task; a second
table the peak RSS of each service process (sampled every 0.2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.full_stack import _backend, _Service, wait_registered
from bench.table import print_table
from dagwire.models import RunStatus
from dagwire.rpc.orchestrator_client import OrchestratorClient
from dagwire.runtime.events import RunEventKind

__all__ = ["run"]

REPLICAS = 2


def _layered(name: str, tasks: int, width: int = 10) -> dict[str, Any]:
    spec: list[dict[str, Any]] = []
    layer: list[str] = []
    for start in range(0, tasks, width):
        ids = [f"t{i}" for i in range(start, min(start + width, tasks))]
        spec += [
            {"id": i, "agent": "echo", "params": {"text": i}, "depends_on": layer} for i in ids
        ]
        layer = ids
    return {"name": name, "max_parallel": width, "tasks": spec}


def _fan_out(name: str, tasks: int, parallel: int = 500) -> dict[str, Any]:
    return {
        "name": name,
        "max_parallel": parallel,
        "tasks": [
            {"id": f"t{i}", "agent": "echo", "params": {"text": f"x{i}"}} for i in range(tasks)
        ],
    }


@dataclass
class _Replicated:
    stores: list[_Service]
    dispatchers: list[_Service]
    toolbox: _Service
    orchestrators: list[_Service]

    @property
    def services(self) -> list[_Service]:
        return [*self.orchestrators, self.toolbox, *self.dispatchers, *self.stores]


def _target(services: list[_Service]) -> str:
    """A gRPC target balanced over every replica (docs/targets.md)."""
    return "ipv4:" + ",".join(s.address for s in services)


@contextlib.asynccontextmanager
async def _replicated(store_env: dict[str, str], log_dir: Path) -> AsyncIterator[_Replicated]:
    stores = [
        _Service(f"store-{i}", "dagwire_services.store", [], log_dir, env=store_env)
        for i in range(REPLICAS)
    ]
    dispatchers = [
        _Service(
            f"dispatcher-{i}",
            "dagwire_services.dispatcher",
            ["--store-addr", _target(stores)],
            log_dir,
        )
        for i in range(REPLICAS)
    ]
    # Registered once, through one replica: the registry lives in the store.
    toolbox = _Service(
        "toolbox",
        "dagwire_services.adapters.toolbox",
        ["--dispatcher-addr", dispatchers[0].address, "--store-addr", stores[0].address],
        log_dir,
    )
    orchestrators = [
        _Service(
            f"orchestrator-{i}",
            "dagwire_services.orchestrator",
            ["--store-addr", stores[i].address, "--dispatcher-addr", _target(dispatchers)],
            log_dir,
        )
        for i in range(REPLICAS)
    ]
    stack = _Replicated(stores, dispatchers, toolbox, orchestrators)
    try:
        for service in stores:
            service.start()
        await asyncio.gather(*(s.wait_serving() for s in stores))
        for service in dispatchers:
            service.start()
        await asyncio.gather(*(s.wait_serving() for s in dispatchers))
        for service in [toolbox, *orchestrators]:
            service.start()
        await asyncio.gather(*(s.wait_serving() for s in [toolbox, *orchestrators]))
        # Every replica routes to the toolbox before the load starts (the second one adopts
        # it from the store within a refresh interval).
        await asyncio.gather(*(wait_registered(d, toolbox) for d in dispatchers))
        yield stack
    finally:
        for service in stack.services:
            service.stop()


class _PeakRss:
    """Samples the RSS of each service every 0.2 s in the background; keeps the peaks."""

    def __init__(self, services: list[_Service]) -> None:
        self._services = services
        self.peaks: dict[str, int] = {s.name: 0 for s in services}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _PeakRss:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _sample(self) -> None:
        processes = {s.name: psutil.Process(s.pid) for s in self._services}
        while True:
            for name, process in processes.items():
                with contextlib.suppress(psutil.Error):
                    self.peaks[name] = max(self.peaks[name], process.memory_info().rss)
            await asyncio.sleep(0.2)


async def _follow(client: OrchestratorClient, run_id: str) -> None:
    finished = None
    async for event in client.watch_run(run_id):
        if event.kind is RunEventKind.RUN_FINISHED:
            finished = event
    if finished is None or finished.run_status is not RunStatus.SUCCEEDED:
        error = finished.error if finished is not None else "no run_finished event"
        raise RuntimeError(f"run {run_id} did not succeed: {error}")


async def _concurrent(clients: list[OrchestratorClient], runs: int, tasks: int) -> float:
    spec = _layered(f"load-{runs}x{tasks}", tasks)
    started = time.perf_counter()
    run_ids = await asyncio.gather(
        *(clients[i % len(clients)].start_run(spec) for i in range(runs))
    )
    async with asyncio.timeout(1800):
        await asyncio.gather(
            *(_follow(clients[i % len(clients)], r) for i, r in enumerate(run_ids))
        )
    return time.perf_counter() - started


async def _big(client: OrchestratorClient, tasks: int) -> float:
    started = time.perf_counter()
    run_id = await client.start_run(_fan_out(f"load-one-{tasks}", tasks))
    async with asyncio.timeout(1800):
        await _follow(client, run_id)
    return time.perf_counter() - started


def _row(load: str, tasks: int, seconds: float) -> dict[str, Any]:
    return {
        "load": load,
        "tasks": tasks,
        "all_succeeded": "yes",
        "wall_s": f"{seconds:.1f}",
        "tasks_per_s": f"{tasks / seconds:.0f}",
        "ms_task": f"{seconds * 1000 / tasks:.2f}",
    }


async def _run() -> list[dict[str, Any]]:
    runs = int(os.environ.get("DAGWIRE_BENCH_LOAD_RUNS", "100"))
    tasks = int(os.environ.get("DAGWIRE_BENCH_LOAD_TASKS", "100"))
    big = int(os.environ.get("DAGWIRE_BENCH_LOAD_BIG", "10000"))
    log_dir = Path(tempfile.mkdtemp(prefix="dagwire-bench-load-"))
    rows: list[dict[str, Any]] = []
    rss_rows: list[dict[str, Any]] = []
    try:
        with _backend("ferretdb+minio", log_dir / "data") as backend:
            async with _replicated(backend.store_env, log_dir) as stack:
                clients = [OrchestratorClient(o.address) for o in stack.orchestrators]
                try:
                    async with _PeakRss(stack.services) as rss:
                        seconds = await _concurrent(clients, runs, tasks)
                        rows.append(
                            _row(f"{runs} concurrent runs x {tasks} tasks", runs * tasks, seconds)
                        )
                        seconds = await _big(clients[0], big)
                        rows.append(_row(f"one run of {big} tasks", big, seconds))
                    rss_rows = [
                        {"process": name, "peak_rss_mib": f"{peak / 2**20:.0f}"}
                        for name, peak in rss.peaks.items()
                    ]
                finally:
                    for client in clients:
                        await client.aclose()
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    print_table(rss_rows, title="Load: peak RSS of each service process")
    return rows


def run() -> list[dict[str, Any]]:
    """Rows: wall time and per-task cost of the concurrent-runs load and the large run."""
    return asyncio.run(_run())
