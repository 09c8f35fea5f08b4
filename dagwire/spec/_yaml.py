"""YAML (and JSON) source text: loading with line numbers, and plain values out of ruamel's.

YAML values with no JSON equivalent are rejected, not converted: timestamps (quote them to
pass a string), `!!binary`, `!!set`, `.nan`/`.inf`, non-string mapping keys and custom tags
(`!foo`). A YAML spec then means exactly what its JSON spelling means.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
from collections.abc import Callable
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, CommentedSet, TaggedScalar
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean

from dagwire.errors import WorkflowValidationError
from dagwire.spec._errors import Loc, Locator
from dagwire.spec._guard import check_source
from dagwire.spec._values import NotJsonError

__all__ = ["MAX_JSON_LINE_LOOKUP", "json_locator", "load_json", "load_yaml", "yaml_scalar"]

MAX_JSON_LINE_LOOKUP = 1 << 20
"""JSON input up to this size (characters) is re-read as YAML to give its errors line numbers."""

_STANDARD_TAG = "tag:yaml.org,2002:"
_DUPLICATE = re.compile(r'found duplicate key "(?P<key>.*?)" with value')


def load_yaml(text: str) -> tuple[Any, Locator]:
    """The document in `text` (ruamel round-trip values) and a locator for its lines.

    Raises:
        WorkflowValidationError: the text is not one well-formed YAML document without
            duplicate keys; the message starts with the line.
    """
    check_source(text)
    loader = YAML(typ="rt")
    loader.allow_duplicate_keys = False
    try:
        root = loader.load(text)
    except DuplicateKeyError as exc:
        raise _duplicate_key_error(exc) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "malformed document"
        if exc.context and exc.problem:
            problem = f"{problem} ({exc.context})"
        raise _source_error(f"invalid YAML: {problem}", line) from None
    except ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise _source_error(f"invalid YAML: {exc.reason}", line) from None
    except Exception as exc:  # ruamel raises assorted types; none may escape as such
        raise _source_error(f"invalid YAML: {exc}", None) from None
    return root, lambda loc: _line_of(root, loc)


def _duplicate_key_error(exc: DuplicateKeyError) -> WorkflowValidationError:
    match = _DUPLICATE.search(exc.problem or "")
    what = f"duplicate key {match.group('key')!r}" if match else "duplicate key"
    line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
    if exc.context_mark is not None:
        what += f" (in the mapping that starts at line {exc.context_mark.line + 1})"
    return _source_error(what, line)


def _source_error(message: str, line: int | None) -> WorkflowValidationError:
    text = f"line {line}: {message}" if line is not None else message
    return WorkflowValidationError(text, line=line)


def _line_of(root: object, loc: Loc) -> int | None:
    """The 1-based line of the deepest part of `loc` found in the document."""
    node = root
    line: int | None = None
    for key in loc:
        if isinstance(node, CommentedMap) and isinstance(key, str) and key in node:
            # A key merged in with `<<:` has no position of its own: keep the parent's line.
            with contextlib.suppress(KeyError, TypeError):
                line = node.lc.key(key)[0] + 1
            node = node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
            line = node.lc.item(key)[0] + 1
            node = node[key]
        else:
            break
    return line


def yaml_scalar(value: object) -> object:
    """A ruamel value as a plain one, or `NotJsonError` saying what to write instead."""
    if isinstance(value, ScalarBoolean):
        return bool(value)
    if isinstance(value, TaggedScalar):
        tag = value.tag.value
        if tag == _STANDARD_TAG + "str":
            return str(value.value)
        raise NotJsonError(f"YAML tag {_tag_name(tag)} is not supported (write a JSON value)")
    if isinstance(value, CommentedMap | CommentedSeq):
        tag = value.tag.value
        if tag is not None and not tag.startswith(_STANDARD_TAG):
            raise NotJsonError(f"YAML tag {tag} is not supported (write a JSON value)")
        return value
    if isinstance(value, datetime.date):
        raise NotJsonError(f"YAML timestamp {value} is not a JSON value; quote it to pass a string")
    if isinstance(value, bytes):
        raise NotJsonError("YAML binary value (!!binary) is not a JSON value; use a string")
    if isinstance(value, CommentedSet):
        raise NotJsonError("YAML set (!!set) is not a JSON value; use a list")
    return value


def _tag_name(tag: str | None) -> str:
    if tag and tag.startswith(_STANDARD_TAG):
        return "!!" + tag[len(_STANDARD_TAG) :]
    return str(tag)


class _DuplicateJsonKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateJsonKey(key)
            seen.add(key)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def load_json(text: str | bytes) -> Any:
    """The document in JSON `text`, rejecting duplicate keys and NaN/Infinity.

    Raises:
        WorkflowValidationError: malformed JSON (with its line) or a duplicate key.
    """
    check_source(text)
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        message = f"invalid JSON: {exc.msg} (column {exc.colno})"
        raise _source_error(message, exc.lineno) from None
    except _DuplicateJsonKey as exc:
        line = None
        if isinstance(text, str) and len(text) <= MAX_JSON_LINE_LOOKUP:
            try:
                load_yaml(text)
            except WorkflowValidationError as located:
                line = located.line
        raise _source_error(f"duplicate key {exc.key!r}", line) from None
    except (ValueError, RecursionError) as exc:
        raise _source_error(f"invalid JSON: {exc}", None) from None


def json_locator(text: str | bytes) -> Locator:
    """A locator for JSON text that reads its lines only when asked (only errors need them)."""
    cache: list[Callable[[Loc], int | None]] = []

    def locate(loc: Loc) -> int | None:
        if not cache:
            source = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
            if len(source) > MAX_JSON_LINE_LOOKUP:
                cache.append(lambda _loc: None)
            else:
                try:
                    cache.append(load_yaml(source)[1])
                except WorkflowValidationError:
                    cache.append(lambda _loc: None)
        return cache[0](loc)

    return locate
