"""Copy submitted data into plain JSON values (dict, list, str, int, float, bool, None)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from dagwire.limits import MAX_SPEC_DEPTH, MAX_SPEC_VALUES
from dagwire.spec._errors import Loc, Problem, describe

__all__ = ["MAX_DEPTH", "MAX_VALUES", "Convert", "NotJsonError", "to_plain"]

MAX_DEPTH = MAX_SPEC_DEPTH
MAX_VALUES = MAX_SPEC_VALUES
"""Bounds that keep hostile input (deep nesting, YAML alias bombs) from exhausting the process."""

Convert = Callable[[object], object]
"""A hook for source-specific types: returns a plain replacement, or raises `NotJsonError`."""


class NotJsonError(ValueError):
    """A submitted value has no JSON equivalent; the message says what to write instead."""


class _TooLarge(Exception):
    pass


def to_plain(data: object, *, convert: Convert | None = None) -> tuple[Any, list[Problem]]:
    """A plain copy of `data` and the problems found (non-JSON values, non-string keys).

    Tuples become lists, `str`/`int`/`float` subclasses their base type and pydantic models
    their field mapping; NaN and infinities, bytes, sets, dates and other objects are problems.
    `convert` first sees every value whose type is not exactly a plain one (YAML's own types).
    """
    walker = _Walker(data, convert)
    try:
        plain = walker.copy(data, [], 0)
    except _TooLarge:
        return None, [Problem(f"the spec has more than {MAX_VALUES:,} values; split it up")]
    return plain, walker.problems


class _Walker:
    def __init__(self, root: object, convert: Convert | None) -> None:
        self.root = root
        self.convert = convert
        self.problems: list[Problem] = []
        self.count = 0

    def fail(self, path: list[str | int], text: str) -> None:
        loc: Loc = tuple(path)
        self.problems.append(describe(self.root, loc, text))

    def copy(self, value: object, path: list[str | int], depth: int) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooLarge
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None:
            return value
        if kind is float:
            return self.number(value, path)
        if kind is dict or kind is list:
            return self.container(value, path, depth)
        if self.convert is not None:
            try:
                value = self.convert(value)
            except NotJsonError as exc:
                self.fail(path, str(exc))
                return None
        return self.other(value, path, depth)

    def other(self, value: object, path: list[str | int], depth: int) -> Any:
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return self.number(float(value), path)
        if isinstance(value, Mapping | list | tuple):
            return self.container(value, path, depth)
        if isinstance(value, BaseModel):  # e.g. a TaskSpec inside WorkflowSpec(tasks=[...])
            return self.container(value.model_dump(exclude_unset=True), path, depth)
        self.fail(
            path,
            f"{type(value).__name__} value {value!r:.60} is not a JSON value"
            " (use a string, number, boolean, null, list or mapping)",
        )
        return None

    def number(self, value: object, path: list[str | int]) -> Any:
        assert isinstance(value, float)
        if not math.isfinite(value):
            self.fail(path, f"{value} is not a JSON number")
            return None
        return value

    def container(self, value: object, path: list[str | int], depth: int) -> Any:
        if depth >= MAX_DEPTH:
            self.fail(path, f"values are nested more than {MAX_DEPTH} levels deep")
            return None
        if type(value) is dict or isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if type(key) is not str:
                    if not isinstance(key, str):
                        self.fail(path, f"mapping key {key!r:.60} is not a string; quote it")
                        continue
                    key = str(key)
                kind = type(item)
                if kind is str or kind is int or kind is bool or item is None:
                    out[key] = item  # the common case, without a call per value
                    self.count += 1
                else:
                    path.append(key)
                    out[key] = self.copy(item, path, depth + 1)
                    path.pop()
            return out
        assert isinstance(value, list | tuple)
        items: list[Any] = []
        for index, item in enumerate(value):
            kind = type(item)
            if kind is str or kind is int or kind is bool or item is None:
                items.append(item)
                self.count += 1
            else:
                path.append(index)
                items.append(self.copy(item, path, depth + 1))
                path.pop()
        return items
