"""The workflow spec v1 models (docs/contracts.md §3) and their parse, resolve and dump entry
points."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from dagwire.errors import WorkflowValidationError
from dagwire.limits import MAX_TASK_TIMEOUT_SECONDS
from dagwire.spec._checks import check_workflow
from dagwire.spec._errors import (
    Loc,
    Locator,
    Problem,
    SpecProblems,
    field_path,
    problems_from_validation_error,
    to_exception,
)
from dagwire.spec._placeholders import (
    SecretSlot,
    escape,
    fill_slots,
    find_strings,
    map_strings,
    map_strings_at,
    placeholder_names,
    render,
    split,
    substitute,
)
from dagwire.spec._values import to_plain
from dagwire.spec._yaml import json_locator, load_json, load_yaml, yaml_scalar

__all__ = ["RetryPolicy", "TaskSpec", "WorkflowSpec"]

_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
_JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_PLAIN = "dagwire.plain"  # validation context key: the input is plain JSON values already


class RetryPolicy(BaseModel):
    """How often and how patiently a task is retried; every field is optional."""

    model_config = _CONFIG

    max_attempts: int = Field(
        default=1, ge=1, description="Attempts in all, the first one included (1 = no retry)."
    )
    initial_backoff: float = Field(default=0.2, ge=0, description="Seconds before the first retry.")
    multiplier: float = Field(
        default=2.0, ge=1, description="Factor applied to the delay after each retry."
    )
    max_backoff: float = Field(default=10.0, ge=0, description="Longest delay, in seconds.")


class TaskSpec(BaseModel):
    """One task of a workflow: an agent to call, its params and the tasks it waits for."""

    model_config = _CONFIG

    id: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$", description="Unique task id: letters, digits, '_' and '-'."
    )
    agent: str = Field(min_length=1, description="Agent key an adapter serves.")
    params: Any = Field(
        default=None,
        description="Any JSON value handed to the agent. In its strings, ${user.NAME} is "
        "substituted from vars (or --var), ${secret.NAME} at dispatch from the orchestrator's "
        "secrets directory (the value reaches only the adapter), and $${ is a literal ${.",
    )
    depends_on: tuple[Annotated[str, Strict()], ...] = Field(
        default=(),
        strict=False,  # accept a list (items stay strict); a tuple is only the frozen form
        description="Ids of the tasks whose outputs this task needs, in input order.",
        json_schema_extra={"uniqueItems": True},
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Retry policy.")
    timeout: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TASK_TIMEOUT_SECONDS,
        description="Seconds per attempt for the adapter call; none if unset.",
    )


class WorkflowSpec(BaseModel):
    """A workflow spec (v1): named tasks forming a DAG, with defaults for `${user.*}`.

    Build one with `from_dict`, `from_yaml`, `from_json` or `from_file`: they check the whole
    spec and raise only `WorkflowValidationError`. Direct construction (`WorkflowSpec(...)`,
    `model_validate`) runs the same checks but raises pydantic's `ValidationError`.

    A parsed spec keeps placeholders as written. `resolve()` returns a copy whose params hold
    the final text adapters receive; that copy is marked resolved (`is_resolved`), so resolving
    it again returns it unchanged instead of reading substituted text as placeholders. A string
    holding `${secret.NAME}` is the exception: the resolved copy shows it with `[secret NAME]`
    and keeps its parsed pieces (`secret_slots`), which the orchestrator fills at dispatch.
    """

    model_config = ConfigDict(
        **_CONFIG,
        json_schema_extra={"description": "A dagwire workflow spec (v1)."},
    )

    name: str = Field(min_length=1, description="Workflow name.")
    vars: dict[str, Any] = Field(
        default_factory=dict,
        description="Defaults for ${user.NAME} placeholders (any JSON values).",
        json_schema_extra={"propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}},
    )
    max_parallel: int = Field(default=8, ge=1, description="Most tasks running at once.")
    fail_fast: bool = Field(default=False, description="After a failure, dispatch nothing new.")
    tasks: tuple[TaskSpec, ...] = Field(
        strict=False,  # accept a list; each task stays strict
        description="The tasks, in spec order.",
        json_schema_extra={"minItems": 1},
    )

    _resolved: bool = PrivateAttr(default=False)
    _index: dict[str, int] = PrivateAttr(default_factory=dict)
    _secret_slots: dict[str, tuple[SecretSlot, ...]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _plain_json(cls, data: Any, info: ValidationInfo) -> Any:
        """Copy the input into plain JSON values, rejecting what JSON cannot hold.

        Input the parsers already made plain (`_PLAIN` in the validation context) is not
        copied a second time.
        """
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            got = _kind(data)
            raise SpecProblems(
                [Problem(f"a workflow spec must be a mapping with 'name' and 'tasks' (got {got})")]
            )
        if isinstance(info.context, dict) and info.context.get(_PLAIN) is True:
            return data
        plain, problems = to_plain(data)
        if problems:
            raise SpecProblems(problems)
        return plain

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        problems = check_workflow(self.vars, self.tasks)
        if problems:
            raise SpecProblems(problems)
        return self

    def model_post_init(self, context: Any, /) -> None:
        index: dict[str, int] = {}
        for i, task in enumerate(self.tasks):
            index.setdefault(task.id, i)
        self._index = index

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Parse and validate a spec given as a mapping (e.g. `json.load` output).

        Raises:
            WorkflowValidationError: anything wrong; the message names the task and field.
        """
        return cls._parse(data, None, plain=False)

    @classmethod
    def from_yaml(cls, text: str) -> Self:
        """Parse and validate a YAML spec; error messages start with `line N: `.

        Raises:
            WorkflowValidationError: malformed YAML, a duplicate key, or an invalid spec.
        """
        root, locate = load_yaml(text)
        if root is None:
            raise WorkflowValidationError("the spec is empty: it needs at least 'name' and 'tasks'")
        plain, problems = to_plain(root, convert=yaml_scalar)
        if problems:
            raise to_exception(problems, locate)
        return cls._parse(plain, locate, plain=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        """Parse and validate a JSON spec; error messages start with `line N: ` when known.

        Raises:
            WorkflowValidationError: malformed JSON, a duplicate key, or an invalid spec.
        """
        # not marked plain: JSON numbers such as 1e999 load as infinity, which to_plain rejects
        return cls._parse(load_json(text), json_locator(text), plain=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Self:
        """Parse a spec file: JSON for a `.json` name, YAML otherwise (JSON is YAML too).

        Raises:
            WorkflowValidationError: the file is not UTF-8 text or holds an invalid spec.
            OSError: the file cannot be read.
        """
        source = Path(path)
        try:
            text = source.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise WorkflowValidationError(
                f"{source}: not UTF-8 text (byte {exc.start}); save the spec as UTF-8"
            ) from None
        if source.suffix.lower() == ".json":
            return cls.from_json(text)
        return cls.from_yaml(text)

    @classmethod
    def _parse(cls, data: object, locate: Locator | None, *, plain: bool) -> Self:
        """Validate `data`; `plain` says it holds only plain JSON values already."""
        try:
            return cls.model_validate(data, context={_PLAIN: True} if plain else None)
        except ValidationError as exc:
            problems = problems_from_validation_error(exc, data, _ALLOWED_FIELDS)
            raise to_exception(problems, locate) from None

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema of spec files (for editors, and `dagwire schema`)."""
        return {"$schema": _JSON_SCHEMA_DIALECT, **cls.model_json_schema()}

    @property
    def is_resolved(self) -> bool:
        """True for the output of `resolve()`: params hold final text, not placeholders."""
        return self._resolved

    def secret_slots(self, task_id: str) -> tuple[SecretSlot, ...]:
        """The params strings of a task that hold `${secret.*}` (resolved specs; else `()`)."""
        return self._secret_slots.get(task_id, ())

    @property
    def uses_secrets(self) -> bool:
        """True for a resolved spec with a `${secret.*}` placeholder in some task's params."""
        return bool(self._secret_slots)

    def secret_uses(self) -> list[tuple[int, str, SecretSlot]]:
        """Every (task index, task id, slot) of a resolved spec, in spec order."""
        return [
            (i, task.id, slot)
            for i, task in enumerate(self.tasks)
            for slot in self._secret_slots.get(task.id, ())
        ]

    def task(self, task_id: str) -> TaskSpec:
        """The task with this id.

        Raises:
            KeyError: no task has this id.
        """
        return self.tasks[self._index[task_id]]

    def resolve(self, user_vars: Mapping[str, object] | None = None) -> WorkflowSpec:
        """A copy with every `${user.NAME}` in params replaced and every `$${` made `${`.

        Values come from `user_vars`, else `vars`; a value that is not a string is written
        in compact JSON (`3`, `true`, `null`, `["a","b"]`). Text inserted for a placeholder is
        never read again, and resolving a resolved spec returns it as it is. A string with
        `${secret.NAME}` becomes a `SecretSlot` (see `secret_slots`); its value in the copy's
        params shows each secret as `[secret NAME]`.

        Raises:
            WorkflowValidationError: a placeholder names a variable found in neither.
        """
        if self._resolved:
            return self
        given: Mapping[str, object] = user_vars or {}
        rendered: dict[str, str] = {}
        missing: set[str] = set()

        def lookup(name: str) -> str:
            if name not in rendered:
                if name in given:
                    rendered[name] = render(given[name])
                elif name in self.vars:
                    rendered[name] = render(self.vars[name])
                else:
                    missing.add(name)
                    return ""
            return rendered[name]

        slots: list[SecretSlot] = []

        def fill(path: list[str | int], text: str) -> str:
            if "${secret." not in text:
                return substitute(text, lookup)  # the common case, in one `re.sub`
            parts = split(text, lookup)
            if isinstance(parts, str):
                return parts
            slot = SecretSlot(tuple(path), parts)
            slots.append(slot)
            return slot.shown()

        problems: list[Problem] = []
        tasks: list[TaskSpec] = []
        secret_slots: dict[str, tuple[SecretSlot, ...]] = {}
        for i, task in enumerate(self.tasks):
            params = map_strings_at(task.params, fill)
            if slots:
                secret_slots[task.id] = tuple(slots)
                slots.clear()
            if missing:
                problems.extend(_unresolved(i, task, missing))
                missing.clear()
            elif params is not task.params:
                task = task.model_copy(update={"params": params})
            tasks.append(task)
        if problems:
            raise to_exception(problems)
        resolved = self.model_copy(update={"tasks": tuple(tasks)})
        resolved._resolved = True
        resolved._secret_slots = secret_slots
        return resolved

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON values, in submitted form (fields left unset stay out).

        `from_dict(spec.to_dict())` gives back an equal spec. For a resolved spec, every `${`
        in params is written `$${`, so parsing and resolving that dict gives the same params.
        """
        data: dict[str, Any] = self.model_dump(mode="json", exclude_unset=True)
        if self._resolved:
            for task in data["tasks"]:
                if "params" in task:
                    params = map_strings(task["params"], escape)
                    slots = self._secret_slots.get(task["id"], ())
                    task["params"] = fill_slots(params, slots, lambda slot: slot.spelled())
        return data


def _unresolved(i: int, task: TaskSpec, missing: set[str]) -> list[Problem]:
    """One problem per placeholder of `task` whose variable is in `missing`."""
    problems: list[Problem] = []
    found: list[tuple[Loc, str]] = []
    find_strings(task.params, ["params"], found)
    for path, text in found:
        loc: Loc = ("tasks", i, *path)
        field = field_path(path)
        for name in placeholder_names(text):
            if name not in missing:
                continue
            problems.append(
                Problem(
                    f"task {task.id!r}: {field}: unresolved variable ${{user.{name}}}"
                    f" (pass --var {name}=... or add it to vars)",
                    loc,
                    task.id,
                    field,
                )
            )
    return problems


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


_ALLOWED_FIELDS: dict[Loc, tuple[str, ...]] = {
    (): tuple(WorkflowSpec.model_fields),
    ("tasks", "*"): tuple(TaskSpec.model_fields),
    ("tasks", "*", "retry"): tuple(RetryPolicy.model_fields),
}
