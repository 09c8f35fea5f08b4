"""`${user.NAME}` placeholders inside params: syntax check, substitution and escaping.

Grammar, scanned left to right: `$${` is a literal `${`; `${user.NAME}` (NAME
`[A-Za-z_][A-Za-z0-9_]*`) is a placeholder; any other `${` is an error. A `$` not followed by
`{` is an ordinary character. Substitution is a single pass, so text inserted for a
placeholder is never scanned again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from dagwire.spec._errors import Loc

__all__ = [
    "NAME_PATTERN",
    "escape",
    "find_strings",
    "map_strings",
    "placeholder_error",
    "placeholder_names",
    "render",
    "substitute",
]

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<end>\}?)")
_USER = re.compile(r"user\.([A-Za-z_][A-Za-z0-9_]*)")
_HINT = "only ${user.NAME} is substituted; write $${ for a literal ${"


def _shorten(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def placeholder_error(text: str) -> str | None:
    """Why `text` is not valid placeholder syntax, or None when it is."""
    if "${" not in text:
        return None
    for match in _TOKEN.finditer(text):
        body = match.group("body")
        if body is None:
            continue  # `$${`
        if not match.group("end"):
            return f"unterminated placeholder {_shorten(match.group())!r} (missing '}}'; {_HINT})"
        if not _USER.fullmatch(body):
            return f"invalid placeholder {_shorten(match.group())!r} ({_HINT})"
    return None


def placeholder_names(text: str) -> Iterator[str]:
    """The variable names of the placeholders in `text` (valid syntax assumed), in order."""
    if "${" not in text:
        return
    for match in _TOKEN.finditer(text):
        body = match.group("body")
        if body is not None:
            yield body[5:]  # after "user."


def substitute(text: str, lookup: Callable[[str], str]) -> str:
    """`text` with each placeholder replaced by `lookup(name)` and each `$${` by `${`."""
    if "${" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        body = match.group("body")
        return "${" if body is None else lookup(body[5:])

    return _TOKEN.sub(replace, text)


def escape(text: str) -> str:
    """The spec spelling of final text: substituting it gives `text` back."""
    return text.replace("${", "$${")


def render(value: object) -> str:
    """A variable's value as text: strings as they are, anything else in compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _may_hold_placeholder(value: object) -> bool:
    kind = type(value)
    return kind is dict or kind is list or (isinstance(value, str) and "${" in value)


def find_strings(value: Any, path: list[str | int], found: list[tuple[Loc, str]]) -> None:
    """Append to `found` every string value inside `value` (not dict keys) holding `${`.

    `value` is plain JSON; each hit comes with its path (`path` extended into `value`).
    """
    kind = type(value)
    if kind is str:
        if "${" in value:
            found.append((tuple(path), value))
    elif kind is dict:
        for key, item in value.items():
            if not _may_hold_placeholder(item):
                continue
            path.append(key)
            find_strings(item, path, found)
            path.pop()
    elif kind is list:
        for index, item in enumerate(value):
            if not _may_hold_placeholder(item):
                continue
            path.append(index)
            find_strings(item, path, found)
            path.pop()


def map_strings(value: Any, transform: Callable[[str], str]) -> Any:
    """`value` (plain JSON) with `transform` applied to every string value holding `${`.

    Containers with nothing to change are returned as they are (shared, not copied).
    """
    kind = type(value)
    if kind is str:
        return transform(value) if "${" in value else value
    if kind is dict:
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            if not _may_hold_placeholder(item):
                continue
            new = map_strings(item, transform)
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if kind is list:
        items: list[Any] | None = None
        for index, item in enumerate(value):
            if not _may_hold_placeholder(item):
                continue
            new = map_strings(item, transform)
            if new is not item:
                if items is None:
                    items = list(value)
                items[index] = new
        return value if items is None else items
    return value
