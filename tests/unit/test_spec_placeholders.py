"""`${user.NAME}` placeholders: syntax checked at parse time, substituted once by `resolve`."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagwire.errors import WorkflowValidationError
from dagwire.spec import WorkflowSpec

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
TEXT = st.text(alphabet=st.sampled_from("ab${}.$ user_x\n"), max_size=30) | st.text(max_size=20)
BEFORE_PLACEHOLDER = TEXT.filter(lambda text: not text.endswith("$"))
"""Literal text that can precede a placeholder: `$` + `${user.x}` would spell the `$${` escape."""


def one_task(params: Any, variables: dict[str, Any] | None = None) -> WorkflowSpec:
    data: dict[str, Any] = {
        "name": "w",
        "tasks": [{"id": "greet", "agent": "echo", "params": params}],
    }
    if variables is not None:
        data["vars"] = variables
    return WorkflowSpec.from_dict(data)


def resolved_params(
    params: Any, variables: dict[str, Any] | None = None, user_vars: dict[str, Any] | None = None
) -> Any:
    return one_task(params, variables).resolve(user_vars).tasks[0].params


def parse_error(params: Any) -> WorkflowValidationError:
    with pytest.raises(WorkflowValidationError) as caught:
        one_task(params)
    return caught.value


# --- parsing ---------------------------------------------------------------------------------


def test_parse_keeps_placeholders_as_written() -> None:
    spec = one_task({"text": "hello ${user.topic}", "raw": "$${user.x}"})

    assert spec.tasks[0].params == {"text": "hello ${user.topic}", "raw": "$${user.x}"}
    assert spec.is_resolved is False


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("${usr.topic}", "'${usr.topic}'"),
        ("${user.}", "'${user.}'"),
        ("${env.HOME}", "'${env.HOME}'"),
        ("${user.1x}", "'${user.1x}'"),
        ("${ user.x }", "'${ user.x }'"),
        ("${}", "'${}'"),
        ("${user.a-b}", "'${user.a-b}'"),
    ],
)
def test_parse_invalid_placeholder_is_named(text: str, shown: str) -> None:
    error = parse_error({"text": f"say {text}!"})

    assert str(error) == (
        f"task 'greet': field 'params.text': invalid placeholder {shown}"
        " (only ${user.NAME} and ${secret.NAME} are substituted; write $${ for a literal ${)"
    )
    assert (error.node_id, error.field) == ("greet", "params.text")


def test_parse_unterminated_placeholder_is_named() -> None:
    assert str(parse_error({"text": "hi ${user.x"})) == (
        "task 'greet': field 'params.text': unterminated placeholder '${user.x'"
        " (missing '}'; only ${user.NAME} and ${secret.NAME} are substituted;"
        " write $${ for a literal ${)"
    )


def test_parse_checks_nested_strings_with_their_path() -> None:
    error = parse_error({"a": [{"b": "ok"}, {"c": ["${oops}"]}]})

    assert error.field == "params.a[1].c[0]"
    assert str(error).startswith("task 'greet': field 'params.a[1].c[0]': invalid placeholder")


def test_parse_checks_a_top_level_string_param() -> None:
    assert parse_error("${nope}").field == "params"


def test_parse_leaves_dict_keys_alone() -> None:
    assert one_task({"${usr.key}": 1}).tasks[0].params == {"${usr.key}": 1}


def test_parse_ignores_placeholder_syntax_outside_params() -> None:
    spec = WorkflowSpec.from_dict(
        {"name": "${usr.x}", "vars": {"v": "${env.HOME}"}, "tasks": [{"id": "a", "agent": "e"}]}
    )

    assert spec.name == "${usr.x}"


def test_parse_accepts_dollars_not_followed_by_brace() -> None:
    assert one_task("costs $5, $$ and {braces}").tasks[0].params == "costs $5, $$ and {braces}"


# --- resolving -------------------------------------------------------------------------------


def test_resolve_uses_vars_by_default() -> None:
    assert resolved_params({"text": "hello ${user.topic}"}, {"topic": "gRPC"}) == {
        "text": "hello gRPC"
    }


def test_resolve_prefers_user_vars_over_vars() -> None:
    params = resolved_params("${user.topic}", {"topic": "gRPC"}, {"topic": "DAGs"})

    assert params == "DAGs"


def test_resolve_substitutes_in_place_several_times() -> None:
    params = resolved_params("${user.a}-${user.b}-${user.a}", user_vars={"a": "1", "b": "2"})

    assert params == "1-2-1"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3"),
        (1.5, "1.5"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        (["a", 1], '["a",1]'),
        ({"k": [1, 2]}, '{"k":[1,2]}'),
        ("plain", "plain"),
        ("ünï", "ünï"),
    ],
)
def test_resolve_renders_vars_in_json_spelling(value: object, text: str) -> None:
    assert resolved_params("v=${user.v}", {"v": value}) == f"v={text}"


def test_resolve_renders_non_string_user_vars_leniently() -> None:
    assert resolved_params("${user.n}/${user.f}", user_vars={"n": 8, "f": False}) == "8/false"


def test_resolve_walks_nested_params_and_keeps_other_values() -> None:
    params = {"list": ["${user.x}", 2, None, {"deep": "<${user.x}>"}], "flag": True, "n": 1.5}

    assert resolved_params(params, {"x": "X"}) == {
        "list": ["X", 2, None, {"deep": "<X>"}],
        "flag": True,
        "n": 1.5,
    }


def test_resolve_turns_escape_into_literal() -> None:
    assert (
        resolved_params("$${user.x} and $${env.HOME}", {"x": "no"}) == "${user.x} and ${env.HOME}"
    )


def test_resolve_inserts_values_literally_without_expanding_again() -> None:
    params = resolved_params("[${user.a}]", user_vars={"a": "${user.b} $${", "b": "B"})

    assert params == "[${user.b} $${]"


def test_resolve_does_not_expand_placeholders_in_vars() -> None:
    assert resolved_params("${user.a}", {"a": "${user.b}", "b": "B"}) == "${user.b}"


def test_resolve_ignores_unused_user_vars() -> None:
    assert resolved_params("x", user_vars={"unused": "1"}) == "x"


def test_resolve_missing_variable_names_it_and_the_task() -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        one_task({"text": "hello ${user.topic}"}).resolve()

    assert str(caught.value) == (
        "task 'greet': params.text: unresolved variable ${user.topic}"
        " (pass --var topic=... or add it to vars)"
    )
    assert (caught.value.node_id, caught.value.field) == ("greet", "params.text")


def test_resolve_lists_every_missing_variable() -> None:
    spec = WorkflowSpec.from_dict(
        {
            "name": "w",
            "vars": {"known": 1},
            "tasks": [
                {"id": "a", "agent": "e", "params": ["${user.known} ${user.x}", "${user.y}"]},
                {"id": "b", "agent": "e", "params": {"k": "${user.x}"}},
            ],
        }
    )

    with pytest.raises(WorkflowValidationError) as caught:
        spec.resolve()

    assert str(caught.value).splitlines() == [
        "task 'a': params[0]: unresolved variable ${user.x} (pass --var x=... or add it to vars)",
        "task 'a': params[1]: unresolved variable ${user.y} (pass --var y=... or add it to vars)",
        "task 'b': params.k: unresolved variable ${user.x} (pass --var x=... or add it to vars)",
    ]


def test_resolve_leaves_the_parsed_spec_unchanged() -> None:
    spec = one_task({"text": "${user.v}"}, {"v": 1})

    spec.resolve()

    assert spec.tasks[0].params == {"text": "${user.v}"}
    assert spec.is_resolved is False


def test_resolve_marks_copy_resolved_and_keeps_everything_else() -> None:
    spec = WorkflowSpec.from_dict(
        {
            "name": "w",
            "max_parallel": 2,
            "tasks": [
                {"id": "a", "agent": "e", "params": "${user.v}", "timeout": 3},
                {"id": "b", "agent": "f", "depends_on": ["a"], "retry": {"max_attempts": 4}},
            ],
        }
    )

    resolved = spec.resolve({"v": "V"})

    assert resolved.is_resolved is True
    assert resolved.task("a").params == "V"
    assert resolved.task("a").timeout == 3.0
    assert resolved.task("b") == spec.task("b")
    assert (resolved.name, resolved.max_parallel) == ("w", 2)


def test_resolve_of_resolved_spec_returns_it_unchanged() -> None:
    resolved = one_task("${user.a}").resolve({"a": "${user.b}"})

    again = resolved.resolve({"b": "must not appear"})

    assert again is resolved
    assert again.tasks[0].params == "${user.b}"


def test_to_dict_of_resolved_spec_escapes_literal_dollar_braces() -> None:
    resolved = one_task({"t": "${user.a}"}).resolve({"a": "${user.b}"})

    assert resolved.to_dict()["tasks"][0]["params"] == {"t": "$${user.b}"}


def test_resolved_spec_round_trips_through_to_dict() -> None:
    resolved = one_task({"t": "x ${user.a} $${user.c}"}).resolve({"a": "${user.b}"})

    again = WorkflowSpec.from_dict(resolved.to_dict()).resolve()

    assert again.tasks[0].params == resolved.tasks[0].params == {"t": "x ${user.b} ${user.c}"}


# --- properties ------------------------------------------------------------------------------


def escape(text: str) -> str:
    return text.replace("${", "$${")


@given(TEXT)
def test_property_escaped_text_parses_and_resolves_to_itself(text: str) -> None:
    assert resolved_params({"t": escape(text)}) == {"t": text}


@given(TEXT, NAMES)
def test_property_value_is_inserted_verbatim(value: str, name: str) -> None:
    assert resolved_params(f"<${{user.{name}}}>", user_vars={name: value}) == f"<{value}>"


@given(st.lists(st.tuples(BEFORE_PLACEHOLDER, NAMES)), TEXT)
def test_property_resolve_concatenates_literals_and_values(
    pieces: list[tuple[str, str]], tail: str
) -> None:
    values = {name: f"[{name}:${{user.{name}}}]" for _, name in pieces}
    template = "".join(f"{escape(text)}${{user.{name}}}" for text, name in pieces) + escape(tail)
    expected = "".join(text + values[name] for text, name in pieces) + tail

    assert resolved_params(template, user_vars=values) == expected


@given(BEFORE_PLACEHOLDER, TEXT)
def test_property_resolving_twice_changes_nothing(text: str, value: str) -> None:
    once = one_task(escape(text) + "${user.v}").resolve({"v": value})

    assert once.resolve({"v": "other"}).tasks[0].params == text + value


@given(TEXT, TEXT)
def test_property_resolved_spec_survives_to_dict_round_trip(text: str, value: str) -> None:
    resolved = one_task([escape(text), "${user.v}"]).resolve({"v": value})

    reparsed = WorkflowSpec.from_dict(resolved.to_dict()).resolve()

    assert reparsed.tasks[0].params == resolved.tasks[0].params == [text, value]


@given(TEXT)
def test_property_any_text_parses_or_fails_with_validation_error(text: str) -> None:
    try:
        spec = one_task(text)
    except WorkflowValidationError as error:
        failed_field = error.field
    else:
        names = {n: "x" for n in _names_in(text)}
        assert isinstance(spec.resolve(names).tasks[0].params, str)
        return
    assert failed_field == "params"


def _names_in(text: str) -> list[str]:
    """Every `${user.NAME}` name in `text` (over-approximation is fine: unused vars are ignored)."""
    names: list[str] = []
    for piece in text.split("${user.")[1:]:
        names.append(piece.split("}", 1)[0])
    return names
