"""Problems found in a workflow spec, and how they become one `WorkflowValidationError`."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from dagwire.errors import WorkflowValidationError

__all__ = [
    "MAX_LISTED_PROBLEMS",
    "TASK_ID_PATTERN",
    "Loc",
    "Locator",
    "Problem",
    "SpecProblems",
    "describe",
    "field_path",
    "problems_from_validation_error",
    "suggest",
    "to_exception",
]

TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
MAX_LISTED_PROBLEMS = 20
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

Loc = tuple[str | int, ...]
"""A path into the submitted document, e.g. `("tasks", 2, "retry", "max_attempts")`."""

Locator = Callable[[Loc], "int | None"]
"""Maps a path to its 1-based source line (YAML/JSON input), or None when unknown."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a spec: the text a person reads, and where it is."""

    message: str
    loc: Loc = ()
    node_id: str | None = None
    field: str | None = None
    rank: int = 1
    """Listed before problems of higher rank in the same task (an unknown field is rank 0)."""


class SpecProblems(ValueError):
    """Raised inside model validation to carry `Problem`s out through pydantic (as `ctx.error`)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("\n".join(p.message for p in problems))
        self.problems = list(problems)


def field_path(parts: Iterable[str | int]) -> str:
    """`("retry", "max_attempts")` -> `retry.max_attempts`; indexes as `[i]`, odd keys quoted."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


def describe(data: object, loc: Loc, text: str, *, field: str | None = None) -> Problem:
    """A `Problem` for `loc` in the submitted `data`, prefixed with its task and field.

    A task is named by its id when the submitted id is usable (`task 'shout'`), else by its
    position (`tasks[3]`). `field` overrides the field named in the message (default: the rest
    of `loc` below the task, or all of `loc` outside tasks).
    """
    node_id: str | None = None
    prefix = ""
    rest: Sequence[str | int] = loc
    if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int):
        node_id = _task_id(data, loc[1])
        prefix = f"task {node_id!r}" if node_id is not None else f"tasks[{loc[1]}]"
        rest = loc[2:]
    if field is None:
        field = field_path(rest) or None
    parts = [p for p in (prefix, f"field {field!r}" if field else "") if p]
    return Problem(": ".join([*parts, text]), loc=loc, node_id=node_id, field=field)


def _task_id(data: object, index: int) -> str | None:
    """The id of `tasks[index]` in the submitted data, when it is a valid one."""
    tasks = data.get("tasks") if isinstance(data, Mapping) else None
    if not isinstance(tasks, Sequence) or isinstance(tasks, str) or index >= len(tasks):
        return None
    task = tasks[index]
    task_id = task.get("id") if isinstance(task, Mapping) else None
    if isinstance(task_id, str) and TASK_ID_PATTERN.fullmatch(task_id):
        return task_id
    return None


def suggest(word: str, choices: Iterable[str], *, prefix: str = "") -> str:
    """` (did you mean 'x'?)` for the closest choice (written after `prefix`), or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


def _short(value: object) -> str:
    """`value` as the spec author wrote it (JSON spelling), cut to a readable length."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_of(model_fields: Mapping[Loc, Sequence[str]], loc: Loc) -> Sequence[str]:
    """The field names allowed at `loc` (which ends with the unknown key)."""
    shape = tuple("*" if isinstance(p, int) else p for p in loc[:-1])
    return model_fields.get(shape, ())


def problems_from_validation_error(
    exc: ValidationError, data: object, model_fields: Mapping[Loc, Sequence[str]]
) -> list[Problem]:
    """Turn pydantic's errors into `Problem`s a person can act on.

    `model_fields` maps a location shape (`()`, `("tasks", "*")`, `("tasks", "*", "retry")`)
    to the field names allowed there, for "did you mean" hints.
    """
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        ctx: Mapping[str, Any] = error.get("ctx") or {}
        carried = ctx.get("error")
        if isinstance(carried, SpecProblems):
            problems.extend(carried.problems)
            continue
        problems.append(_translate(error["type"], tuple(error["loc"]), error, data, model_fields))
    # Within one task (or the top level) an unknown field first: it often explains the rest.
    problems.sort(key=lambda p: (_owner(p.loc), p.rank))  # stable: keeps pydantic's order
    return problems


def _owner(loc: Loc) -> int:
    return loc[1] if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int) else -1


def _translate(
    kind: str,
    loc: Loc,
    error: Mapping[str, Any],
    data: object,
    model_fields: Mapping[Loc, Sequence[str]],
) -> Problem:
    value = error.get("input")
    if kind == "extra_forbidden":
        key = loc[-1]
        probe = describe(data, loc, "")
        where = f" in task {probe.node_id!r}" if probe.node_id else ""
        if not where and _owner(loc) >= 0:
            where = f" in tasks[{loc[1]}]"
        parent = field_path(loc[2:-1] if _owner(loc) >= 0 else loc[:-1])
        hint = suggest(
            str(key), _fields_of(model_fields, loc), prefix=f"{parent}." if parent else ""
        )
        return Problem(
            f"unknown field {probe.field!r}{where}{hint}",
            loc=loc,
            node_id=probe.node_id,
            field=probe.field,
            rank=0,
        )
    if kind == "missing":
        probe = describe(data, loc, "")
        owner = describe(data, loc[:-1], f"missing required field {probe.field!r}", field="")
        return Problem(owner.message, loc=loc, node_id=owner.node_id, field=probe.field)
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        what = "each task must" if len(loc) == 2 and loc[0] == "tasks" else "must"
        return describe(data, loc, f"{what} be a mapping (got {_short(value)})")
    if kind in ("tuple_type", "list_type"):
        return describe(data, loc, f"Input should be a list (got {_short(value)})")
    if kind == "string_pattern_mismatch" and len(loc) == 3 and loc[2] == "id":
        return describe(
            data, loc, f"{value!r} is not a valid task id (use letters, digits, '_' and '-')"
        )
    if kind == "string_too_short":
        return describe(data, loc, "must not be empty")
    text = str(error["msg"])
    if kind.endswith("_type") or kind.endswith("_parsing"):
        text += f" (got {_short(value)})"
    return describe(data, loc, text)


def to_exception(
    problems: Sequence[Problem], locate: Locator | None = None
) -> WorkflowValidationError:
    """One `WorkflowValidationError` listing `problems`, the most useful first.

    Its `node_id`, `field` and `line` are the first problem's. Each line of the message is
    prefixed with `line N: ` when `locate` knows the source line.
    """
    if not problems:
        return WorkflowValidationError("the workflow spec is invalid")
    lines: list[str] = []
    first_line: int | None = None
    for i, problem in enumerate(problems[:MAX_LISTED_PROBLEMS]):
        line = _safe_locate(locate, problem.loc)
        if i == 0:
            first_line = line
        lines.append(f"line {line}: {problem.message}" if line is not None else problem.message)
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more problems")
    first = problems[0]
    return WorkflowValidationError(
        "\n".join(lines), node_id=first.node_id, field=first.field, line=first_line
    )


def _safe_locate(locate: Locator | None, loc: Loc) -> int | None:
    if locate is None:
        return None
    try:
        return locate(loc)
    except Exception:  # a line number is a courtesy: never let finding it hide the real error
        return None
