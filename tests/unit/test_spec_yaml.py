"""Workflow specs in YAML: line numbers, duplicate keys, malformed text, YAML-only values."""

from __future__ import annotations

import textwrap

import pytest

from dagwire.errors import WorkflowValidationError
from dagwire.spec import WorkflowSpec

HELLO = textwrap.dedent(
    """\
    name: hello                 # required
    vars:                       # optional: defaults for ${user.*}
      topic: gRPC
    max_parallel: 8
    fail_fast: false
    tasks:
      - id: greet
        agent: echo
        params:
          text: "hello ${user.topic}"
      - id: shout
        agent: upper
        depends_on: [greet]
        retry: {max_attempts: 3, initial_backoff: 0.2, multiplier: 2.0, max_backoff: 10}
        timeout: 30
    """
)


def yaml_error(text: str) -> WorkflowValidationError:
    with pytest.raises(WorkflowValidationError) as caught:
        WorkflowSpec.from_yaml(text)
    return caught.value


def test_from_yaml_parses_design_example() -> None:
    spec = WorkflowSpec.from_yaml(HELLO)

    assert spec.name == "hello"
    assert spec.vars == {"topic": "gRPC"}
    assert spec.task("greet").params == {"text": "hello ${user.topic}"}
    shout = spec.task("shout")
    assert shout.depends_on == ("greet",)
    assert (shout.retry.max_attempts, shout.retry.max_backoff, shout.timeout) == (3, 10.0, 30.0)


def test_from_yaml_equals_same_spec_from_dict() -> None:
    as_dict = WorkflowSpec.from_yaml(HELLO).to_dict()

    assert WorkflowSpec.from_dict(as_dict) == WorkflowSpec.from_yaml(HELLO)


def test_from_yaml_values_are_plain_python_types() -> None:
    spec = WorkflowSpec.from_yaml(
        textwrap.dedent(
            """\
            name: x
            tasks:
              - id: a
                agent: e
                params:
                  f: 1.5
                  i: 0x10
                  b: true
                  s: |
                    block
                  l: [1, 2]
            """
        )
    )
    params = spec.task("a").params

    assert params == {"f": 1.5, "i": 16, "b": True, "s": "block\n", "l": [1, 2]}
    assert [type(v) for v in params.values()] == [float, int, bool, str, list]
    assert type(params) is dict


def test_from_yaml_anchored_boolean_stays_boolean() -> None:
    spec = WorkflowSpec.from_yaml(
        "name: x\nfail_fast: &yes true\ntasks:\n  - id: a\n    agent: e\n    params: *yes\n"
    )

    assert spec.fail_fast is True
    assert spec.task("a").params is True


def test_from_yaml_yaml12_words_are_strings() -> None:
    spec = WorkflowSpec.from_yaml(
        "name: x\ntasks:\n  - id: a\n    agent: e\n    params: [yes, no, on]\n"
    )

    assert spec.task("a").params == ["yes", "no", "on"]


def test_from_yaml_field_error_carries_line() -> None:
    error = yaml_error(HELLO.replace("timeout: 30", "timeout: -1"))

    assert str(error) == "line 15: task 'shout': field 'timeout': Input should be greater than 0"
    assert (error.line, error.node_id, error.field) == (15, "shout", "timeout")


def test_from_yaml_flow_mapping_error_carries_line() -> None:
    error = yaml_error(HELLO.replace("max_attempts: 3", "max_attempts: 0"))

    assert str(error) == (
        "line 14: task 'shout': field 'retry.max_attempts': "
        "Input should be greater than or equal to 1"
    )


def test_from_yaml_unknown_field_points_at_its_line() -> None:
    error = yaml_error(HELLO.replace("depends_on:", "dependson:"))

    assert str(error) == (
        "line 13: unknown field 'dependson' in task 'shout' (did you mean 'depends_on'?)"
    )


def test_from_yaml_missing_field_points_at_task() -> None:
    error = yaml_error(HELLO.replace("    agent: upper\n", ""))

    assert str(error) == "line 11: task 'shout': missing required field 'agent'"


def test_from_yaml_duplicate_task_id_points_at_second() -> None:
    error = yaml_error(HELLO.replace("id: shout", "id: greet").replace("[greet]", "[]"))

    assert str(error) == "line 11: duplicate task id 'greet' (tasks[0] and tasks[1])"


def test_from_yaml_unknown_dependency_points_at_entry() -> None:
    error = yaml_error(HELLO.replace("[greet]", "\n          - greet\n          - zzz"))

    assert str(error) == "line 15: task 'shout': depends_on names unknown task 'zzz'"


def test_from_yaml_bad_placeholder_points_at_string() -> None:
    error = yaml_error(HELLO.replace("user.topic}", "usr.topic}"))

    assert str(error) == (
        "line 10: task 'greet': field 'params.text': invalid placeholder '${usr.topic}'"
        " (only ${user.NAME} and ${secret.NAME} are substituted; write $${ for a literal ${)"
    )
    assert error.line == 10


def test_from_yaml_duplicate_key_is_rejected_with_line() -> None:
    error = yaml_error(HELLO.replace("timeout: 30", "timeout: 30\n    timeout: 5"))

    assert str(error) == "line 16: duplicate key 'timeout' (in the mapping that starts at line 11)"
    assert error.line == 16


def test_from_yaml_duplicate_top_level_key_is_rejected() -> None:
    assert str(yaml_error(HELLO + "name: again\n")) == (
        "line 16: duplicate key 'name' (in the mapping that starts at line 1)"
    )


def test_from_yaml_malformed_text_names_line() -> None:
    error = yaml_error("name: x\ntasks: [\n  {id: a, agent: b}\n")

    assert str(error) == (
        "line 4: invalid YAML: expected ',' or ']', but got '<stream end>'"
        " (while parsing a flow sequence)"
    )
    assert error.line == 4


def test_from_yaml_bad_indentation_names_line() -> None:
    error = yaml_error("name: x\n tasks: []\n")

    assert str(error) == "line 2: invalid YAML: mapping values are not allowed here"


def test_from_yaml_second_document_is_rejected() -> None:
    error = yaml_error("name: x\n---\nname: y\n")

    assert str(error).startswith("line 2: invalid YAML: but found another document")


def test_from_yaml_control_character_is_rejected_with_line() -> None:
    error = yaml_error("name: x\ntasks: \x07\n")

    assert str(error) == ("line 2: invalid YAML: special characters are not allowed")


def test_from_yaml_empty_document_is_rejected() -> None:
    assert str(yaml_error("# nothing here\n")) == (
        "the spec is empty: it needs at least 'name' and 'tasks'"
    )


def test_from_yaml_non_mapping_document_is_rejected() -> None:
    assert str(yaml_error("- a\n- b\n")) == (
        "a workflow spec must be a mapping with 'name' and 'tasks' (got a list)"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2024-01-01", "YAML timestamp 2024-01-01 is not a JSON value; quote it to pass a string"),
        ("!custom x", "YAML tag !custom is not supported (write a JSON value)"),
        ("!custom {a: 1}", "YAML tag !custom is not supported (write a JSON value)"),
        ("!!binary aGk=", "YAML binary value (!!binary) is not a JSON value; use a string"),
        ("!!set {a}", "YAML set (!!set) is not a JSON value; use a list"),
        (".nan", "nan is not a JSON number"),
        ("-.inf", "-inf is not a JSON number"),
    ],
)
def test_from_yaml_non_json_value_is_rejected(value: str, message: str) -> None:
    error = yaml_error(f"name: x\ntasks:\n  - id: a\n    agent: e\n    params:\n      v: {value}\n")

    assert str(error) == f"line 6: task 'a': field 'params.v': {message}"


def test_from_yaml_quoted_timestamp_is_a_string() -> None:
    spec = WorkflowSpec.from_yaml(
        "name: x\ntasks:\n  - id: a\n    agent: e\n    params: '2024-01-01'\n"
    )

    assert spec.task("a").params == "2024-01-01"


def test_from_yaml_explicit_str_tag_is_a_string() -> None:
    spec = WorkflowSpec.from_yaml(
        "name: x\ntasks:\n  - id: a\n    agent: e\n    params: !!str 12\n"
    )

    assert spec.task("a").params == "12"


def test_from_yaml_non_string_key_is_rejected() -> None:
    error = yaml_error("name: x\ntasks:\n  - id: a\n    agent: e\n    params:\n      1: one\n")

    assert str(error) == "line 5: task 'a': field 'params': mapping key 1 is not a string; quote it"


def test_from_yaml_merge_key_is_expanded() -> None:
    spec = WorkflowSpec.from_yaml(
        textwrap.dedent(
            """\
            name: x
            tasks:
              - &base {id: a, agent: e, retry: {max_attempts: 2}}
              - <<: *base
                id: b
            """
        )
    )

    assert spec.task("b").agent == "e"
    assert spec.task("b").retry.max_attempts == 2


def test_from_yaml_strict_types_apply() -> None:
    error = yaml_error("name: x\nmax_parallel: '8'\nfail_fast: 1\ntasks: [{id: a, agent: e}]\n")

    assert str(error).splitlines() == [
        "line 2: field 'max_parallel': Input should be a valid integer (got \"8\")",
        "line 3: field 'fail_fast': Input should be a valid boolean (got 1)",
    ]


def test_from_yaml_accepts_json_text() -> None:
    spec = WorkflowSpec.from_yaml('{"name": "x", "tasks": [{"id": "a", "agent": "e"}]}')

    assert spec.task("a").agent == "e"
