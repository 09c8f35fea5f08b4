"""Upload temp files of the store service: removed when a call is cut off, swept at start-up.

A real store service subprocess (embedded storage) and a PutArtifact stream that stops half
way, as an attempt cut off by a crash would leave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio

from dagwire.v1 import common_pb2
from dagwire.v1 import store_service_pb2 as pb
from dagwire.v1 import store_service_pb2_grpc as pb_grpc
from tests.stack import Proc, free_address

CHUNK = b"x" * ((1 << 20) - 4096)


def store_proc(tmp_path: Path, address: str) -> Proc:
    return Proc(
        "store",
        ["dagwire_services.store", "--listen-addr", address, "--data-dir", str(tmp_path / "d")],
        address,
        tmp_path / "store.log",
    )


def temp_files(tmp_path: Path) -> list[Path]:
    root = tmp_path / "d" / "artifacts"
    return [p for p in root.rglob(".tmp-*") if p.is_file()]


async def half_an_upload(hold: asyncio.Event) -> AsyncIterator[pb.PutArtifactRequest]:
    header = pb.ArtifactHeader(name="big.bin", run_id="run-1", node_id="a")
    yield pb.PutArtifactRequest(header=header)
    for _ in range(4):  # 4 MiB: past the store's 1 MiB write coalescing, so a file exists
        yield pb.PutArtifactRequest(chunk=CHUNK)
    await hold.wait()  # the attempt is cut off here


async def wait_for(check: object, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


async def test_an_upload_cut_off_by_the_client_leaves_no_temp_file(tmp_path: Path) -> None:
    address = free_address()
    store = store_proc(tmp_path, address)
    store.start()
    try:
        await store.wait_serving()
        async with grpc.aio.insecure_channel(address) as channel:
            api = pb_grpc.ArtifactStoreServiceStub(channel)  # type: ignore[no-untyped-call]
            hold = asyncio.Event()
            call = api.PutArtifact(half_an_upload(hold))
            await wait_for(lambda: temp_files(tmp_path))
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await call
        await wait_for(lambda: not temp_files(tmp_path))
    finally:
        store.stop()


async def test_upload_temp_files_of_a_crashed_store_are_swept_at_start_up(
    tmp_path: Path,
) -> None:
    address = free_address()
    store = store_proc(tmp_path, address)
    store.start()
    try:
        await store.wait_serving()
        async with grpc.aio.insecure_channel(address) as channel:
            api = pb_grpc.ArtifactStoreServiceStub(channel)  # type: ignore[no-untyped-call]
            hold = asyncio.Event()
            call = api.PutArtifact(half_an_upload(hold))
            await wait_for(lambda: temp_files(tmp_path))
            store.stop(signal.SIGKILL)  # the crash: the upload can never finish
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call
        left = temp_files(tmp_path)
        assert left, "the crash left no temp file: nothing to test"

        store.start()
        await store.wait_serving()
        assert temp_files(tmp_path) == [], "stale upload temp files survived the restart"
        assert "removed stale upload temp files" in store.log_path.read_text()

        # the store still takes uploads after the sweep
        async with grpc.aio.insecure_channel(address) as channel:
            api = pb_grpc.ArtifactStoreServiceStub(channel)  # type: ignore[no-untyped-call]

            async def small() -> AsyncIterator[pb.PutArtifactRequest]:
                yield pb.PutArtifactRequest(header=pb.ArtifactHeader(name="s", run_id="run-1"))
                yield pb.PutArtifactRequest(chunk=b"hello")

            reply = await api.PutArtifact(small())
            assert isinstance(reply.artifact, common_pb2.Artifact) and reply.artifact.size == 5
    finally:
        store.stop()
