"""The S3 store's pipelined multipart writer: part order, bounded memory, abort on failure.

The writer drives a `PartTarget` (the blocking S3 calls of one object). Here the target keeps
parts in memory, so the tests can see what S3 would have been sent; the real MinIO path is
covered by `tests/integration/test_s3_store.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dagwire.stores._s3_stream import MultipartWriter

PART = 1024


class MemoryTarget:
    """Records the calls an upload makes; optionally slow or failing part uploads."""

    def __init__(self, *, fail_part: int | None = None, delay: float = 0.0) -> None:
        self.whole: bytes | None = None
        self.parts: dict[int, bytes] = {}
        self.completed: list[tuple[int, str]] | None = None
        self.aborted = False
        self.created = 0
        self.fail_part = fail_part
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def put_whole(self, data: memoryview) -> None:
        self.whole = bytes(data)

    def create(self) -> str:
        self.created += 1
        return "upload-1"

    def upload_part(self, upload_id: str, number: int, data: memoryview) -> str:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                threading.Event().wait(self.delay)
            if number == self.fail_part:
                raise ConnectionError(f"part {number} lost")
            self.parts[number] = bytes(data)
            return f"etag-{number}"
        finally:
            with self._lock:
                self.in_flight -= 1

    def complete(self, upload_id: str, parts: list[tuple[int, str]]) -> None:
        self.completed = parts

    def abort(self, upload_id: str) -> None:
        self.aborted = True


async def _upload(target: MemoryTarget, data: bytes, *, chunk: int, parallel: int = 2) -> str:
    with ThreadPoolExecutor(4) as executor:
        writer = MultipartWriter(target, executor, part_size=PART, parallel=parallel)
        try:
            for i in range(0, len(data), chunk):
                await writer.write(data[i : i + chunk])
            return await writer.finish()
        except BaseException:
            await writer.abort()
            raise


async def test_parts_arrive_numbered_in_order_and_the_digest_is_the_contents() -> None:
    data = os.urandom(PART * 3 + PART // 2)
    target = MemoryTarget(delay=0.01)

    digest = await _upload(target, data, chunk=300)

    assert digest == hashlib.sha256(data).hexdigest()
    assert target.completed == [(n, f"etag-{n}") for n in (1, 2, 3, 4)]
    assert b"".join(target.parts[n] for n in sorted(target.parts)) == data
    assert target.created == 1 and not target.aborted


async def test_content_within_one_part_is_one_plain_object() -> None:
    data = os.urandom(PART - 1)
    target = MemoryTarget()

    digest = await _upload(target, data, chunk=100)

    assert target.whole == data and target.created == 0 and target.completed is None
    assert digest == hashlib.sha256(data).hexdigest()


async def test_empty_content_is_an_empty_object() -> None:
    target = MemoryTarget()
    assert await _upload(target, b"", chunk=1) == hashlib.sha256(b"").hexdigest()
    assert target.whole == b""


@pytest.mark.parametrize("parallel", [1, 2, 3])
async def test_no_more_than_parallel_parts_are_in_flight(parallel: int) -> None:
    data = os.urandom(PART * 12)
    target = MemoryTarget(delay=0.02)

    await _upload(target, data, chunk=PART * 2, parallel=parallel)

    assert 1 <= target.max_in_flight <= parallel
    assert b"".join(target.parts[n] for n in sorted(target.parts)) == data


async def test_a_failed_part_aborts_the_upload_and_completes_nothing() -> None:
    target = MemoryTarget(fail_part=2)

    with pytest.raises(ConnectionError, match="part 2 lost"):
        await _upload(target, os.urandom(PART * 6), chunk=PART)

    assert target.aborted
    assert target.completed is None


async def test_a_cancelled_upload_is_aborted() -> None:
    target = MemoryTarget(delay=0.05)
    upload = asyncio.create_task(_upload(target, os.urandom(PART * 20), chunk=PART))
    await asyncio.sleep(0.08)

    upload.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upload

    assert target.aborted
    assert target.completed is None
