"""Per-task overhead through the full service stack (docs/contracts.md §11), and where the time
goes.

Store, dispatcher, toolbox adapter and orchestrator run as separate processes on free loopback
ports (``python -m dagwire_services.<name>``), once on embedded storage (SQLite + local files)
and once on FerretDB (PostgreSQL backend) + MinIO dev servers. A chain of 200 and a fan-out of
500 (`max_parallel` 500) `echo` tasks are submitted through `OrchestratorClient` (StartRun, then
WatchRun to `run_finished`); the table shows the best and the median ms/task of N runs after a
warm-up, against the targets (chain ≤ 5 ms, fan-out ≤ 1.5 ms).

Where the time goes, three ways:

- CPU ms/task of each process during the measured runs (psutil), so a saturated core shows;
- the store and dispatcher RPCs the orchestrator makes per task, timed from this process one
  at a time (latency) and 500 at once (amortized);
- a cProfile of the orchestrator's event loop (its ``--profile-file`` setting), in a separate
  orchestrator process so that profiling does not distort the timed runs.

Environment: ``DAGWIRE_BENCH_REPEAT`` (runs per shape, default 5), ``DAGWIRE_BENCH_BACKENDS``
(``embedded,ferretdb+minio`` by default), ``DAGWIRE_BENCH_PROFILE=0`` skips the profile,
``DAGWIRE_BENCH_KEEP=1`` keeps the service logs (their directory is printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc.aio
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.table import print_table
from dagwire.models import Artifact, ExecutionRecord, RunStatus, TaskNode, TaskStatus, utc_now
from dagwire.rpc.channels import client_channel
from dagwire.rpc.dispatcher_client import RemoteDispatcher
from dagwire.rpc.orchestrator_client import OrchestratorClient
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from dagwire.runtime.events import RunEventKind
from tests.servers import REPO_ROOT, FerretDBServer, MinioServer, PostgresServer, find_free_port

__all__ = ["run"]

BACKENDS = ("embedded", "ferretdb+minio")
#: Processes whose CPU time is shown (the last three only with FerretDB + MinIO).
_CPU_COLUMNS = ("orchestrator", "dispatcher", "toolbox", "store", "ferretdb", "postgres", "minio")


@dataclass(frozen=True)
class ServiceCode:
    """Which checkout the service processes run: this one, or another commit's (`bench.compare`
    runs the previous commit's services side by side with this one's)."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)


#: The code the services of the next measurement run (None: this checkout).
SERVICE_CODE: ServiceCode | None = None


@dataclass(frozen=True)
class Shape:
    """One benchmarked workflow shape and its docs/contracts.md §11 target."""

    name: str
    tasks: int
    target_ms: float
    spec: dict[str, Any]


def _chain(n: int) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = [{"id": "t0", "agent": "echo", "params": {"text": "x"}}]
    tasks += [{"id": f"t{i}", "agent": "echo", "depends_on": [f"t{i - 1}"]} for i in range(1, n)]
    return {"name": f"bench-chain-{n}", "max_parallel": 8, "tasks": tasks}


def _fan_out(n: int) -> dict[str, Any]:
    tasks = [{"id": f"t{i}", "agent": "echo", "params": {"text": f"x{i}"}} for i in range(n)]
    return {"name": f"bench-fan-out-{n}", "max_parallel": n, "tasks": tasks}


SHAPES = (
    Shape("chain 200", 200, 5.0, _chain(200)),
    Shape("fan-out 500 (max_parallel 500)", 500, 1.5, _fan_out(500)),
)


# ---------------------------------------------------------------------- processes


@dataclass
class _Service:
    """One dagwire service process on a free loopback port, logging to a file."""

    name: str
    module: str
    args: list[str]
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    address: str = field(default_factory=lambda: f"127.0.0.1:{find_free_port()}")
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        code = SERVICE_CODE or ServiceCode(REPO_ROOT)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", self.module, "--listen-addr", self.address, *self.args],
            cwd=code.root,
            env={
                **os.environ,
                "DAGWIRE_LOG_FORMAT": "json",
                "DAGWIRE_LOG_LEVEL": "warning",
                **code.env,
                **self.env,
            },
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    async def wait_serving(self, within: float = 60.0) -> None:
        async with client_channel(self.address) as channel:  # TLS as the environment says
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + within
            while True:
                assert self.popen is not None
                if self.popen.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not SERVING in {within} s:\n{self.log_tail()}")
                await asyncio.sleep(0.05)

    def stop(self, wait: float = 60.0) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Backend:
    """The store service's environment for one backend, and the database/object servers."""

    name: str
    store_env: dict[str, str]
    server_pids: dict[str, Callable[[], list[int]]]


@contextlib.contextmanager
def _backend(name: str, data_dir: Path) -> Iterator[_Backend]:
    if name == "embedded":
        yield _Backend(name, {"DAGWIRE_DATA_DIR": str(data_dir)}, {})
        return
    with (
        PostgresServer(database="ferretdb") as pg,
        FerretDBServer(postgresql_url=pg.url) as ferretdb,
        MinioServer() as minio,
    ):
        env = {
            "DAGWIRE_DATA_DIR": str(data_dir),
            "DAGWIRE_MONGODB_URI": f"{ferretdb.uri}dagwire_bench",
            "DAGWIRE_S3_ENDPOINT": f"http://{minio.endpoint}",
            "DAGWIRE_S3_ACCESS_KEY": minio.access_key,
            "DAGWIRE_S3_SECRET_KEY": minio.secret_key,
            "DAGWIRE_S3_BUCKET": "dagwire-bench",
        }

        def postgres() -> list[int]:
            pid_file = pg.data_dir / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError, psutil.Error):
                root = psutil.Process(int(pid_file.read_text().split()[0]))
                return [root.pid, *(c.pid for c in root.children(recursive=True))]
            return []

        yield _Backend(
            name,
            env,
            {
                "ferretdb": lambda: [ferretdb.process.pid] if ferretdb.process else [],
                "postgres": postgres,
                "minio": lambda: [minio.process.pid] if minio.process else [],
            },
        )


@dataclass
class _Stack:
    """Store, dispatcher and toolbox processes (the orchestrator is started per phase)."""

    backend: _Backend
    log_dir: Path
    store: _Service
    dispatcher: _Service
    toolbox: _Service
    orchestrators: list[_Service] = field(default_factory=list)

    def orchestrator(self, *, profile_file: Path | None = None) -> _Service:
        args = [
            "--store-addr",
            self.store.address,
            "--dispatcher-addr",
            self.dispatcher.address,
        ]
        if profile_file is not None:
            args += ["--profile-file", str(profile_file)]
        service = _Service(
            f"orchestrator-{len(self.orchestrators)}",
            "dagwire_services.orchestrator",
            args,
            self.log_dir,
        )
        self.orchestrators.append(service)
        return service

    def pids(self, orchestrator: _Service) -> dict[str, list[int]]:
        out = {
            "orchestrator": [orchestrator.pid],
            "dispatcher": [self.dispatcher.pid],
            "toolbox": [self.toolbox.pid],
            "store": [self.store.pid],
        }
        for name, pids in self.backend.server_pids.items():
            out[name] = pids()
        return out


async def wait_registered(dispatcher: _Service, toolbox: _Service, within: float = 30) -> None:
    """Wait until the toolbox's `echo` is registered with the dispatcher."""
    registry = RemoteDispatcher(dispatcher.address)
    try:
        deadline = time.monotonic() + within
        while not await registry.list_adapters(agent="echo"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the toolbox never registered:\n{toolbox.log_tail()}")
            await asyncio.sleep(0.1)
    finally:
        await registry.aclose()


@contextlib.asynccontextmanager
async def _stack(backend: _Backend, log_dir: Path) -> AsyncIterator[_Stack]:
    store = _Service("store", "dagwire_services.store", [], log_dir, env=backend.store_env)
    dispatcher = _Service("dispatcher", "dagwire_services.dispatcher", [], log_dir)
    toolbox = _Service(
        "toolbox",
        "dagwire_services.adapters.toolbox",
        ["--dispatcher-addr", dispatcher.address, "--store-addr", store.address],
        log_dir,
    )
    stack = _Stack(backend, log_dir, store, dispatcher, toolbox)
    try:
        store.start()
        dispatcher.start()
        await asyncio.gather(store.wait_serving(), dispatcher.wait_serving())
        toolbox.start()
        await toolbox.wait_serving()
        await wait_registered(dispatcher, toolbox)
        yield stack
    finally:
        for service in [*stack.orchestrators, toolbox, dispatcher, store]:
            service.stop()


# ---------------------------------------------------------------------- measurements


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


async def _run_once(client: OrchestratorClient, shape: Shape) -> float:
    """Seconds from StartRun until WatchRun delivered `run_finished` (which must say success)."""
    started = time.perf_counter()
    run_id = await client.start_run(shape.spec)
    finished = None
    async with asyncio.timeout(600):
        async for event in client.watch_run(run_id):
            if event.kind is RunEventKind.RUN_FINISHED:
                finished = event
    elapsed = time.perf_counter() - started
    if finished is None or finished.run_status is not RunStatus.SUCCEEDED:
        error = finished.error if finished is not None else "no run_finished event"
        raise RuntimeError(f"{shape.name} run {run_id} did not succeed: {error}")
    return elapsed


async def _timed_runs(
    stack: _Stack, orchestrator: _Service, repeat: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    cpu_rows: list[dict[str, Any]] = []
    async with OrchestratorClient(orchestrator.address) as client:
        for shape in SHAPES:
            await _run_once(client, shape)  # warm-up: channels, caches, tables, code paths
        for shape in SHAPES:
            pids = stack.pids(orchestrator)
            before = {name: _cpu_seconds(p) for name, p in pids.items()}
            times = [await _run_once(client, shape) for _ in range(repeat)]
            after = {name: _cpu_seconds(p) for name, p in pids.items()}
            best = min(times) / shape.tasks * 1000
            median = statistics.median(times) / shape.tasks * 1000
            rows.append(
                {
                    "backend": stack.backend.name,
                    "shape": shape.name,
                    "runs": repeat,
                    "best_ms_task": f"{best:.2f}",
                    "median_ms_task": f"{median:.2f}",
                    "target_ms_task": f"{shape.target_ms:g}",
                    "best_vs_target": "met"
                    if best <= shape.target_ms
                    else f"missed by {best - shape.target_ms:.2f} ms",
                }
            )
            per_task = {
                name: (after[name] - before[name]) * 1000 / (repeat * shape.tasks) for name in pids
            }
            cpu_rows.append(
                {
                    "backend": stack.backend.name,
                    "shape": shape.name,
                    **{
                        f"{name}_cpu_ms": f"{per_task[name]:.2f}" if name in per_task else "-"
                        for name in _CPU_COLUMNS
                    },
                    "total_cpu_ms": f"{sum(per_task.values()):.2f}",
                }
            )
    return rows, cpu_rows


async def _latency(
    label: str, backend: str, call: Callable[[int], Awaitable[object]], n: int = 200
) -> dict[str, Any]:
    for i in range(20):  # warm-up
        await call(-1 - i)
    started = time.perf_counter()
    for i in range(n):
        await call(i)
    sequential = (time.perf_counter() - started) / n * 1000
    started = time.perf_counter()
    await asyncio.gather(*(call(n + i) for i in range(500)))
    concurrent = (time.perf_counter() - started) / 500 * 1000
    return {
        "backend": backend,
        "call": label,
        "sequential_ms": f"{sequential:.3f}",
        "amortized_ms_500_at_once": f"{concurrent:.3f}",
    }


async def _rpc_costs(stack: _Stack) -> list[dict[str, Any]]:
    """The per-task store and dispatcher calls, timed one at a time and 500 at once."""
    artifacts = RemoteArtifactStore(stack.store.address)
    executions = RemoteExecutionStore(stack.store.address)
    dispatcher = RemoteDispatcher(stack.dispatcher.address)
    run_id = f"bench-rpc-{time.time_ns()}"
    trace_id = "0" * 32
    backend = stack.backend.name

    async def put(i: int) -> object:
        return await artifacts.store(
            Artifact(name="out", content=b"x%d" % i, media_type="text/plain", run_id=run_id)
        )

    async def record(i: int) -> None:
        now = utc_now()
        await executions.record(
            ExecutionRecord(
                run_id=run_id,
                node_id=f"t{i}",
                attempt=1,
                agent="echo",
                status=TaskStatus.SUCCEEDED,
                started_at=now,
                finished_at=now,
                trace_id=trace_id,
                output_artifact_ids=[f"a{i}"],
            )
        )

    async def dispatch(i: int) -> object:
        task = TaskNode(id=f"t{i}", agent="echo", params={"text": "x"}, attempt=1)
        return await dispatcher.dispatch(task, [], trace_id)

    try:
        return [
            await _latency("Dispatch (echo, via the dispatcher)", backend, dispatch),
            await _latency("PutArtifact (2 bytes)", backend, put),
            await _latency("RecordExecutions (1 record)", backend, record),
        ]
    finally:
        await artifacts.aclose()
        await executions.aclose()
        await dispatcher.aclose()


def _profile_rows(backend: str, path: Path, top: int = 25) -> list[dict[str, Any]]:
    """The orchestrator's top functions by own time (tottime), with their cumulative time."""
    if not path.exists():
        raise RuntimeError(f"the orchestrator wrote no profile at {path}")
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = {
        key: entry
        for key, entry in stats.stats.items()  # type: ignore[attr-defined]
        if "poll' of 'select" not in key[2]  # the loop waiting for I/O is idle, not cost
    }
    total = sum(entry[2] for entry in raw.values()) or 1.0
    ranked = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:top]
    rows = []
    for (filename, line, function), (_, calls, tottime, cumtime, _) in ranked:
        where = filename
        for marker in ("site-packages/", str(REPO_ROOT) + "/", "lib/python3"):
            if marker in where:
                where = where.split(marker, 1)[1]
        rows.append(
            {
                "backend": backend,
                "function": f"{where}:{line}({function})",
                "calls": calls,
                "own_s": f"{tottime:.3f}",
                "own_%_of_busy": f"{tottime / total * 100:.1f}",
                "cumulative_s": f"{cumtime:.3f}",
            }
        )
    return rows


async def _profile(stack: _Stack, path: Path) -> None:
    orchestrator = stack.orchestrator(profile_file=path)
    orchestrator.start()
    await orchestrator.wait_serving()
    async with OrchestratorClient(orchestrator.address) as client:
        for shape in SHAPES:
            await _run_once(client, shape)
    orchestrator.stop()


async def _measure_backend(
    name: str, repeat: int, profile: bool, log_dir: Path
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"times": [], "cpu": [], "rpc": [], "profile": []}
    with _backend(name, log_dir / "data") as backend:
        async with _stack(backend, log_dir) as stack:
            orchestrator = stack.orchestrator()
            orchestrator.start()
            await orchestrator.wait_serving()
            out["times"], out["cpu"] = await _timed_runs(stack, orchestrator, repeat)
            orchestrator.stop()
            out["rpc"] = await _rpc_costs(stack)
            if profile:
                path = log_dir / "orchestrator.prof"
                await _profile(stack, path)
                out["profile"] = _profile_rows(name, path)
    return out


async def _run() -> list[dict[str, Any]]:
    repeat = max(1, int(os.environ.get("DAGWIRE_BENCH_REPEAT", "5")))
    chosen = [
        b.strip()
        for b in os.environ.get("DAGWIRE_BENCH_BACKENDS", ",".join(BACKENDS)).split(",")
        if b.strip()
    ]
    unknown = [b for b in chosen if b not in BACKENDS]
    if unknown:
        raise SystemExit(f"DAGWIRE_BENCH_BACKENDS: unknown {unknown}; choose from {BACKENDS}")
    profile = os.environ.get("DAGWIRE_BENCH_PROFILE", "1") not in ("", "0")
    keep = os.environ.get("DAGWIRE_BENCH_KEEP", "") not in ("", "0")
    results: dict[str, list[dict[str, Any]]] = {"times": [], "cpu": [], "rpc": [], "profile": []}
    for name in chosen:
        log_dir = Path(tempfile.mkdtemp(prefix=f"dagwire-bench-{name.replace('+', '-')}-"))
        try:
            for key, rows in (await _measure_backend(name, repeat, profile, log_dir)).items():
                results[key] += rows
        finally:
            if keep:
                print(f"{name}: service logs kept in {log_dir}", file=sys.stderr)
            else:
                shutil.rmtree(log_dir, ignore_errors=True)
    print_table(results["cpu"], title="Full stack: CPU ms per task of each process (psutil)")
    print_table(
        results["rpc"],
        title="Full stack: per-task RPCs from a client process, one at a time and 500 at once",
    )
    print_table(
        results["profile"],
        title="Full stack: orchestrator cProfile, top functions by own time (1 run of each shape)",
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nload average during the benchmark (1, 5, 15 min): {load}")
    return results["times"]


def run() -> list[dict[str, Any]]:
    """Rows: ms/task of chain-200 and fan-out-500 through the full stack, per backend."""
    return asyncio.run(_run())


if __name__ == "__main__":
    print_table(run(), title="Full stack: ms per task vs docs/contracts.md §11")
