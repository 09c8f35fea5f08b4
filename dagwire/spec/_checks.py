"""Checks that span fields or tasks: ids, dependencies, variable names, placeholder syntax."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dagwire.spec._errors import Loc, Problem, field_path, suggest
from dagwire.spec._placeholders import NAME_PATTERN, find_strings, placeholder_error

if TYPE_CHECKING:
    from dagwire.spec._model import TaskSpec

__all__ = ["check_workflow"]

_MAX_SUGGESTIONS = 5
_SUGGEST_AMONG = 10_000
"""Most ids to compare for a "did you mean" hint; past this the comparison costs too much."""


def check_workflow(variables: Mapping[str, Any], tasks: Sequence[TaskSpec]) -> list[Problem]:
    """Every cross-field problem of a structurally valid spec, in document order.

    Linear in the size of the spec: one pass over tasks, dependencies and params.
    """
    problems: list[Problem] = []
    if not tasks:
        problems.append(
            Problem("field 'tasks': a workflow needs at least one task", ("tasks",), None, "tasks")
        )
    problems.extend(_check_vars(variables))
    index: dict[str, int] = {}
    for i, task in enumerate(tasks):
        first = index.setdefault(task.id, i)
        if first != i:
            problems.append(
                Problem(
                    f"duplicate task id {task.id!r} (tasks[{first}] and tasks[{i}])",
                    ("tasks", i, "id"),
                    task.id,
                    "id",
                )
            )
    problems.extend(_check_dependencies(tasks, index))
    for i, task in enumerate(tasks):
        if task.params is not None:
            problems.extend(_check_params(i, task))
    if not problems:
        problems.extend(_check_graph({task.id: task.depends_on for task in tasks}))
    problems.sort(key=lambda p: p.loc[1] if len(p.loc) > 1 and p.loc[0] == "tasks" else -1)
    return problems


def _check_vars(variables: Mapping[str, Any]) -> list[Problem]:
    return [
        Problem(
            f"field 'vars': {name!r} is not a valid variable name"
            " (use letters, digits and '_', not starting with a digit)",
            ("vars", name),
            None,
            "vars",
        )
        for name in variables
        if not NAME_PATTERN.fullmatch(name)
    ]


def _check_dependencies(tasks: Sequence[TaskSpec], index: Mapping[str, int]) -> list[Problem]:
    problems: list[Problem] = []
    hints_left = _MAX_SUGGESTIONS if len(index) <= _SUGGEST_AMONG else 0
    for i, task in enumerate(tasks):
        seen: set[str] = set()
        for k, dep in enumerate(task.depends_on):
            loc = ("tasks", i, "depends_on", k)
            prefix = f"task {task.id!r}: depends_on"
            if dep == task.id:
                problems.append(
                    Problem(f"{prefix} names the task itself", loc, task.id, "depends_on")
                )
            elif dep not in index:
                hint = ""
                if hints_left:
                    hints_left -= 1
                    hint = suggest(dep, index)
                problems.append(
                    Problem(
                        f"{prefix} names unknown task {dep!r}{hint}", loc, task.id, "depends_on"
                    )
                )
            elif dep in seen:
                problems.append(
                    Problem(f"{prefix} lists {dep!r} twice", loc, task.id, "depends_on")
                )
            seen.add(dep)
    return problems


def _check_params(i: int, task: TaskSpec) -> list[Problem]:
    problems: list[Problem] = []
    found: list[tuple[Loc, str]] = []
    find_strings(task.params, ["params"], found)
    for path, text in found:
        error = placeholder_error(text)
        if error is not None:
            field = field_path(path)
            problems.append(
                Problem(
                    f"task {task.id!r}: field {field!r}: {error}",
                    ("tasks", i, *path),
                    task.id,
                    field,
                )
            )
    return problems


def _check_graph(deps: Mapping[str, Sequence[str]]) -> list[Problem]:
    """Whole-graph checks (cycles), run only once everything else is valid.

    The graph module owns cycle finding; it is imported here, at call time, so importing
    `dagwire.spec` never imports the graph (which imports the models, which import the spec).
    """
    from dagwire.graph.dag import find_cycle

    cycle = find_cycle(deps)
    if cycle is None:
        return []
    start = cycle[0]
    return [
        Problem(
            "dependency cycle: " + " -> ".join(cycle),
            ("tasks", list(deps).index(start), "depends_on"),
            start,
            "depends_on",
        )
    ]
