"""Content-addressed blob files, written atomically (temp file, fsync, rename, fsync directory).

Every function here blocks; callers run them on an executor, never on the event loop.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from dagwire.limits import FILE_IO_CHUNK_BYTES

__all__ = [
    "CHUNK_SIZE",
    "STALE_TEMP_SECONDS",
    "TempBlob",
    "blob_path",
    "ensure_dir",
    "fsync_dir",
    "sweep_temp_files",
    "write_blob",
]

#: Size of the chunks `open()` yields and of the writes a streamed upload coalesces to.
CHUNK_SIZE = FILE_IO_CHUNK_BYTES

_TEMP_PREFIX = ".tmp-"
#: A temp file whose name carries no owner pid (older stores) is stale after this long.
STALE_TEMP_SECONDS = 3600.0


#: Tells this process's temp files from those of an earlier one that had the same pid (a
#: restarted container often does).
_INCARNATION = secrets.token_hex(4)


def _temp_prefix() -> str:
    """``.tmp-<pid>.<incarnation>-``: the owner, so a sweep knows if the upload can finish."""
    return f"{_TEMP_PREFIX}{os.getpid()}.{_INCARNATION}-"


def _owner_alive(name: str) -> bool | None:
    """Whether the process that made temp file `name` runs; None when the name has no owner."""
    owner, sep, _ = name[len(_TEMP_PREFIX) :].partition("-")
    pid_text, dot, incarnation = owner.partition(".")
    if not sep or not dot or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if pid == os.getpid():
        return incarnation == _INCARNATION
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


def sweep_temp_files(directories: Iterable[Path], *, now: float | None = None) -> int:
    """Remove the temp files of uploads that can never finish; returns how many.

    A temp file is stale when the process that made it is gone (a store that crashed
    mid-upload), or, for a name without an owner pid, when it is older than
    `STALE_TEMP_SECONDS`. Temp files of live processes are left alone. Missing directories
    are skipped.
    """
    removed = 0
    current = time.time() if now is None else now
    for directory in directories:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if not entry.name.startswith(_TEMP_PREFIX) or not entry.is_file(follow_symlinks=False):
                continue
            alive = _owner_alive(entry.name)
            if alive is None:
                try:
                    alive = (
                        current - entry.stat(follow_symlinks=False).st_mtime < STALE_TEMP_SECONDS
                    )
                except FileNotFoundError:
                    continue
            if not alive:
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


def blob_path(blobs: Path, sha256: str) -> Path:
    """Where the blob with hex digest `sha256` lives: ``blobs/<sha[:2]>/<sha>``."""
    return blobs / sha256[:2] / sha256


def fsync_dir(directory: Path) -> None:
    """Make `directory`'s entries (a rename or a new file in it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(directory: Path) -> None:
    """Create `directory` (and missing parents), fsyncing each parent that gained an entry."""
    if directory.is_dir():
        return
    ensure_dir(directory.parent)
    try:
        directory.mkdir()
    except FileExistsError:
        return  # another writer created it first (and synced its parent)
    fsync_dir(directory.parent)


def write_blob(blobs: Path, content: bytes) -> tuple[str, int]:
    """Store `content` under its sha256 unless a blob with that digest already exists.

    The bytes go to a temp file in the blob's own directory, are flushed and fsynced, then
    renamed over the final name and the directory is fsynced: a crash leaves either no blob
    or the whole blob, never a torn one.

    Returns:
        ``(sha256 hex, size)``.
    """
    sha256 = hashlib.sha256(content).hexdigest()
    target = blob_path(blobs, sha256)
    if target.exists():
        return sha256, len(content)
    ensure_dir(target.parent)
    fd, temp_name = tempfile.mkstemp(prefix=_temp_prefix(), dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return sha256, len(content)


class TempBlob:
    """A streamed upload in progress: a temp file hashed as it is written.

    `commit()` renames it to its content address (or drops it when that blob already
    exists); `discard()` removes it. Until `commit()` returns, nothing is visible. Calls are
    serialized by a lock, so `discard()` from one thread waits for a `write()` on another.
    """

    def __init__(self, temp_dir: Path) -> None:
        """Open a new temp file in `temp_dir` (created if missing)."""
        ensure_dir(temp_dir)
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(), dir=temp_dir)
        self._path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._lock = threading.Lock()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data` and feed it to the digest."""
        with self._lock:
            self._write(data)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    def commit(self, blobs: Path) -> tuple[str, int]:
        """Make the upload durable under its sha256 (see `write_blob`).

        Returns:
            ``(sha256 hex, size)``.
        """
        with self._lock:
            return self._commit(blobs)

    def _commit(self, blobs: Path) -> tuple[str, int]:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            sha256 = self._hash.hexdigest()
            target = blob_path(blobs, sha256)
            if target.exists():
                self._path.unlink()
                return sha256, self.size
            ensure_dir(target.parent)
            os.replace(self._path, target)
        except BaseException:
            self._discard()
            raise
        fsync_dir(target.parent)
        return sha256, self.size

    def discard(self) -> None:
        """Close and remove the temp file (idempotent)."""
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        try:
            self._file.close()
        finally:
            self._path.unlink(missing_ok=True)
