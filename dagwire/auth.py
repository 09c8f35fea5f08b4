"""Principals, roles and the auth file (``DAGWIRE_AUTH_FILE``): who may call what.

The auth file is YAML and lists principals. A principal is identified by a bearer token, of
which the file keeps only the SHA-256 (the token itself is never stored), or by the names in
its mTLS client certificate (``tls_names``). docs/security.md describes the file and the roles
for users; `dagwire.rpc.auth` enforces them on every call.

```yaml
principals:
  - name: team-a-ci
    token_sha256: "<hex sha256 of the token>"
    roles: [client]
    namespaces: [team-a]
  - name: toolbox
    token_sha256: "..."
    roles: [adapter]
    agents: ["echo", "upper"]      # "*": any agent key
  - name: orchestrator
    tls_names: [orchestrator.dagwire.svc]   # or a token
    roles: [service]
```

The file is re-read when it changes (checked at most once per `RELOAD_INTERVAL_SECONDS`); a
change that does not parse keeps the principals in force and is logged once.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from dagwire.grants import Grant
from dagwire.models import DEFAULT_NAMESPACE
from dagwire.settings import SettingsError

__all__ = [
    "AUTH_FILE_ENV",
    "DEFAULT_NAMESPACE",
    "RELOAD_INTERVAL_SECONDS",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "AuthFile",
    "Principal",
    "Role",
    "add_principal",
    "check_namespace",
    "load_principals",
    "new_token",
    "token_from_env",
    "token_sha256",
]

log = logging.getLogger(__name__)

AUTH_FILE_ENV = "DAGWIRE_AUTH_FILE"
TOKEN_ENV = "DAGWIRE_TOKEN"
TOKEN_FILE_ENV = "DAGWIRE_TOKEN_FILE"
RELOAD_INTERVAL_SECONDS = 1.0
"""How often at most a server looks at the auth file's modification (one `stat`)."""

_NAMESPACE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
"""A namespace: a Kubernetes-style DNS label (lower case, digits, dashes; 1-63 characters)."""
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOKEN_TEXT = re.compile(r"[\x21-\x7e]{16,4096}")
"""A token: 16 to 4096 printable ASCII characters without spaces (it travels in metadata)."""
_MAX_FILE_BYTES = 4 * 1024 * 1024


class Role(StrEnum):
    """What a principal may do (docs/security.md has the full table)."""

    CLIENT = "client"
    """The OrchestratorService calls and the store's reads, within its namespaces."""
    ADAPTER = "adapter"
    """Register, heartbeat and deregister adapters serving its agents."""
    SERVICE = "service"
    """The dagwire services themselves: the store's writes, Dispatch, adapters' Execute."""
    ADMIN = "admin"
    """Everything, in every namespace."""


@dataclass(frozen=True, slots=True)
class Principal:
    """One entry of the auth file.

    Attributes:
        name: how the principal is named in logs and errors (never the token).
        roles: what it may do.
        namespaces: the namespaces whose runs it sees (clients); the first is its default.
        agents: the agent keys it may register (adapters); ``"*"`` is any key.
        token_sha256: the hex SHA-256 of its token ("" when it is known by certificate only).
        tls_names: names in an mTLS client certificate (CN or SAN) that identify it.
        grant: for the caller of a store grant (`dagwire.grants`), what it allows; such a
            principal is made per call, never listed in the file, and has no role.
    """

    name: str
    roles: frozenset[Role]
    namespaces: tuple[str, ...] = (DEFAULT_NAMESPACE,)
    agents: frozenset[str] = frozenset()
    token_sha256: str = ""
    tls_names: tuple[str, ...] = ()
    grant: Grant | None = None

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    @property
    def role_names(self) -> str:
        """The roles for messages, e.g. ``"client"`` or ``"adapter, client"``."""
        return ", ".join(sorted(self.roles))

    def may_serve(self, agent_key: str) -> bool:
        """Whether it may register an adapter for `agent_key`."""
        return self.is_admin or "*" in self.agents or agent_key in self.agents

    def sees_namespace(self, namespace: str) -> bool:
        """Whether runs of `namespace` are visible to it (admins and services see all)."""
        if self.is_admin or Role.SERVICE in self.roles:
            return True
        return namespace in self.namespaces


def token_sha256(token: str) -> str:
    """The hex SHA-256 of a token, as the auth file keeps it."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe, with a ``dgw_`` prefix that secret scanners
    can match)."""
    return "dgw_" + secrets.token_urlsafe(32)


def check_namespace(namespace: str, *, where: str = "namespace") -> str:
    """`namespace` when it is a valid namespace name, else `ValueError` naming `where`."""
    if not _NAMESPACE.fullmatch(namespace):
        shown = namespace if len(namespace) <= 64 else namespace[:61] + "..."
        raise ValueError(
            f"{where} {shown!r} is not a valid namespace (lower-case letters, digits and "
            "dashes, 1-63 characters, starting and ending with a letter or digit)"
        )
    return namespace


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where} must be a list of non-empty strings")
    return list(value)


def _principal(entry: Any, index: int) -> Principal:
    where = f"principals[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a mapping with name, roles and token_sha256")
    known = {"name", "roles", "namespaces", "agents", "token_sha256", "tls_names"}
    unknown = sorted(str(k) for k in entry if k not in known)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown} (known: {sorted(known)})")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}.name must be a non-empty string")
    where = f"{where} ({name!r})"
    roles_text = _strings(entry.get("roles"), f"{where}.roles")
    if not roles_text:
        raise ValueError(f"{where}.roles must list at least one of client, adapter, service, admin")
    roles = set()
    for role in roles_text:
        try:
            roles.add(Role(role))
        except ValueError:
            raise ValueError(
                f"{where}.roles: unknown role {role!r} (client, adapter, service or admin)"
            ) from None
    namespaces = _strings(entry.get("namespaces"), f"{where}.namespaces") or [DEFAULT_NAMESPACE]
    for namespace in namespaces:
        check_namespace(namespace, where=f"{where}.namespaces:")
    digest = entry.get("token_sha256", "")
    if not isinstance(digest, str) or (digest and not _HEX64.fullmatch(digest.lower())):
        raise ValueError(f"{where}.token_sha256 must be 64 hex digits (the token's SHA-256)")
    tls_names = _strings(entry.get("tls_names"), f"{where}.tls_names")
    if not digest and not tls_names:
        raise ValueError(f"{where} needs token_sha256 or tls_names to be identified by")
    return Principal(
        name=name,
        roles=frozenset(roles),
        namespaces=tuple(dict.fromkeys(namespaces)),
        agents=frozenset(_strings(entry.get("agents"), f"{where}.agents")),
        token_sha256=digest.lower(),
        tls_names=tuple(tls_names),
    )


def _yaml() -> YAML:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    return yaml


def load_principals(text: str) -> list[Principal]:
    """Parse the auth file's text.

    Raises:
        ValueError: the text is not a valid auth file (the message names the entry and key).
    """
    try:
        document = _yaml().load(text) if text.strip() else {}
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ValueError(f"{line}not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if document is None:
        document = {}
    if not isinstance(document, dict) or set(document) - {"principals"}:
        raise ValueError("the auth file must be a mapping with one key, principals")
    entries = document.get("principals") or []
    if not isinstance(entries, list):
        raise ValueError("principals must be a list")
    principals = [_principal(entry, i) for i, entry in enumerate(entries)]
    seen_names: set[str] = set()
    seen_tokens: set[str] = set()
    seen_tls: set[str] = set()
    for p in principals:
        if p.name in seen_names:
            raise ValueError(f"principal name {p.name!r} is listed twice")
        seen_names.add(p.name)
        if p.token_sha256 and p.token_sha256 in seen_tokens:
            raise ValueError(f"principal {p.name!r} has the same token_sha256 as another one")
        seen_tokens.add(p.token_sha256)
        for tls_name in p.tls_names:
            if tls_name in seen_tls:
                raise ValueError(f"tls_name {tls_name!r} of {p.name!r} is listed twice")
            seen_tls.add(tls_name)
    return principals


@dataclass
class _Snapshot:
    by_token: dict[str, Principal]
    by_tls_name: dict[str, Principal]
    signature: tuple[int, int, int] | None
    count: int


class AuthFile:
    """The principals of ``DAGWIRE_AUTH_FILE``, re-read when the file changes.

    Lookups are cheap: a dictionary read, plus one `stat` of the file at most once per
    `RELOAD_INTERVAL_SECONDS`. A file that stops parsing keeps the last good principals in
    force (logged once per change), so a half-written edit locks nobody out.
    """

    def __init__(self, path: Path, *, reload_interval: float = RELOAD_INTERVAL_SECONDS) -> None:
        """Read the file now.

        Raises:
            SettingsError: the file is missing, unreadable or not a valid auth file.
        """
        self.path = path
        self._interval = reload_interval
        self._lock = threading.Lock()
        self._checked_at = time.monotonic()
        self._bad_signature: tuple[int, int, int] | None = None
        try:
            self._snapshot = self._read()
        except (OSError, ValueError) as exc:
            raise SettingsError(f"{AUTH_FILE_ENV}={str(path)!r}: {_reason(exc)}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AuthFile | None:
        """The auth file named by ``DAGWIRE_AUTH_FILE``, or None when auth is off."""
        env = os.environ if environ is None else environ
        path = env.get(AUTH_FILE_ENV, "").strip()
        return cls(Path(path)) if path else None

    @property
    def count(self) -> int:
        """How many principals are in force."""
        return self._snapshot.count

    def by_token(self, token: str) -> Principal | None:
        """The principal holding `token`, or None."""
        self._maybe_reload()
        return self._snapshot.by_token.get(token_sha256(token))

    def by_tls_names(self, names: Iterable[str]) -> Principal | None:
        """The principal one of a verified client certificate's names identifies, or None."""
        self._maybe_reload()
        table = self._snapshot.by_tls_name
        for name in names:
            found = table.get(name)
            if found is not None:
                return found
        return None

    def _signature(self) -> tuple[int, int, int]:
        stat = self.path.stat()
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _read(self) -> _Snapshot:
        signature = self._signature()
        with self.path.open("rb") as handle:
            data = handle.read(_MAX_FILE_BYTES + 1)
        if len(data) > _MAX_FILE_BYTES:
            raise ValueError(f"the file is larger than {_MAX_FILE_BYTES // (1024 * 1024)} MiB")
        principals = load_principals(data.decode("utf-8", errors="replace"))
        return _Snapshot(
            by_token={p.token_sha256: p for p in principals if p.token_sha256},
            by_tls_name={name: p for p in principals for name in p.tls_names},
            signature=signature,
            count=len(principals),
        )

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self._interval:
            return
        with self._lock:
            if now - self._checked_at < self._interval:
                return
            self._checked_at = now
            try:
                signature = self._signature()
            except OSError as exc:
                if self._bad_signature != (0, 0, 0):
                    log.warning("auth file %s: %s; keeping the principals in force", self.path, exc)
                    self._bad_signature = (0, 0, 0)
                return
            if signature in (self._snapshot.signature, self._bad_signature):
                return
            try:
                snapshot = self._read()
            except (OSError, ValueError) as exc:
                self._bad_signature = signature
                log.warning(
                    "auth file %s changed but cannot be used (%s); keeping the %d principals "
                    "in force",
                    self.path,
                    _reason(exc),
                    self._snapshot.count,
                )
                return
            self._snapshot, self._bad_signature = snapshot, None
            log.info("auth file %s re-read: %d principals", self.path, snapshot.count)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def token_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The token this process sends: ``DAGWIRE_TOKEN``, else the content of
    ``DAGWIRE_TOKEN_FILE`` (surrounding whitespace removed); None when neither is set.

    Raises:
        SettingsError: the token file cannot be read, or the token is not a valid token.
    """
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV, "").strip()
    source = TOKEN_ENV
    if not token:
        path = env.get(TOKEN_FILE_ENV, "").strip()
        if not path:
            return None
        source = f"{TOKEN_FILE_ENV}={path!r}"
        try:
            token = Path(path).read_text(encoding="utf-8", errors="replace").strip()
        except OSError as exc:
            raise SettingsError(f"cannot read {source}: {_reason(exc)}") from None
    if not _TOKEN_TEXT.fullmatch(token):
        raise SettingsError(
            f"{source}: not a dagwire token (16 to 4096 printable characters, no spaces)"
        )
    return token


def add_principal(
    path: Path,
    *,
    name: str,
    roles: Sequence[str],
    namespaces: Sequence[str] = (),
    agents: Sequence[str] = (),
    tls_names: Sequence[str] = (),
) -> str:
    """Add a principal with a fresh token to the auth file at `path` (created when missing)
    and return the token, which exists nowhere else afterwards.

    The file is replaced atomically (a server never reads half of it) and kept private
    (mode 0600). Comments in an existing file are not kept: it is rewritten from its entries.

    Raises:
        ValueError: the entry is invalid, its name is taken, or the existing file is invalid.
        OSError: the file cannot be read or written.
    """
    existing: list[dict[str, Any]] = []
    if path.exists():
        text = path.read_text(encoding="utf-8")
        load_principals(text)  # refuse to rewrite a file that is already broken
        document = _yaml().load(text) or {}
        existing = list(document.get("principals") or [])
    if any(entry.get("name") == name for entry in existing):
        raise ValueError(f"a principal named {name!r} is already in the file")
    token = new_token()
    entry: dict[str, Any] = {
        "name": name,
        "token_sha256": token_sha256(token),
        "roles": list(roles),
    }
    if namespaces:
        entry["namespaces"] = list(namespaces)
    if agents:
        entry["agents"] = list(agents)
    if tls_names:
        entry["tls_names"] = list(tls_names)
    document = {"principals": [*existing, entry]}
    buffer = io.StringIO()
    _yaml().dump(document, buffer)
    text = buffer.getvalue()
    load_principals(text)  # the new entry is checked like the file will be
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return token
