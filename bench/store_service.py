"""Artifacts through the store service (a subprocess): MB/s, its peak RSS, and MinIO vs direct.

Rows: upload and download of 256 MiB (and 1 GiB with ``DAGWIRE_BENCH_BIG=1``) through
``python -m dagwire_services.store`` on embedded storage, with the store process's peak RSS
(sampled every 10 ms with psutil); then the same through the store service on
`S3ArtifactStore` over a MinIO dev server, next to a direct `minio` SDK
``put_object``/``get_object`` of the same bytes with the same part size (docs/contracts.md §11: the
service should reach at least 80 % of direct). Every row notes the 1-minute load average when
it was measured (the machine may be shared: compare rows measured at similar load).

The ceiling rows run a bare ``grpc.aio`` server process that streams from memory (no store)
to the same client (`RemoteArtifactStore`) with the service's message size, and again with
1 MiB messages: what a Python gRPC stream can carry on this machine, which bounds the
service's download ratio. Messages of at most 1 MiB (payload plus framing) stream several
times faster than larger ones with grpcio, which is why the service uses 1 MiB - 4 KiB.
The ``cpu_*_s_per_GiB`` columns give CPU seconds per GiB moved by each process taking part,
``+``-separated: store + client (embedded), store + MinIO + client (service on MinIO),
MinIO + client (direct SDK), server + client (bare gRPC); the client is the bench process.
On a 2-core machine their sum bounds the rate: the service path runs three processes where
the direct one runs two.

``DAGWIRE_BENCH_STORE_ONLY`` (comma-separated: ``embedded``, ``minio``, ``ceiling``) limits
the groups run; each figure is the median of ``DAGWIRE_BENCH_STORE_REPS`` runs (default 3),
and a store's RSS peak is the highest over all of them (one store process per size).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import grpc.aio
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dagwire.models import Artifact
from dagwire.rpc.store_client import CHUNK_BYTES, RemoteArtifactStore
from dagwire.stores.s3 import DEFAULT_PART_SIZE
from tests.servers import REPO_ROOT, MinioServer, find_free_port

MIB = 1 << 20
GIB = 1 << 30
#: Columns: CPU seconds per GiB moved, per process ("+"-separated, in the order the
#: docstring gives for each kind of row).
CPU_UP = "cpu_up_s_per_GiB"
CPU_DOWN = "cpu_down_s_per_GiB"
#: What the bench's producer yields to `store_stream()` (the client re-chunks for the wire).
CHUNK = MIB
GROUPS = ("embedded", "minio", "ceiling")


def _sizes() -> list[int]:
    sizes = [256 * MIB]
    if os.environ.get("DAGWIRE_BENCH_BIG", "") not in ("", "0"):
        sizes.append(1024 * MIB)
    return sizes


def _groups() -> list[str]:
    chosen = os.environ.get("DAGWIRE_BENCH_STORE_ONLY", "")
    if not chosen:
        return list(GROUPS)
    groups = [g.strip() for g in chosen.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise SystemExit(
            f"DAGWIRE_BENCH_STORE_ONLY: unknown group(s) {', '.join(unknown)}; "
            f"choose from {', '.join(GROUPS)}"
        )
    return groups


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def _block(seed: int) -> bytes:
    """1 MiB of pseudo-random bytes (repeated to make a big artifact without holding it)."""
    return os.urandom(CHUNK - 1) + bytes([seed & 0xFF])


@contextlib.contextmanager
def _store_process(data_dir: Path, env: dict[str, str]) -> Iterator[tuple[psutil.Process, str]]:
    address = f"127.0.0.1:{find_free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagwire_services.store", "--listen-addr", address],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "DAGWIRE_DATA_DIR": str(data_dir),
            "DAGWIRE_LOG_LEVEL": "warning",
            **env,
        },
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield psutil.Process(proc.pid), address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_serving(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)


class _RssSampler:
    """Samples a process's RSS on a thread (so a busy event loop cannot hide a peak)."""

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self.baseline = process.memory_info().rss
        self.peak = self.baseline
        self._stop = False
        self._task: asyncio.Future[None] | None = None

    def _loop(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> _RssSampler:
        self._task = asyncio.get_running_loop().run_in_executor(None, self._loop)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop = True

    async def wait(self) -> None:
        if self._task is not None:
            await self._task


def _cpu(processes: list[psutil.Process]) -> list[float]:
    """CPU seconds (user + system) each process has used so far."""
    return [sum(p.cpu_times()[:2]) for p in processes]


def _per_gib(before: list[float], after: list[float], size: int) -> list[float]:
    return [(b - a) * GIB / size for a, b in zip(before, after, strict=True)]


async def _through_service(
    address: str, process: psutil.Process, size: int, others: list[psutil.Process] | None = None
) -> dict[str, Any]:
    """Upload then download `size` bytes through the store service at `address`.

    CPU seconds per GiB are counted for the store, then `others` (MinIO), then this process
    (the client).
    """
    block = _block(size // MIB)
    processes = [process, *(others or []), psutil.Process()]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(size // CHUNK):
            yield block

    client = RemoteArtifactStore(address)
    sampler = _RssSampler(process)
    try:
        with sampler:
            cpu, started = _cpu(processes), time.perf_counter()
            stored = await client.store_stream(Artifact(name="big.bin", run_id="bench"), chunks())
            upload_s = time.perf_counter() - started
            cpu_mid, started = _cpu(processes), time.perf_counter()
            received = 0
            async for chunk in client.open(stored.artifact_id or ""):
                received += len(chunk)
            download_s = time.perf_counter() - started
            cpu_end = _cpu(processes)
        await sampler.wait()
    finally:
        await client.aclose()
    if received != size:
        raise RuntimeError(f"downloaded {received} bytes of {size}")
    return {
        "upload_MB_s": round(size / 1e6 / upload_s),
        "download_MB_s": round(size / 1e6 / download_s),
        "store_rss_baseline_MiB": round(sampler.baseline / MIB),
        "store_rss_peak_MiB": round(sampler.peak / MIB),
        "load_1m": _load(),
        CPU_UP: _per_gib(cpu, cpu_mid, size),
        CPU_DOWN: _per_gib(cpu_mid, cpu_end, size),
    }


class _RepeatedReader(io.RawIOBase):
    """A file-like object yielding `size` bytes made of `block` repeated (for put_object)."""

    def __init__(self, block: bytes, size: int) -> None:
        self._block = block
        self._left = size
        self._offset = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        out = bytearray()
        while len(out) < n:
            take = min(n - len(out), len(self._block) - self._offset)
            out += self._block[self._offset : self._offset + take]
            self._offset = (self._offset + take) % len(self._block)
        self._left -= n
        return bytes(out)


def _direct_minio(minio: MinioServer, size: int, part_size: int) -> dict[str, Any]:
    from minio import Minio

    client = Minio(
        endpoint=minio.endpoint,
        access_key=minio.access_key,
        secret_key=minio.secret_key,
        secure=False,
    )
    bucket = "dagwire-bench-direct"
    if not client.bucket_exists(bucket_name=bucket):
        client.make_bucket(bucket_name=bucket)
    block = _block(size // MIB + 1)
    assert minio.process is not None
    processes = [psutil.Process(minio.process.pid), psutil.Process()]
    cpu, started = _cpu(processes), time.perf_counter()
    client.put_object(
        bucket_name=bucket,
        object_name=f"direct-{size}",
        data=cast(BinaryIO, _RepeatedReader(block, size)),
        length=size,
        part_size=part_size,
    )
    upload_s = time.perf_counter() - started
    cpu_mid, started = _cpu(processes), time.perf_counter()
    response = client.get_object(bucket_name=bucket, object_name=f"direct-{size}")
    received = 0
    try:
        for chunk in response.stream(CHUNK):
            received += len(chunk)
    finally:
        response.close()
        response.release_conn()
    download_s = time.perf_counter() - started
    cpu_end = _cpu(processes)
    if received != size:
        raise RuntimeError(f"direct download got {received} bytes of {size}")
    return {
        "upload_MB_s": round(size / 1e6 / upload_s),
        "download_MB_s": round(size / 1e6 / download_s),
        "load_1m": _load(),
        CPU_UP: _per_gib(cpu, cpu_mid, size),
        CPU_DOWN: _per_gib(cpu_mid, cpu_end, size),
    }


# ---------------------------------------------------------------------- bare gRPC ceiling

_BARE_SERVER = """
import asyncio, sys
import grpc.aio
from dagwire.rpc.serve import server_options
from dagwire.v1 import common_pb2, store_service_pb2 as pb, store_service_pb2_grpc as pb_grpc

class Bare(pb_grpc.ArtifactStoreServiceServicer):
    def __init__(self, chunk):
        self.block = bytes(range(256)) * (chunk // 256) + bytes(chunk % 256)

    async def GetArtifact(self, request, context):
        size = int(request.artifact_id)
        yield pb.GetArtifactResponse(artifact=common_pb2.Artifact(name="bare", size=size))
        full, rest = divmod(size, len(self.block))
        message = pb.GetArtifactResponse(chunk=self.block)
        for _ in range(full):
            yield message
        if rest:
            yield pb.GetArtifactResponse(chunk=self.block[:rest])

    async def PutArtifact(self, request_iterator, context):
        size = 0
        async for request in request_iterator:
            size += len(request.chunk)
        artifact = common_pb2.Artifact(name="bare", artifact_id=str(size), size=size)
        return pb.PutArtifactResponse(artifact=artifact)

async def main(address, chunk):
    server = grpc.aio.server(options=server_options())
    pb_grpc.add_ArtifactStoreServiceServicer_to_server(Bare(chunk), server)
    server.add_insecure_port(address)
    await server.start()
    await server.wait_for_termination()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@contextlib.contextmanager
def _bare_process(chunk: int) -> Iterator[tuple[str, psutil.Process]]:
    address = f"127.0.0.1:{find_free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-c", _BARE_SERVER, address, str(chunk)],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield address, psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait()


async def _bare_ceiling(size: int, chunk: int) -> dict[str, Any]:
    """MB/s of the store client against a server that only streams from/to memory."""
    block = _block(size // MIB)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(size // CHUNK):
            yield block

    with _bare_process(chunk) as (address, server):
        async with grpc.aio.insecure_channel(address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)
        client = RemoteArtifactStore(address, chunk_bytes=chunk)
        processes = [server, psutil.Process()]
        try:
            cpu, started = _cpu(processes), time.perf_counter()
            stored = await client.store_stream(Artifact(name="big.bin"), chunks())
            upload_s = time.perf_counter() - started
            cpu_mid, started = _cpu(processes), time.perf_counter()
            received = 0
            async for piece in client.open(stored.artifact_id or ""):
                received += len(piece)
            download_s = time.perf_counter() - started
            cpu_end = _cpu(processes)
        finally:
            await client.aclose()
    if stored.size != size or received != size:
        raise RuntimeError(f"bare gRPC moved {stored.size} up and {received} down, not {size}")
    return {
        "upload_MB_s": round(size / 1e6 / upload_s),
        "download_MB_s": round(size / 1e6 / download_s),
        "load_1m": _load(),
        CPU_UP: _per_gib(cpu, cpu_mid, size),
        CPU_DOWN: _per_gib(cpu_mid, cpu_end, size),
    }


def _reps() -> int:
    try:
        reps = int(os.environ.get("DAGWIRE_BENCH_STORE_REPS", "3"))
    except ValueError:
        raise SystemExit("DAGWIRE_BENCH_STORE_REPS must be a whole number") from None
    return max(1, reps)


def _median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median MB/s over repeated runs; RSS baseline of the first run and peak over all."""
    out: dict[str, Any] = {}
    for key in ("upload_MB_s", "download_MB_s"):
        out[key] = round(statistics.median(r[key] for r in results))
    if "store_rss_peak_MiB" in results[0]:
        out["store_rss_baseline_MiB"] = results[0]["store_rss_baseline_MiB"]
        out["store_rss_peak_MiB"] = max(r["store_rss_peak_MiB"] for r in results)
    out["load_1m"] = round(statistics.median(r["load_1m"] for r in results), 1)
    for key in (CPU_UP, CPU_DOWN):  # mean CPU seconds per GiB of each process, in order
        per_process = zip(*(r[key] for r in results), strict=True)
        out[key] = "+".join(f"{statistics.mean(v):.1f}" for v in per_process)
    return out


async def _run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    groups, reps = _groups(), _reps()
    if "embedded" in groups:
        with tempfile.TemporaryDirectory(prefix="dagwire-bench-store-service-") as tmp:
            for size in _sizes():
                data_dir = Path(tmp) / f"embedded-{size}"
                with _store_process(data_dir, {}) as (process, address):
                    await _wait_serving(address)
                    results = [await _through_service(address, process, size) for _ in range(reps)]
                rows.append(
                    {
                        "backend": "store service, embedded",
                        "MiB": size // MIB,
                        **_median_of(results),
                    }
                )
    if "minio" in groups:
        rows += await _minio_rows(reps)
    if "ceiling" in groups:
        for chunk in (CHUNK_BYTES, MIB):
            label = f"bare grpc.aio from memory ({chunk // 1024} KiB messages)"
            for size in _sizes():
                results = [await _bare_ceiling(size, chunk) for _ in range(reps)]
                rows.append({"backend": label, "MiB": size // MIB, **_median_of(results)})
    return rows


async def _minio_rows(reps: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    part_size = DEFAULT_PART_SIZE
    with MinioServer() as minio, tempfile.TemporaryDirectory(prefix="dagwire-bench-s3-") as tmp:
        env = {
            "DAGWIRE_S3_ENDPOINT": minio.url,
            "DAGWIRE_S3_ACCESS_KEY": minio.access_key,
            "DAGWIRE_S3_SECRET_KEY": minio.secret_key,
            "DAGWIRE_S3_BUCKET": "dagwire-bench-service",
        }
        for size in _sizes():
            # Direct and service alternate (the store process stays up, so its RSS peak covers
            # every repetition): both see about the same machine load; medians are reported.
            direct: list[dict[str, Any]] = []
            service: list[dict[str, Any]] = []
            assert minio.process is not None
            minio_process = psutil.Process(minio.process.pid)
            with _store_process(Path(tmp), env) as (process, address):
                await _wait_serving(address)
                for _ in range(reps):
                    direct.append(await asyncio.to_thread(_direct_minio, minio, size, part_size))
                    service.append(await _through_service(address, process, size, [minio_process]))
            result, base = _median_of(service), _median_of(direct)
            rows.append({"backend": "store service, MinIO", "MiB": size // MIB, **result})
            rows.append(
                {
                    "backend": f"direct minio SDK (part {part_size // MIB} MiB)",
                    "MiB": size // MIB,
                    **base,
                    "ratio_up": round(result["upload_MB_s"] / base["upload_MB_s"], 2),
                    "ratio_down": round(result["download_MB_s"] / base["download_MB_s"], 2),
                }
            )
    return rows


def run() -> list[dict[str, Any]]:
    """Rows: MB/s up and down through the store service, its peak RSS, and MinIO vs direct."""
    return asyncio.run(_run())


if __name__ == "__main__":
    from bench.table import print_table

    print_table(run(), title="Artifacts through the store service (docs/contracts.md §11)")
