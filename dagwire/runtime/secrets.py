"""`${secret.NAME}`: reading secrets from the orchestrator's secrets directory, checking a spec's
secrets before a run starts, and redacting resolved values from every error text of a run.

Layout (docs/security.md, "Secrets"): one file per secret, ``DIR/<namespace>/<NAME>``, as a
Kubernetes secret volume mounts them; the file's content is the value, less one trailing
newline. Files are read again at every dispatch, so a rotated secret is used from the next
attempt on.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, quote_plus

from dagwire.errors import DagwireError
from dagwire.limits import MAX_SECRET_BYTES
from dagwire.models import DEFAULT_NAMESPACE
from dagwire.settings import keep_secret
from dagwire.spec import WorkflowSpec
from dagwire.spec._errors import Problem, field_path, to_exception
from dagwire.spec._placeholders import NAME_PATTERN, SecretSlot, fill_slots

__all__ = [
    "DEFAULT_NAMESPACE",
    "MIN_REDACTED_CHARS",
    "SECRETS_DIR_ENV",
    "Redactor",
    "SecretError",
    "SecretNotFoundError",
    "SecretResolver",
]

SECRETS_DIR_ENV = "DAGWIRE_SECRETS_DIR"
MIN_REDACTED_CHARS = 4
"""Values at least this long are replaced where they occur in an error text; an error text that
holds a shorter one is withheld whole (replacing, say, `ab` inside words would show where it
occurs, and so the value)."""

_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")


class SecretError(DagwireError, ValueError):
    """A secret cannot be used: the message names it and the file, never its value."""


class SecretNotFoundError(SecretError, LookupError):
    """No file holds the secret."""


class SecretResolver:
    """Reads the secrets under one directory (`DAGWIRE_SECRETS_DIR`; None: no secrets).

    Args:
        directory: the root of the layout ``DIR/<namespace>/<NAME>``, or None.
    """

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory else None

    def namespace_dir(self, namespace: str) -> Path:
        """``DIR/<namespace>``.

        Raises:
            SecretError: no directory is configured, or `namespace` could leave it.
        """
        if self.directory is None:
            raise SecretError(
                f"no secrets directory is configured: set {SECRETS_DIR_ENV} on the orchestrator"
                " (one file per secret, DIR/<namespace>/NAME)"
            )
        if not _NAMESPACE.fullmatch(namespace) or ".." in namespace:
            raise SecretError(f"namespace {namespace[:80]!r} cannot name a secrets directory")
        return self.directory / namespace

    def path_of(self, namespace: str, name: str) -> Path:
        """The file of secret `name` in `namespace`.

        Raises:
            SecretError: no directory, or a namespace or name that could leave it.
        """
        if not NAME_PATTERN.fullmatch(name):
            raise SecretError(
                f"{name[:80]!r} is not a secret name (letters, digits and '_', not starting"
                " with a digit)"
            )
        return self.namespace_dir(namespace) / name

    def read(self, namespace: str, name: str) -> str:
        """The value of secret `name`: the file's UTF-8 text without one trailing newline
        (``\\n`` or ``\\r\\n``).

        Raises:
            SecretNotFoundError: there is no such file.
            SecretError: no directory, a bad name, or the file is unreadable, a directory,
                larger than `MAX_SECRET_BYTES` or not UTF-8.
        """
        path = self.path_of(namespace, name)
        where = f"secret {name!r} ({path})"
        try:
            with path.open("rb") as file:
                data = file.read(MAX_SECRET_BYTES + 1)
        except FileNotFoundError:
            folder = path.parent
            hint = "" if folder.is_dir() else f"; the directory {folder} does not exist"
            raise SecretNotFoundError(
                f"secret {name!r} not found: no file {name} in {folder}{hint}"
            ) from None
        except IsADirectoryError:
            raise SecretError(f"{where} is a directory, not a file") from None
        except OSError as exc:
            raise SecretError(f"{where} cannot be read: {exc.strerror or exc}") from None
        if len(data) > MAX_SECRET_BYTES:
            raise SecretError(f"{where} is larger than {MAX_SECRET_BYTES >> 10} KiB")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"{where} is not UTF-8 text") from None
        if text.endswith("\r\n"):
            return text[:-2]
        return text[:-1] if text.endswith("\n") else text

    def check(self, spec: WorkflowSpec, namespace: str) -> None:
        """Check that every secret a resolved spec names can be read, reading each once.

        Raises:
            WorkflowValidationError: one line per use of a missing or unusable secret, naming
                the task, the param path, the secret and where it was looked for.
        """
        if not spec.uses_secrets:
            return
        failures: dict[str, str | None] = {}
        problems: list[Problem] = []
        for index, task_id, slot in spec.secret_uses():
            for name in dict.fromkeys(slot.names):
                if name not in failures:
                    failures[name] = self._failure(namespace, name)
                reason = failures[name]
                if reason is None:
                    continue
                field = field_path(("params", *slot.path))
                problems.append(
                    Problem(
                        f"task {task_id!r}: field {field!r}: {reason}",
                        ("tasks", index, "params", *slot.path),
                        task_id,
                        field,
                    )
                )
        if problems:
            raise to_exception(problems)

    def _failure(self, namespace: str, name: str) -> str | None:
        """Why secret `name` cannot be used (None: it can)."""
        if self.directory is None:
            return (
                f"${{secret.{name}}} needs a secrets directory: set {SECRETS_DIR_ENV} on the "
                "orchestrator (one file per secret, DIR/<namespace>/NAME)"
            )
        try:
            self.read(namespace, name)
        except SecretError as exc:
            return str(exc)
        return None

    def fill(
        self,
        params: object,
        slots: Iterable[SecretSlot],
        namespace: str,
        redactor: Redactor,
    ) -> object:
        """`params` with each slot's string made with the secrets' current values, which
        `redactor` learns (to redact them from the run's error texts).

        Raises:
            SecretError: a secret cannot be read now (deleted or unreadable since the start).
        """
        slots = tuple(slots)
        if not slots:
            return params
        values: dict[str, str] = {}
        for slot in slots:
            for name in slot.names:
                if name not in values:
                    values[name] = value = self.read(namespace, name)
                    redactor.add(name, value)
                    keep_secret(value)  # masked in every log line of this process too
        return fill_slots(params, slots, lambda slot: slot.filled(values))


class Redactor:
    """Replaces the secret values a run used in any text it stores or shows.

    A value of `MIN_REDACTED_CHARS` or more is replaced by ``[secret NAME]``, also as JSON and
    Python string literals write it (an adapter that echoes its params) and percent-encoded
    (a URL in an HTTP library's error). A text holding a
    shorter value is withheld whole. Every value a run ever used is kept (values rotated
    between attempts too), so retries stay redacted.
    """

    __slots__ = ("_forms", "_short")

    def __init__(self) -> None:
        self._forms: dict[str, str] = {}  # a form of a value -> the secret's name
        self._short: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self._forms or self._short)

    def add(self, name: str, value: str) -> None:
        """Redact `value` (the value of secret `name`) from now on; an empty one is nothing."""
        if not value:
            return
        table = self._forms if len(value) >= MIN_REDACTED_CHARS else self._short
        for form in _forms(value):
            table.setdefault(form, name)

    def __call__(self, text: str) -> str:
        """`text` with every known value replaced (or withheld, see the class)."""
        if not text or not self:
            return text
        for form, name in self._short.items():
            if form in text:
                return (
                    f"[error text withheld: it contains the value of secret {name}, which is"
                    f" shorter than {MIN_REDACTED_CHARS} characters]"
                )
        for form in sorted(self._forms, key=len, reverse=True):
            if form in text:
                text = text.replace(form, f"[secret {self._forms[form]}]")
        return text

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self(text)


def _forms(value: str) -> list[str]:
    """`value` as it is, inside JSON strings (both ASCII modes), inside a Python repr, and
    percent-encoded (a URL an HTTP library quotes in its error)."""
    forms = [
        value,
        json.dumps(value, ensure_ascii=False)[1:-1],
        json.dumps(value)[1:-1],
        repr(value)[1:-1],
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
    ]
    return [form for form in dict.fromkeys(forms) if form]
