"""A blocking file-like reader fed from the event loop, with bounded memory (for streamed uploads).

The event loop `feed()`s chunks; an SDK thread `read(n)`s them back as exactly `n` bytes (fewer
only at the end). The loop side waits (`wait_for_room()`) while more than `limit` bytes are
buffered, so memory stays near `limit` whatever the stream's size. The sha256 and size of what
was read are computed on the reading thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import deque
from typing import Any

__all__ = ["StreamAborted", "StreamReader"]


class StreamAborted(Exception):
    """The producer gave up (its stream raised or the call was cancelled)."""


class StreamReader:
    """Bytes handed from the event loop to one reading thread (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, limit: int) -> None:
        """Create an empty reader.

        Args:
            loop: the event loop that feeds it (woken when the reader consumed data).
            limit: most bytes buffered before `wait_for_room()` waits.
        """
        self._loop = loop
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._room = asyncio.Event()
        self._room.set()
        self._hash = hashlib.sha256()
        self.size = 0

    # ------------------------------------------------------------------ event-loop side

    def feed(self, chunk: bytes) -> None:
        """Append `chunk` (never blocks; call `wait_for_room()` between chunks)."""
        if not chunk:
            return
        with self._cond:
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            if self._buffered >= self._limit:
                self._room.clear()
            self._cond.notify()

    async def wait_for_room(self, upload: asyncio.Future[Any]) -> None:
        """Wait until the buffer is below its limit, or until `upload` ended (then return)."""
        while not self._room.is_set() and not upload.done():
            waiter: asyncio.Future[Any] = asyncio.ensure_future(self._room.wait())
            try:
                await asyncio.wait([waiter, upload], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    def finish(self) -> None:
        """Mark the end of the stream."""
        with self._cond:
            self._eof = True
            self._cond.notify()

    def abort(self, error: BaseException | None = None) -> None:
        """Make the reading thread fail (so the SDK aborts the upload) and drop the buffer."""
        with self._cond:
            self._error = error or StreamAborted("the upload was abandoned")
            self._chunks.clear()
            self._buffered = 0
            self._cond.notify()

    @property
    def sha256(self) -> str:
        """Hex digest of everything read so far."""
        return self._hash.hexdigest()

    # ------------------------------------------------------------------ reading-thread side

    def read(self, n: int = -1) -> bytes:
        """Block until `n` bytes (all, if `n` < 0) are buffered or the stream ended; return them.

        Raises:
            StreamAborted: the producer gave up.
        """
        with self._cond:
            while True:
                if self._error is not None:
                    raise StreamAborted(f"upload abandoned: {self._error!r}")
                if self._eof or (0 <= n <= self._buffered):
                    break
                self._cond.wait()
            data = self._take(n if n >= 0 else self._buffered)
        self._hash.update(data)
        self.size += len(data)
        if data:
            self._loop.call_soon_threadsafe(self._wake)
        return data

    def _take(self, n: int) -> bytes:
        parts: list[bytes] = []
        wanted = n
        while wanted and self._chunks:
            chunk = self._chunks[0]
            if len(chunk) <= wanted:
                parts.append(self._chunks.popleft())
                wanted -= len(chunk)
            else:
                view = memoryview(chunk)
                parts.append(bytes(view[:wanted]))
                self._chunks[0] = bytes(view[wanted:])
                wanted = 0
        taken = n - wanted
        self._buffered -= taken
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _wake(self) -> None:
        if self._buffered < self._limit:
            self._room.set()

    # file-like odds and ends the SDK may probe
    def readable(self) -> bool:
        return True
