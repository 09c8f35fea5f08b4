"""Checks on the strings a store accepts, and exact UTC timestamp codecs for SQLite columns."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["check_lookup_id", "check_text", "from_micros", "to_micros", "utf8_safe"]

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
