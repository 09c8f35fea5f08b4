"""Streamed multipart uploads with bounded memory: parts filled on the event loop, sent on threads.

`MultipartWriter` copies incoming chunks into part buffers on the event loop and hands each
full part to a thread of the store's pool, which uploads it (`PartTarget.upload_part`) while
the loop fills the next one. Memory is bounded and flat: at most ``parallel + 1`` part
buffers exist per upload (one being filled, at most `parallel` being hashed and uploaded),
reused from part to part, so a 1 GiB upload holds ``3 x 16 MiB`` with the defaults whatever
its size. The buffers are anonymous memory maps, not heap objects: pages exist only once
written (a small upload costs its own size), and they go back to the system as soon as the
upload ends, so a long-running store does not keep part-sized holes in its heap (with
``bytearray`` buffers, glibc's adaptive mmap threshold moved them onto the heap after the
first upload and the RSS grew with each repeated upload); `write()` waits
(back-pressure to the producer, e.g. gRPC flow control) while every buffer is busy. The
content's sha256 is computed on the threads too, in part order (each part's hashing waits
for the previous part's), overlapping the uploads.

Why not the SDK's ``put_object(length=-1)``: it reads each part with ``bytes +=`` and slicing
(three 16 MiB copies per part, each a fresh allocation the kernel must fault in), uploads
serially when ``num_parallel_uploads=1``, and queues parts without bound when parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mmap
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Protocol, TypeVar

__all__ = ["MultipartWriter", "PartTarget", "in_thread"]

T = TypeVar("T")


async def in_thread(executor: Executor, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on `executor`; if the caller is cancelled, the call still ends first.

    A thread cannot be interrupted: waiting for it before the cancellation propagates means
    no caller reuses a buffer, or closes a response, that the thread is still using.
    """
    future = executor.submit(fn, *args)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if not future.cancelled():
            await asyncio.wait([asyncio.wrap_future(future)])
        raise


class PartTarget(Protocol):
    """The blocking S3 calls of one object upload (called on the store's threads)."""

    def put_whole(self, data: memoryview) -> None:
        """Upload content that fits in one part as a plain object (no multipart)."""

    def create(self) -> str:
        """Start a multipart upload; returns its upload id."""

    def upload_part(self, upload_id: str, number: int, data: memoryview) -> str:
        """Upload part `number` (1-based); returns its ETag."""

    def complete(self, upload_id: str, parts: list[tuple[int, str]]) -> None:
        """Complete the upload from ``(number, etag)`` pairs in part order."""

    def abort(self, upload_id: str) -> None:
        """Abort the upload (S3 drops its parts)."""


class MultipartWriter:
    """One streamed upload (see the module docstring): `write()` chunks, then `finish()`.

    On any failure (or cancellation) call `abort()`: it waits for parts still being sent and
    aborts the multipart upload, so no object becomes visible.
    """

    def __init__(
        self, target: PartTarget, executor: Executor, *, part_size: int, parallel: int = 2
    ) -> None:
        """Create an empty upload; does no I/O.

        Args:
            target: the blocking S3 calls for this object.
            executor: the threads that hash and upload parts.
            part_size: bytes per part (S3 needs at least 5 MiB for all but the last).
            parallel: most parts hashed/uploaded at once; memory is ``parallel + 1`` parts.
        """
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        self._target = target
        self._executor = executor
        self._part_size = part_size
        self._parallel = parallel
        self._max_buffers = parallel + 1
        self._free: list[mmap.mmap] = []
        self._allocated = 0
        self._current: mmap.mmap | None = None
        self._fill = 0
        self._size = 0
        self._hash = hashlib.sha256()
        self._hashed: asyncio.Future[None] | None = None  # hashing of the last dispatched part
        self._created: asyncio.Future[str] | None = None
        self._in_flight: deque[asyncio.Task[tuple[int, str]]] = deque()
        self._parts: list[tuple[int, str]] = []
        self._next_number = 1

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Copy `chunk` into the current part; send each part that fills up.

        Waits while `parallel` parts are in flight and no buffer is free.

        Raises:
            Exception: a part upload failed (its error, e.g. `StoreUnavailableError`).
        """
        view = memoryview(chunk).cast("B")
        self._size += len(view)
        while view:
            buffer = self._current
            if buffer is None:
                buffer = self._current = await self._take_buffer()
                self._fill = 0
            n = min(len(view), self._part_size - self._fill)
            buffer[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == self._part_size:
                await self._dispatch()

    async def finish(self) -> str:
        """Send the last part and complete the upload; returns the content's sha256 (hex).

        Content smaller than one part is uploaded as a plain object.

        Raises:
            Exception: an upload call failed.
        """
        if self._created is None:  # everything fits in one part (or is empty)
            data = memoryview(self._current or b"")[: self._fill]  # no buffer when empty
            await in_thread(self._executor, self._hash.update, data)
            await in_thread(self._executor, self._target.put_whole, data)
            return self._hash.hexdigest()
        if self._fill:
            await self._dispatch()
        while self._in_flight:
            self._parts.append(await self._in_flight.popleft())
        assert self._hashed is not None
        await self._hashed
        upload_id = await self._created
        self._parts.sort()
        await in_thread(self._executor, self._target.complete, upload_id, self._parts)
        return self._hash.hexdigest()

    async def abort(self) -> None:
        """Wait for parts in flight, then abort the multipart upload (best effort, no raise)."""
        tasks = list(self._in_flight)
        self._in_flight.clear()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._hashed is not None:
            await asyncio.gather(self._hashed, return_exceptions=True)
        created = self._created
        if created is None:
            return
        with contextlib.suppress(Exception):
            upload_id = await created
            await in_thread(self._executor, self._target.abort, upload_id)

    # ------------------------------------------------------------------ internals

    async def _take_buffer(self) -> mmap.mmap:
        """A free part buffer, waiting for the oldest part in flight when none is free."""
        while not self._free:
            if self._allocated < self._max_buffers:
                self._allocated += 1
                return mmap.mmap(-1, self._part_size)
            self._parts.append(await self._in_flight.popleft())  # raises a part's error
        return self._free.pop()

    async def _dispatch(self) -> None:
        """Hand the current buffer to the threads as the next part, once fewer than `parallel`
        parts are in flight."""
        while len(self._in_flight) >= self._parallel:
            self._parts.append(await self._in_flight.popleft())  # raises a part's error
        buffer, length = self._current, self._fill
        assert buffer is not None
        self._current, self._fill = None, 0
        if self._created is None:
            self._created = asyncio.ensure_future(in_thread(self._executor, self._target.create))
        data = memoryview(buffer)[:length]
        self._hashed = asyncio.ensure_future(self._hash_after(self._hashed, data))
        number, self._next_number = self._next_number, self._next_number + 1
        task = asyncio.create_task(self._send(number, buffer, data, self._hashed))
        self._in_flight.append(task)

    async def _hash_after(self, previous: asyncio.Future[None] | None, data: memoryview) -> None:
        if previous is not None:
            await previous
        await in_thread(self._executor, self._hash.update, data)

    async def _send(
        self, number: int, buffer: mmap.mmap, data: memoryview, hashed: asyncio.Future[None]
    ) -> tuple[int, str]:
        assert self._created is not None
        try:
            upload_id = await self._created
            etag = await in_thread(
                self._executor, self._target.upload_part, upload_id, number, data
            )
            await hashed  # the buffer is free only once it is hashed too
        except BaseException:
            with contextlib.suppress(BaseException):
                await asyncio.shield(hashed)  # never free a buffer a thread still reads
            raise
        self._free.append(buffer)
        return number, etag
