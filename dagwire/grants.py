"""Per-attempt store grants: what an adapter may do in the store for the attempt it was given.

With auth on, an adapter principal may register its agents but not touch the store. For each
attempt, the dispatcher mints a grant (`ExecuteRequest.store_token`), signed with the key in
``DAGWIRE_GRANT_KEY_FILE`` that the dispatcher and the store share. The adapter sends it as
``authorization: Bearer`` to the store for that attempt's inputs and outputs. The store lets
it read the artifacts of the attempt's run and store outputs of that attempt only, and only
until it expires (docs/security.md).

A grant is ``dgwg1.<payload>.<mac>``: the payload is base64url JSON
``{"r": run_id, "n": node_id, "a": attempt, "e": expiry (unix seconds)}``, the mac its
HMAC-SHA256 under the key. It needs no store round trip to mint or to check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dagwire.settings import SettingsError

__all__ = [
    "DEFAULT_GRANT_SECONDS",
    "GRANT_KEY_FILE_ENV",
    "GRANT_PREFIX",
    "Grant",
    "GrantKey",
]

GRANT_KEY_FILE_ENV = "DAGWIRE_GRANT_KEY_FILE"
GRANT_PREFIX = "dgwg1."
DEFAULT_GRANT_SECONDS = 24 * 3600.0
"""How long a grant lasts for an attempt without a timeout."""
_MARGIN_SECONDS = 300.0
"""A grant outlives its attempt's timeout by this much (clock skew, a slow last upload)."""
_MIN_KEY_BYTES = 32
_MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True, slots=True)
class Grant:
    """What one grant allows: the store calls of one attempt."""

    run_id: str
    node_id: str
    attempt: int
    expires_at: float

    @property
    def name(self) -> str:
        """How the grant is named in errors: ``attempt RUN/NODE/N``."""
        return f"attempt {self.run_id}/{self.node_id}/{self.attempt}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class GrantKey:
    """The key that signs and checks grants.

    Args:
        secret: the key bytes (at least 32).
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < _MIN_KEY_BYTES:
            raise ValueError(f"a grant key needs at least {_MIN_KEY_BYTES} bytes")
        self._secret = secret

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GrantKey | None:
        """The key in the file ``DAGWIRE_GRANT_KEY_FILE`` names, or None when it is unset.

        Raises:
            SettingsError: the file cannot be read or holds fewer than 32 bytes.
        """
        env = os.environ if environ is None else environ
        path = env.get(GRANT_KEY_FILE_ENV, "").strip()
        if not path:
            return None
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise SettingsError(
                f"cannot read {GRANT_KEY_FILE_ENV}={path!r}: {exc.strerror or exc}"
            ) from None
        if len(secret) < _MIN_KEY_BYTES:
            raise SettingsError(
                f"{GRANT_KEY_FILE_ENV}={path!r}: the key needs at least {_MIN_KEY_BYTES} bytes "
                "(for example: head -c 48 /dev/urandom | base64 > grant.key)"
            )
        return cls(secret)

    def mint(self, run_id: str, node_id: str, attempt: int, *, seconds: float | None) -> str:
        """A grant for one attempt, valid for its timeout (`seconds`) plus a margin, or a day
        when it has none."""
        lasts = DEFAULT_GRANT_SECONDS if seconds is None else seconds + _MARGIN_SECONDS
        payload = {"r": run_id, "n": node_id, "a": attempt, "e": int(time.time() + lasts) + 1}
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{GRANT_PREFIX}{body}.{self._mac(body)}"

    def verify(self, token: str, *, now: float | None = None) -> Grant | None:
        """The grant `token` holds, or None when it is not one this key signed, is malformed
        or has expired."""
        if not token.startswith(GRANT_PREFIX) or len(token) > _MAX_TOKEN_CHARS:
            return None
        body, _, mac = token[len(GRANT_PREFIX) :].partition(".")
        if not body or not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            payload = json.loads(_unb64(body))
            grant = Grant(
                str(payload["r"]), str(payload["n"]), int(payload["a"]), float(payload["e"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        if grant.expires_at < (time.time() if now is None else now):
            return None
        return grant

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())
