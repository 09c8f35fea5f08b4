"""Quotas per namespace (``DAGWIRE_QUOTAS_FILE``): how big and how many, with clear errors.

The file is YAML: ``defaults`` for every namespace, then overrides per namespace. Any quota it
leaves out keeps the built-in default (`Quotas`), generous enough for a 4 GiB `blob` and a
100,000-task run:

```yaml
defaults:
  tasks_per_run: 20000
namespaces:
  team-a:
    concurrent_runs: 10
    artifact_bytes: 1073741824
```

The orchestrator checks the spec, tasks, params and concurrent runs at StartRun; the store
checks artifact and metadata bytes as an artifact enters. Over a quota, the call fails before
anything is stored: INVALID_ARGUMENT for a size, RESOURCE_EXHAUSTED for concurrent runs, with
a message naming the quota, its value and the namespace (docs/security.md). The file is
re-read when it changes (one `stat` at most once a second); a change that does not parse
keeps the quotas in force, logged once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from dagwire.auth import check_namespace
from dagwire.limits import MAX_METADATA_BYTES, MAX_SPEC_BYTES
from dagwire.settings import SettingsError

__all__ = ["QUOTAS_FILE_ENV", "QuotaBook", "Quotas", "load_quotas"]

log = logging.getLogger(__name__)

QUOTAS_FILE_ENV = "DAGWIRE_QUOTAS_FILE"
_MAX_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Quotas:
    """The quotas of one namespace (the defaults here are the built-in ones)."""

    spec_bytes: int = MAX_SPEC_BYTES
    """UTF-8 size of a StartRun's spec text (never above `MAX_SPEC_BYTES`, the parse limit)."""
    tasks_per_run: int = 100_000
    """Tasks in one run."""
    params_bytes_per_task: int = 1024 * 1024
    """JSON size of one task's resolved params."""
    artifact_bytes: int = 8 * 1024**3
    """Content size of one artifact."""
    metadata_bytes: int = MAX_METADATA_BYTES
    """UTF-8 size of one artifact's metadata, keys and values (never above the store's own
    `MAX_METADATA_BYTES`)."""
    concurrent_runs: int = 10_000
    """Runs of the namespace running at once."""


_FIELDS = {f.name for f in dataclasses.fields(Quotas)}


def _overrides(value: Any, where: str) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping of quota names to numbers")
    out: dict[str, int] = {}
    for key, number in value.items():
        if key not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise ValueError(f"{where}: unknown quota {key!r} (known: {known})")
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"{where}.{key} must be a whole number of at least 1, got {number!r}")
        out[str(key)] = number
    return out


def _capped(quotas: Quotas) -> Quotas:
    return dataclasses.replace(
        quotas,
        spec_bytes=min(quotas.spec_bytes, MAX_SPEC_BYTES),
        metadata_bytes=min(quotas.metadata_bytes, MAX_METADATA_BYTES),
    )


def load_quotas(text: str) -> tuple[Quotas, dict[str, Quotas]]:
    """The defaults and the per-namespace quotas of a quotas file's text.

    Raises:
        ValueError: not a valid quotas file (the message names the key).
    """
    try:
        document = YAML(typ="safe", pure=True).load(text) if text.strip() else {}
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ValueError(f"{line}not valid YAML ({getattr(exc, 'problem', exc)})") from None
    document = document or {}
    if not isinstance(document, dict) or set(document) - {"defaults", "namespaces"}:
        raise ValueError("the quotas file must be a mapping with defaults and namespaces")
    defaults = _capped(Quotas(**_overrides(document.get("defaults"), "defaults")))
    spaces = document.get("namespaces") or {}
    if not isinstance(spaces, dict):
        raise ValueError("namespaces must be a mapping of namespace names to quotas")
    per_namespace = {}
    for name, value in spaces.items():
        check_namespace(str(name), where="namespaces:")
        overrides = _overrides(value, f"namespaces.{name}")
        per_namespace[str(name)] = _capped(dataclasses.replace(defaults, **overrides))
    return defaults, per_namespace


class QuotaBook:
    """The quotas of every namespace: the built-in defaults, or those of a quotas file,
    re-read when it changes."""

    def __init__(self, path: Path | None = None, *, reload_interval: float = 1.0) -> None:
        """Read the file now (no file: the built-in defaults for everyone).

        Raises:
            SettingsError: the file is missing, unreadable or not a valid quotas file.
        """
        self.path = path
        self._interval = reload_interval
        self._lock = threading.Lock()
        self._checked_at = time.monotonic()
        self._signature: tuple[int, int, int] | None = None
        self._bad: tuple[int, int, int] | None = None
        self._defaults, self._namespaces = Quotas(), dict[str, Quotas]()
        if path is not None:
            try:
                self._load()
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise SettingsError(f"{QUOTAS_FILE_ENV}={str(path)!r}: {reason}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> QuotaBook:
        """The quotas of ``DAGWIRE_QUOTAS_FILE`` (the built-in defaults when it is unset)."""
        env = os.environ if environ is None else environ
        path = env.get(QUOTAS_FILE_ENV, "").strip()
        return cls(Path(path) if path else None)

    def of(self, namespace: str) -> Quotas:
        """The quotas of `namespace`."""
        self._maybe_reload()
        return self._namespaces.get(namespace, self._defaults)

    def _stat(self) -> tuple[int, int, int]:
        assert self.path is not None
        stat = self.path.stat()
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _load(self) -> None:
        assert self.path is not None
        signature = self._stat()
        with self.path.open("rb") as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
        if len(data) > _MAX_FILE_BYTES:
            raise ValueError("the file is larger than 1 MiB")
        self._defaults, self._namespaces = load_quotas(data.decode("utf-8", errors="replace"))
        self._signature = signature

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._checked_at < self._interval:
            return
        with self._lock:
            self._checked_at = now
            try:
                signature = self._stat()
            except OSError:
                return  # keep what is in force (a rename in progress, a removed file)
            if signature in (self._signature, self._bad):
                return
            try:
                self._load()
            except (OSError, ValueError) as exc:
                self._bad = signature
                log.warning("quotas file %s changed but cannot be used (%s)", self.path, exc)
                return
            self._bad = None
            log.info("quotas file %s re-read", self.path)
