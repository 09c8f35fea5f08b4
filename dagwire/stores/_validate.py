"""Checks on the strings a store accepts, and exact UTC timestamp codecs for SQLite columns."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from dagwire.limits import (
    MAX_ARTIFACT_NAME_BYTES,
    MAX_METADATA_BYTES,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES,
)
from dagwire.models import DEFAULT_MEDIA_TYPE, Artifact, RunStatus, TaskStatus

__all__ = [
    "ArtifactLimitError",
    "check_artifact",
    "check_artifact_limits",
    "check_limit",
    "check_lookup_id",
    "check_record_key",
    "check_registry_entry",
    "check_run_status",
    "check_task_status",
    "check_text",
    "from_micros",
    "to_micros",
    "utf8_safe",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value: object, field: str, *, allow_nul: bool = False) -> str:
    """Return `value` if it is a `str` that can cross the wire, else raise naming `field`.

    Args:
        value: the value to check.
        field: how the error message names it (e.g. ``"name"``).
        allow_nul: accept NUL characters (free text); identifiers and names refuse them.

    Returns:
        `value`, unchanged.

    Raises:
        ValueError: not a `str`, contains NUL (unless allowed), or is not valid UTF-8 (a lone
            surrogate).
    """
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a str, not {type(value).__name__}")
    if not allow_nul and "\x00" in value:
        raise ValueError(f"{field} must not contain a NUL character: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{field} is not valid UTF-8 (it contains a lone surrogate): {value!r}"
        ) from None
    return value


def check_lookup_id(value: object, kind: str) -> bool:
    """Whether `value`, an id to look up, could name something stored.

    Returns:
        False for a `str` that is not valid UTF-8 (no stored id is; such a lookup finds
        nothing), True otherwise.

    Raises:
        ValueError: `value` is not a `str`.
    """
    if not isinstance(value, str):
        raise ValueError(f"{kind} id must be a str, not {type(value).__name__}")
    return _SURROGATE.search(value) is None


def utf8_safe(value: str) -> str:
    """`value` with any lone surrogate replaced by U+FFFD (for free text such as error messages)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)
    return value


def check_registry_entry(kind: object, key: object = "-") -> None:
    """Refuse an empty or unstorable registry kind or key.

    Raises:
        ValueError: the kind or key is empty, not a `str`, holds NUL or is not UTF-8.
    """
    for value, name in ((kind, "kind"), (key, "key")):
        check_text(value, name)
        if not value:
            raise ValueError(f"registry entry {name} must be non-empty")


def to_micros(value: datetime, field: str) -> int:
    """Microseconds since the Unix epoch of a timezone-aware `datetime` (exact, sortable).

    Raises:
        ValueError: `value` is not a timezone-aware `datetime`.
    """
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{field} must be a timezone-aware datetime, got {value!r}")
    return (value - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    """The UTC `datetime` that `to_micros` encoded as `value`."""
    return _EPOCH + timedelta(microseconds=value)


def check_task_status(value: TaskStatus | str) -> TaskStatus:
    """`value` as a `TaskStatus`.

    Raises:
        ValueError: `value` is not a task status (the message lists the valid ones).
    """
    try:
        return TaskStatus(value)
    except ValueError:
        choices = ", ".join(s.value for s in TaskStatus)
        raise ValueError(f"status must be one of {choices}; got {value!r}") from None


def check_run_status(value: RunStatus | str) -> RunStatus:
    """`value` as a `RunStatus`.

    Raises:
        ValueError: `value` is not a run status (the message lists the valid ones).
    """
    try:
        return RunStatus(value)
    except ValueError:
        choices = ", ".join(s.value for s in RunStatus)
        raise ValueError(f"run status must be one of {choices}; got {value!r}") from None


class ArtifactLimitError(ValueError):
    """An artifact's name or metadata is over one of its limits (`dagwire.limits`).

    Attributes:
        field: the offending field (``name``, ``metadata``, ``metadata['k']``), with the
            caller's prefix (``header.name``).
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def _over(
    field: str, size: int, what: str, limit_name: str, limit: int, *, subject: str = ""
) -> ArtifactLimitError:
    return ArtifactLimitError(
        f"{subject or field} has {size} {what}, over the limit {limit_name} = {limit}",
        field=field,
    )


def check_artifact_limits(name: str, metadata: Mapping[str, str], *, prefix: str = "") -> None:
    """Refuse an artifact name or metadata over its size limits (`dagwire.limits`), before
    anything is stored. Sizes are UTF-8 bytes; the values must already be `str`.

    Args:
        name: the artifact's name.
        metadata: its metadata.
        prefix: put before each field's name in messages (``header.``, ``outputs[0].``).

    Raises:
        ArtifactLimitError: the first limit passed; the message names the field and the limit.
    """
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_ARTIFACT_NAME_BYTES:
        raise _over(
            f"{prefix}name", size, "bytes", "MAX_ARTIFACT_NAME_BYTES", MAX_ARTIFACT_NAME_BYTES
        )
    field = f"{prefix}metadata"
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise _over(field, len(metadata), "entries", "MAX_METADATA_ENTRIES", MAX_METADATA_ENTRIES)
    total = 0
    for key, value in metadata.items():
        key_size = len(key.encode("utf-8", "surrogatepass"))
        if key_size > MAX_METADATA_KEY_BYTES:
            raise _over(
                field,
                key_size,
                "bytes",
                "MAX_METADATA_KEY_BYTES",
                MAX_METADATA_KEY_BYTES,
                subject=f"{field} key {key[:40]!r}...",
            )
        value_size = len(value.encode("utf-8", "surrogatepass"))
        if value_size > MAX_METADATA_VALUE_BYTES:
            raise _over(
                f"{field}[{key!r}]",
                value_size,
                "bytes",
                "MAX_METADATA_VALUE_BYTES",
                MAX_METADATA_VALUE_BYTES,
            )
        total += key_size + value_size
    if total > MAX_METADATA_BYTES:
        raise _over(field, total, "bytes in all", "MAX_METADATA_BYTES", MAX_METADATA_BYTES)


def check_artifact(artifact: Artifact) -> Artifact:
    """A copy of `artifact` with its fields validated and the default media type applied.

    Raises:
        ValueError: a name, id, media type or metadata key contains NUL or is not valid
            UTF-8, or `metadata` is not a dict (the message names the field).
        ArtifactLimitError: the name or metadata is over its limits (`check_artifact_limits`).
    """
    check_text(artifact.name, "name")
    media_type = check_text(artifact.media_type or DEFAULT_MEDIA_TYPE, "media_type")
    for field in ("run_id", "node_id"):
        value = getattr(artifact, field)
        if value is not None:
            check_text(value, field)
    if not isinstance(artifact.metadata, dict):
        raise ValueError(f"metadata must be a dict, not {type(artifact.metadata).__name__}")
    for key, value in artifact.metadata.items():
        check_text(key, "metadata key")
        check_text(value, f"metadata[{key!r}]", allow_nul=True)
    check_artifact_limits(artifact.name, artifact.metadata)
    return dataclasses.replace(artifact, media_type=media_type, metadata=dict(artifact.metadata))


def check_limit(limit: object) -> int:
    """`limit` of a listing: a positive `int`, else `ValueError`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    return limit


def check_record_key(after: object) -> tuple[int, str, int] | None:
    """A `list_records_page` cursor as (started_at in microseconds, node_id, attempt).

    Raises:
        ValueError: `after` is not None nor a (datetime, str, int) tuple.
    """
    if after is None:
        return None
    if (
        isinstance(after, tuple)
        and len(after) == 3
        and isinstance(after[1], str)
        and isinstance(after[2], int)
        and not isinstance(after[2], bool)
    ):
        return (to_micros(after[0], "after[0] (started_at)"), after[1], after[2])
    raise ValueError(f"after must be a (started_at, node_id, attempt) tuple, got {after!r}")
