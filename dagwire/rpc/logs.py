"""Logging setup for every dagwire process: stderr only, JSON lines or text, fixed context keys.

Every formatted line passes through `dagwire.settings.redact`, so no credential (an S3 key, a
password in a MongoDB URI, also when a library's exception quotes it) is ever logged in clear.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal, TextIO

from dagwire.settings import redact

__all__ = [
    "CONTEXT_KEYS",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "bind",
    "bound",
    "current_context",
    "setup_logging",
]

LogFormat = Literal["json", "text"]

#: The fixed keys every log line carries (empty when unknown).
CONTEXT_KEYS = ("service", "run_id", "node_id", "attempt", "trace_id")

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("dagwire_log_context", default=_EMPTY)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


def current_context() -> Mapping[str, Any]:
    """The context fields bound in the current task (see `bound`)."""
    return _context.get()


def bind(**fields: Any) -> None:
    """Bind context fields (e.g. ``trace_id``) for the rest of the current task/context.

    Args:
        **fields: values for `CONTEXT_KEYS` (or any other key); ``None`` removes a key.
    """
    merged = dict(_context.get())
    for key, value in fields.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    _context.set(merged)


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind context fields inside a ``with`` block only.

    Args:
        **fields: as for `bind`.
    """
    token = _context.set(dict(_context.get()))
    try:
        bind(**fields)
        yield
    finally:
        _context.reset(token)


class _ContextFilter(logging.Filter):
    """Copies the fixed keys onto each record: `extra=` wins, then the contextvar."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        for key in CONTEXT_KEYS:
            if getattr(record, key, None) in (None, ""):
                default = self._service if key == "service" else ""
                setattr(record, key, context.get(key, default))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the fixed keys, extras."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            data[key] = getattr(record, key, "")
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in data:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(data, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal: ``time level [service] message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        context = " ".join(
            f"{key}={value}"
            for key in CONTEXT_KEYS[1:]
            if (value := getattr(record, key, "")) not in ("", None)
        )
        line = f"{stamp} {record.levelname:<7} [{getattr(record, 'service', '')}] "
        line += record.getMessage() + (f"  {context}" if context else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def setup_logging(
    service: str,
    *,
    level: str | int = "info",
    log_format: LogFormat | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Configure the root logger once for a process: one stderr handler, fixed context keys.

    Args:
        service: the process name every line carries under ``service``.
        level: a level name (``debug``, ``info``, ``warning``, ``error``) or number.
        log_format: ``json`` or ``text``; None picks ``text`` on a terminal, else ``json``.
        stream: where to write (default ``sys.stderr``; never stdout).

    Returns:
        The handler installed (replacing any handler an earlier call installed).

    Raises:
        ValueError: `level` is not a level name.
    """
    out = stream if stream is not None else sys.stderr
    if log_format is None:
        log_format = "text" if _isatty(out) else "json"
    numeric = level if isinstance(level, int) else logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning or error")
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_ContextFilter(service))
    handler.set_name("dagwire")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "dagwire":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    bind(service=service)
    return handler


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False
