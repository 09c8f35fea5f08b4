"""Identifiers: time-ordered ids for runs and artifacts, W3C-shaped trace ids."""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ["new_id", "new_trace_id"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> str:
    """A UUIDv7 string: sorts by creation time (to the millisecond), unique across processes.

    Within one process ids are strictly increasing, so "newest first" is a plain sort by id.
    """
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            _counter += 1
            if _counter >= 1 << 12:  # 4096 ids in one millisecond: borrow the next one
                _last_ms += 1
                _counter = 0
            now_ms = _last_ms
        else:
            _last_ms = now_ms
            _counter = 0
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (now_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


def new_trace_id() -> str:
    """A 32-hex-digit trace id (the W3C Trace Context shape, so tracing systems accept it)."""
    return os.urandom(16).hex()
