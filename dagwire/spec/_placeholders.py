"""`${user.NAME}` and `${secret.NAME}` placeholders inside params: syntax check,
substitution and escaping.

Grammar, scanned left to right: `$${` is a literal `${`; `${user.NAME}` and `${secret.NAME}`
(NAME `[A-Za-z_][A-Za-z0-9_]*`) are placeholders; any other `${` is an error. A `$` not
followed by `{` is an ordinary character. Substitution is a single pass, so text inserted for
a placeholder is never scanned again.

`resolve` (in `_model`) substitutes `${user.NAME}` in the spec; `${secret.NAME}` is kept as a
`SecretRef` inside a `SecretSlot` (the parsed pieces of one string), which the orchestrator
fills at dispatch time (docs/security.md, "Secrets"). Secrets are never found by scanning
substituted text: a variable's value that spells `${secret.X}` stays that text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dagwire.spec._errors import Loc

__all__ = [
    "NAME_PATTERN",
    "SecretRef",
    "SecretSlot",
    "escape",
    "fill_slots",
    "find_strings",
    "map_strings",
    "map_strings_at",
    "placeholder_error",
    "placeholder_names",
    "render",
    "split",
    "substitute",
]

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<end>\}?)")
_PLACEHOLDER = re.compile(r"(?P<kind>user|secret)\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
_HINT = "only ${user.NAME} and ${secret.NAME} are substituted; write $${ for a literal ${"


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A `${secret.NAME}` placeholder, kept as such until dispatch."""

    name: str


@dataclass(frozen=True, slots=True)
class SecretSlot:
    """One params string that holds `${secret.*}`: where it is and its parsed pieces.

    `parts` are final text (user variables substituted, `$${` made `${`) and `SecretRef`s;
    the string the adapter gets is the parts joined, each secret replaced by its value.
    """

    path: tuple[str | int, ...]
    """The path of the string inside the task's params (`()`: params is the string)."""
    parts: tuple[str | SecretRef, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts if isinstance(p, SecretRef))

    def shown(self) -> str:
        """The string with each secret written `[secret NAME]` (what records may show)."""
        return "".join(p if isinstance(p, str) else f"[secret {p.name}]" for p in self.parts)

    def spelled(self) -> str:
        """The spec spelling of the string: resolving it gives these parts again.

        Except for text ending in `$` right before a secret (possible only through a user
        variable's value): the grammar has no spelling for it, and `$${` then reads as an
        escape, so that secret stays literal text (never a value in the wrong place).
        """
        return "".join(
            escape(p) if isinstance(p, str) else "${secret." + p.name + "}" for p in self.parts
        )

    def filled(self, values: Mapping[str, str]) -> str:
        """The string the adapter gets: each secret replaced by `values[name]`."""
        return "".join(p if isinstance(p, str) else values[p.name] for p in self.parts)


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
        if not _PLACEHOLDER.fullmatch(body):
            return f"invalid placeholder {_shorten(match.group())!r} ({_HINT})"
    return None


def placeholder_names(text: str, kind: str = "user") -> Iterator[str]:
    """The names of the `${KIND.NAME}` placeholders in `text` (valid syntax assumed), in order."""
    if "${" not in text:
        return
    prefix = kind + "."
    for match in _TOKEN.finditer(text):
        body = match.group("body")
        if body is not None and body.startswith(prefix):
            yield body[len(prefix) :]


def substitute(text: str, lookup: Callable[[str], str]) -> str:
    """`text` with each `${user.NAME}` replaced by `lookup(name)` and each `$${` by `${`.

    For text without `${secret.*}` (see `split` for text with them).
    """
    if "${" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        body = match.group("body")
        return "${" if body is None else lookup(body[5:])

    return _TOKEN.sub(replace, text)


def split(text: str, lookup: Callable[[str], str]) -> str | tuple[str | SecretRef, ...]:
    """`text` substituted in one pass (`${user.NAME}` by `lookup(name)`, `$${` by `${`).

    Returns the final text when `text` holds no `${secret.NAME}`, else its pieces: final text
    and a `SecretRef` per secret, in order (adjacent text merged). Valid syntax assumed.
    """
    if "${" not in text:
        return text
    parts: list[str | SecretRef] = []
    pending: list[str] = []
    position = 0
    for match in _TOKEN.finditer(text):
        pending.append(text[position : match.start()])
        position = match.end()
        body = match.group("body")
        if body is None:
            pending.append("${")
        elif body.startswith("secret."):
            parts.append("".join(pending))
            pending.clear()
            parts.append(SecretRef(body[7:]))
        else:
            pending.append(lookup(body[5:]))
    pending.append(text[position:])
    if not parts:
        return "".join(pending)
    parts.append("".join(pending))
    return tuple(p for p in parts if p != "")


def fill_slots(params: Any, slots: Sequence[SecretSlot], text: Callable[[SecretSlot], str]) -> Any:
    """`params` with the string at each slot's path replaced by `text(slot)`.

    Containers along the paths are copied (once each); everything else is shared.
    """
    if not slots:
        return params
    root: list[Any] = [params]
    copied: set[tuple[str | int, ...]] = set()
    for slot in slots:
        parent: Any = root
        key: str | int = 0
        prefix: tuple[str | int, ...] = ()
        for step in slot.path:
            child = parent[key]
            if prefix not in copied:
                child = dict(child) if type(child) is dict else list(child)
                parent[key] = child
                copied.add(prefix)
            parent, key = child, step
            prefix = (*prefix, step)
        parent[key] = text(slot)
    return root[0]


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
    return map_strings_at(value, lambda _path, text: transform(text))


def map_strings_at(value: Any, transform: Callable[[list[str | int], str], str]) -> Any:
    """`map_strings` whose `transform` also gets the string's path inside `value`.

    The path list is reused between calls: copy it to keep it.
    """
    return _map(value, transform, [])


def _map(
    value: Any, transform: Callable[[list[str | int], str], str], path: list[str | int]
) -> Any:
    kind = type(value)
    if kind is str:
        return transform(path, value) if "${" in value else value
    if kind is dict:
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            if not _may_hold_placeholder(item):
                continue
            path.append(key)
            new = _map(item, transform, path)
            path.pop()
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
            path.append(index)
            new = _map(item, transform, path)
            path.pop()
            if new is not item:
                if items is None:
                    items = list(value)
                items[index] = new
        return value if items is None else items
    return value
