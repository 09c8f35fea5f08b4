"""Workflow spec v1: structure, defaults, validation messages, dumping and the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dagwire.errors import WorkflowValidationError
from dagwire.spec import RetryPolicy, TaskSpec, WorkflowSpec


def spec_dict(**overrides: Any) -> dict[str, Any]:
    """A valid two-task spec as a dict, with top-level keys replaced by `overrides`."""
    data: dict[str, Any] = {
        "name": "hello",
        "vars": {"topic": "gRPC"},
        "tasks": [
            {"id": "greet", "agent": "echo", "params": {"text": "hello ${user.topic}"}},
            {"id": "shout", "agent": "upper", "depends_on": ["greet"]},
        ],
    }
    data.update(overrides)
    return data


def with_task(index: int, **fields: Any) -> dict[str, Any]:
    """`spec_dict()` with fields of `tasks[index]` replaced."""
    data = spec_dict()
    data["tasks"][index].update(fields)
    return data


def error_of(data: object) -> WorkflowValidationError:
    with pytest.raises(WorkflowValidationError) as caught:
        WorkflowSpec.from_dict(data)  # type: ignore[arg-type]
    return caught.value


# --- accepted specs and defaults -------------------------------------------------------------


def test_from_dict_defaults_match_design() -> None:
    spec = WorkflowSpec.from_dict({"name": "x", "tasks": [{"id": "a", "agent": "echo"}]})

    assert spec.max_parallel == 8
    assert spec.fail_fast is False
    assert spec.vars == {}
    task = spec.tasks[0]
    assert task.params is None
    assert task.depends_on == ()
    assert task.timeout is None
    assert task.retry == RetryPolicy(
        max_attempts=1, initial_backoff=0.2, multiplier=2.0, max_backoff=10.0
    )


def test_from_dict_keeps_tasks_in_spec_order_as_tuple() -> None:
    spec = WorkflowSpec.from_dict(spec_dict())

    assert isinstance(spec.tasks, tuple)
    assert [t.id for t in spec.tasks] == ["greet", "shout"]
    assert spec.tasks[1].depends_on == ("greet",)


def test_from_dict_retry_fields_are_each_optional() -> None:
    spec = WorkflowSpec.from_dict(with_task(1, retry={"max_attempts": 3}))

    assert spec.task("shout").retry == RetryPolicy(max_attempts=3)


def test_from_dict_accepts_int_where_float_expected() -> None:
    spec = WorkflowSpec.from_dict(with_task(1, timeout=30, retry={"max_backoff": 5}))

    assert spec.task("shout").timeout == 30.0
    assert spec.task("shout").retry.max_backoff == 5.0


def test_from_dict_accepts_fractional_timeout() -> None:
    assert WorkflowSpec.from_dict(with_task(1, timeout=0.3)).task("shout").timeout == 0.3


def test_from_dict_params_keep_json_types() -> None:
    params = {"n": 3, "f": 1.5, "ok": True, "none": None, "list": [1, "a", {"b": 2.0}]}
    spec = WorkflowSpec.from_dict(with_task(0, params=params))

    got = spec.task("greet").params
    assert got == params
    assert type(got["n"]) is int
    assert type(got["list"][2]["b"]) is float


def test_from_dict_copies_params_so_caller_mutation_does_not_leak() -> None:
    data = with_task(0, params={"items": [1, 2]})
    spec = WorkflowSpec.from_dict(data)

    data["tasks"][0]["params"]["items"].append(3)

    assert spec.task("greet").params == {"items": [1, 2]}


def test_from_dict_accepts_tuples_as_lists() -> None:
    spec = WorkflowSpec.from_dict(with_task(1, depends_on=("greet",), params=(1, 2)))

    assert spec.task("shout").depends_on == ("greet",)
    assert spec.task("shout").params == [1, 2]


def test_from_dict_accepts_scalar_params() -> None:
    assert WorkflowSpec.from_dict(with_task(0, params="just text")).tasks[0].params == "just text"


def test_spec_is_frozen() -> None:
    spec = WorkflowSpec.from_dict(spec_dict())

    with pytest.raises(ValueError, match="frozen"):
        spec.name = "other"


def test_constructor_accepts_task_models() -> None:
    spec = WorkflowSpec(name="x", tasks=(TaskSpec(id="a", agent="echo"),))

    assert spec.task("a").agent == "echo"


def test_task_lookup_returns_task_by_id() -> None:
    spec = WorkflowSpec.from_dict(spec_dict())

    assert spec.task("shout").agent == "upper"


def test_task_lookup_unknown_id_raises_key_error() -> None:
    with pytest.raises(KeyError):
        WorkflowSpec.from_dict(spec_dict()).task("nope")


# --- the one error class ---------------------------------------------------------------------


def test_validation_error_is_value_error() -> None:
    assert isinstance(error_of(spec_dict(tasks=[])), ValueError)


def test_from_dict_non_mapping_top_level_is_rejected() -> None:
    error = error_of(["name", "tasks"])

    assert str(error) == "a workflow spec must be a mapping with 'name' and 'tasks' (got a list)"


def test_from_dict_none_is_rejected() -> None:
    assert "(got null)" in str(error_of(None))


def test_from_dict_empty_task_list_is_rejected() -> None:
    error = error_of(spec_dict(tasks=[]))

    assert str(error) == "field 'tasks': a workflow needs at least one task"
    assert error.field == "tasks"


def test_from_dict_missing_name_is_named() -> None:
    data = spec_dict()
    del data["name"]

    assert str(error_of(data)) == "missing required field 'name'"


def test_from_dict_missing_agent_names_task() -> None:
    data = spec_dict()
    del data["tasks"][1]["agent"]
    error = error_of(data)

    assert str(error) == "task 'shout': missing required field 'agent'"
    assert (error.node_id, error.field) == ("shout", "agent")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"max_parallel": "8"},
            "field 'max_parallel': Input should be a valid integer (got \"8\")",
        ),
        ({"max_parallel": 8.0}, "field 'max_parallel': Input should be a valid integer (got 8.0)"),
        (
            {"max_parallel": True},
            "field 'max_parallel': Input should be a valid integer (got true)",
        ),
        ({"fail_fast": 1}, "field 'fail_fast': Input should be a valid boolean (got 1)"),
        (
            {"fail_fast": "false"},
            "field 'fail_fast': Input should be a valid boolean (got \"false\")",
        ),
        (
            {"max_parallel": 0},
            "field 'max_parallel': Input should be greater than or equal to 1",
        ),
        ({"name": ""}, "field 'name': must not be empty"),
        ({"name": 5}, "field 'name': Input should be a valid string (got 5)"),
        ({"vars": []}, "field 'vars': must be a mapping (got [])"),
        ({"tasks": {"a": 1}}, "field 'tasks': Input should be a list (got {\"a\": 1})"),
    ],
)
def test_from_dict_bad_top_level_field_is_named(overrides: dict[str, Any], message: str) -> None:
    assert str(error_of(spec_dict(**overrides))) == message


@pytest.mark.parametrize(
    ("fields", "message", "field"),
    [
        (
            {"retry": {"max_attempts": 0}},
            "task 'shout': field 'retry.max_attempts': Input should be greater than or equal to 1",
            "retry.max_attempts",
        ),
        (
            {"retry": {"initial_backoff": -0.1}},
            "task 'shout': field 'retry.initial_backoff': "
            "Input should be greater than or equal to 0",
            "retry.initial_backoff",
        ),
        (
            {"retry": {"max_backoff": -1}},
            "task 'shout': field 'retry.max_backoff': Input should be greater than or equal to 0",
            "retry.max_backoff",
        ),
        (
            {"retry": {"multiplier": 0.5}},
            "task 'shout': field 'retry.multiplier': Input should be greater than or equal to 1",
            "retry.multiplier",
        ),
        (
            {"retry": {"max_attempts": "3"}},
            "task 'shout': field 'retry.max_attempts': Input should be a valid integer (got \"3\")",
            "retry.max_attempts",
        ),
        (
            {"retry": None},
            "task 'shout': field 'retry': must be a mapping (got null)",
            "retry",
        ),
        (
            {"timeout": 0},
            "task 'shout': field 'timeout': Input should be greater than 0",
            "timeout",
        ),
        (
            {"timeout": -5},
            "task 'shout': field 'timeout': Input should be greater than 0",
            "timeout",
        ),
        (
            {"timeout": "30"},
            "task 'shout': field 'timeout': Input should be a valid number (got \"30\")",
            "timeout",
        ),
        ({"agent": ""}, "task 'shout': field 'agent': must not be empty", "agent"),
        (
            {"agent": 7},
            "task 'shout': field 'agent': Input should be a valid string (got 7)",
            "agent",
        ),
        (
            {"depends_on": "greet"},
            "task 'shout': field 'depends_on': Input should be a list (got \"greet\")",
            "depends_on",
        ),
        (
            {"depends_on": [1]},
            "task 'shout': field 'depends_on[0]': Input should be a valid string (got 1)",
            "depends_on[0]",
        ),
    ],
)
def test_from_dict_bad_task_field_names_task_and_field(
    fields: dict[str, Any], message: str, field: str
) -> None:
    error = error_of(with_task(1, **fields))

    assert str(error) == message
    assert (error.node_id, error.field, error.line) == ("shout", field, None)


def test_from_dict_invalid_id_names_task_by_position() -> None:
    error = error_of(with_task(1, id="a b"))

    assert str(error) == (
        "tasks[1]: field 'id': 'a b' is not a valid task id (use letters, digits, '_' and '-')"
    )
    assert error.node_id is None


def test_from_dict_non_mapping_task_is_rejected() -> None:
    assert str(error_of(spec_dict(tasks=["greet"]))) == (
        'tasks[0]: each task must be a mapping (got "greet")'
    )


def test_from_dict_unknown_task_field_suggests_the_right_one() -> None:
    error = error_of(with_task(1, dependson=["greet"]))

    assert str(error) == "unknown field 'dependson' in task 'shout' (did you mean 'depends_on'?)"
    assert (error.node_id, error.field) == ("shout", "dependson")


def test_from_dict_unknown_retry_field_suggests_with_full_path() -> None:
    assert str(error_of(with_task(1, retry={"max_attempt": 2}))) == (
        "unknown field 'retry.max_attempt' in task 'shout' (did you mean 'retry.max_attempts'?)"
    )


def test_from_dict_unknown_top_level_field_is_rejected() -> None:
    assert str(error_of(spec_dict(failfast=True))) == (
        "unknown field 'failfast' (did you mean 'fail_fast'?)"
    )


def test_from_dict_unknown_field_without_close_match_has_no_hint() -> None:
    assert str(error_of(spec_dict(zebra=1))) == "unknown field 'zebra'"


def test_from_dict_misspelled_required_field_lists_typo_first() -> None:
    data = spec_dict()
    data["tasks"][1]["agnet"] = data["tasks"][1].pop("agent")

    assert str(error_of(data)).splitlines() == [
        "unknown field 'agnet' in task 'shout' (did you mean 'agent'?)",
        "task 'shout': missing required field 'agent'",
    ]


def test_from_dict_duplicate_id_names_both_positions() -> None:
    data = spec_dict()
    data["tasks"].append({"id": "greet", "agent": "echo"})
    error = error_of(data)

    assert str(error) == "duplicate task id 'greet' (tasks[0] and tasks[2])"
    assert (error.node_id, error.field) == ("greet", "id")


def test_from_dict_unknown_dependency_is_named() -> None:
    error = error_of(with_task(1, depends_on=["zzz"]))

    assert str(error) == "task 'shout': depends_on names unknown task 'zzz'"
    assert (error.node_id, error.field) == ("shout", "depends_on")


def test_from_dict_unknown_dependency_suggests_close_id() -> None:
    assert str(error_of(with_task(1, depends_on=["greeet"]))) == (
        "task 'shout': depends_on names unknown task 'greeet' (did you mean 'greet'?)"
    )


def test_from_dict_self_dependency_is_rejected() -> None:
    assert str(error_of(with_task(1, depends_on=["shout"]))) == (
        "task 'shout': depends_on names the task itself"
    )


def test_from_dict_duplicate_dependency_is_rejected() -> None:
    assert str(error_of(with_task(1, depends_on=["greet", "greet"]))) == (
        "task 'shout': depends_on lists 'greet' twice"
    )


def test_from_dict_bad_var_name_is_rejected() -> None:
    error = error_of(spec_dict(vars={"my-var": 1}))

    assert str(error) == (
        "field 'vars': 'my-var' is not a valid variable name"
        " (use letters, digits and '_', not starting with a digit)"
    )
    assert error.field == "vars"


def test_from_dict_lists_every_problem_one_per_line() -> None:
    data = spec_dict()
    data["tasks"][0]["depends_on"] = ["nope"]
    data["tasks"][1]["depends_on"] = ["shout"]

    assert str(error_of(data)).splitlines() == [
        "task 'greet': depends_on names unknown task 'nope'",
        "task 'shout': depends_on names the task itself",
    ]


def test_from_dict_caps_the_listed_problems() -> None:
    tasks = [{"id": f"t{i}", "agent": "a", "depends_on": ["missing"]} for i in range(30)]
    lines = str(error_of({"name": "x", "tasks": tasks})).splitlines()

    assert len(lines) == 21
    assert lines[-1] == "... and 10 more problems"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (float("nan"), "task 'greet': field 'params': nan is not a JSON number"),
        ({"x": float("inf")}, "task 'greet': field 'params.x': inf is not a JSON number"),
        ({1: "a"}, "task 'greet': field 'params': mapping key 1 is not a string; quote it"),
        (
            {"when": b"raw"},
            "task 'greet': field 'params.when': bytes value b'raw' is not a JSON value"
            " (use a string, number, boolean, null, list or mapping)",
        ),
        (
            {"set": {1}},
            "task 'greet': field 'params.set': set value {1} is not a JSON value"
            " (use a string, number, boolean, null, list or mapping)",
        ),
    ],
)
def test_from_dict_non_json_params_are_rejected(params: object, message: str) -> None:
    assert str(error_of(with_task(0, params=params))) == message


def test_from_dict_deep_nesting_is_rejected_not_crashing() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]

    message = str(error_of(with_task(0, params=deep)))

    assert message.startswith("task 'greet': field 'params")
    assert message.endswith("values are nested more than 100 levels deep")


def test_direct_construction_runs_cross_checks() -> None:
    with pytest.raises(ValueError, match="depends_on names unknown task 'zzz'"):
        WorkflowSpec(name="x", tasks=(TaskSpec(id="a", agent="e", depends_on=("zzz",)),))


# --- JSON and files --------------------------------------------------------------------------


def test_from_json_parses_spec() -> None:
    spec = WorkflowSpec.from_json(json.dumps(spec_dict()))

    assert spec == WorkflowSpec.from_dict(spec_dict())


def test_from_json_error_carries_line() -> None:
    text = '{\n  "name": "x",\n  "tasks": [\n    {"id": "a", "agent": "e", "timeout": 0}\n  ]\n}'

    with pytest.raises(WorkflowValidationError) as caught:
        WorkflowSpec.from_json(text)

    assert str(caught.value) == "line 4: task 'a': field 'timeout': Input should be greater than 0"
    assert caught.value.line == 4


def test_from_json_malformed_names_line() -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        WorkflowSpec.from_json('{\n  "name": "x",\n  "tasks": [\n}')

    assert str(caught.value) == "line 4: invalid JSON: Expecting value (column 1)"
    assert caught.value.line == 4


def test_from_json_duplicate_key_is_rejected_with_line() -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        WorkflowSpec.from_json('{"name": "x",\n "name": "y", "tasks": []}')

    assert str(caught.value) == "line 2: duplicate key 'name'"


def test_from_json_nan_is_rejected() -> None:
    with pytest.raises(WorkflowValidationError, match="NaN is not a JSON number"):
        WorkflowSpec.from_json('{"name": "x", "tasks": [{"id": "a", "agent": "e", "params": NaN}]}')


def test_from_file_picks_json_by_extension(tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(spec_dict()), encoding="utf-8")

    assert WorkflowSpec.from_file(path) == WorkflowSpec.from_dict(spec_dict())


def test_from_file_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text("name: x\ntasks:\n  - id: a\n    agent: echo\n", encoding="utf-8")

    assert WorkflowSpec.from_file(str(path)).task("a").agent == "echo"


def test_from_file_yaml_error_carries_line(tmp_path: Path) -> None:
    path = tmp_path / "wf.yml"
    path.write_text("name: x\ntasks:\n  - id: a\n    agent: echo\n    timeout: 0\n")

    with pytest.raises(WorkflowValidationError, match=r"^line 5: task 'a': field 'timeout'"):
        WorkflowSpec.from_file(path)


def test_from_file_non_utf8_is_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_bytes(b"name: \xff\n")

    with pytest.raises(WorkflowValidationError, match="not UTF-8 text"):
        WorkflowSpec.from_file(path)


def test_from_file_missing_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        WorkflowSpec.from_file(tmp_path / "absent.yaml")


# --- dumping and schema ----------------------------------------------------------------------


def test_to_dict_returns_submitted_shape() -> None:
    data = spec_dict()

    assert WorkflowSpec.from_dict(data).to_dict() == data


def test_to_dict_round_trips_through_from_dict() -> None:
    spec = WorkflowSpec.from_dict(with_task(1, retry={"max_attempts": 3}, timeout=2.5))

    assert WorkflowSpec.from_dict(spec.to_dict()) == spec


def test_to_dict_is_json_serialisable() -> None:
    spec = WorkflowSpec.from_dict(with_task(1, retry={"max_attempts": 3}))

    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()


def test_json_schema_describes_spec_fields() -> None:
    schema = WorkflowSpec.json_schema()

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["name", "tasks"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["tasks"]["minItems"] == 1
    assert schema["properties"]["max_parallel"] == {
        "default": 8,
        "description": "Most tasks running at once.",
        "minimum": 1,
        "title": "Max Parallel",
        "type": "integer",
    }
    task = schema["$defs"]["TaskSpec"]
    assert task["required"] == ["id", "agent"]
    assert task["properties"]["id"]["pattern"] == "^[A-Za-z0-9_-]+$"
    json.dumps(schema)  # serialisable as is
