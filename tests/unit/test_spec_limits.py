"""Spec text limits (docs/limits.md): size and nesting depth are checked before parsing."""

from __future__ import annotations

import json
import time

import pytest

from dagwire.errors import WorkflowValidationError
from dagwire.limits import MAX_SPEC_BYTES, MAX_SPEC_DEPTH
from dagwire.models import WorkflowSpec

HEAD = "name: deep\ntasks:\n  - id: a\n    agent: echo\n    params: "


def error_of(text: str, *, json_text: bool = False) -> WorkflowValidationError:
    parse = WorkflowSpec.from_json if json_text else WorkflowSpec.from_yaml
    with pytest.raises(WorkflowValidationError) as caught:
        parse(text)
    return caught.value


@pytest.mark.parametrize(
    "params",
    [
        "[" * 5000 + "]" * 5000,
        "{a: " * 2500 + "1" + "}" * 2500,
        "\n      " + "- " * 3000 + "1",
    ],
    ids=["flow-lists", "flow-mappings", "block-sequence"],
)
def test_deeply_nested_10kb_yaml_is_rejected_at_once_with_its_line(params: str) -> None:
    text = HEAD + params + "\n"
    assert len(text) < 16_000
    started = time.perf_counter()
    error = error_of(text)
    assert time.perf_counter() - started < 0.5  # seconds before the limit existed
    assert f"more than {MAX_SPEC_DEPTH} levels deep" in str(error)
    assert str(error).startswith("line ")
    assert error.line in (5, 6)


def test_deep_block_indentation_is_rejected_with_its_line() -> None:
    lines = "".join(" " * (6 + 2 * i) + f"k{i}:\n" for i in range(150))
    error = error_of(HEAD.rstrip() + "\n" + lines + " " * 306 + "x: 1\n")
    assert "levels deep" in str(error)
    assert error.line is not None and 5 < error.line < 110


def test_deeply_nested_json_is_rejected_with_a_clear_message() -> None:
    deep = "[" * 5000 + "]" * 5000
    text = '{"name": "deep", "tasks": [{"id": "a", "agent": "echo", "params": ' + deep + "}]}"
    error = error_of(text, json_text=True)
    assert "levels deep" in str(error) and "recursion" not in str(error)


def test_a_spec_larger_than_the_limit_is_rejected_before_parsing() -> None:
    text = HEAD + json.dumps("x" * (MAX_SPEC_BYTES + 1)) + "\n"
    started = time.perf_counter()
    error = error_of(text)
    assert time.perf_counter() - started < 0.5
    assert f"{MAX_SPEC_BYTES:,} bytes" in str(error)
    assert error.field == "spec"


def test_multibyte_text_is_measured_in_utf8_bytes() -> None:
    text = HEAD + '"' + "é" * (MAX_SPEC_BYTES // 2) + '"\n'  # fewer chars than the limit
    assert len(text) < MAX_SPEC_BYTES
    assert "bytes" in str(error_of(text))


def test_brackets_in_strings_comments_and_block_scalars_do_not_count() -> None:
    many = "[" * 300
    text = (
        "name: fine  # " + many + "\n"
        "tasks:\n"
        "  - id: a\n"
        "    agent: echo\n"
        "    params:\n"
        f'      double: "{many}\\" {many}"\n'
        f"      single: '{many}'' {many}'\n"
        f"      plain: a{many}\n"
        f"      flow: ['{many}', \"{{{{\", x]\n"
        "      literal: |\n"
        f"        {many}\n"
        f"          {{{{{{{{ {many}\n"
        "      folded: >-\n"
        f"        {many}\n"
        f'      multi: "{many}\n'
        f'        {many}"\n'
        "      after: [1, [2, [3]]]\n"
    )
    spec = WorkflowSpec.from_yaml(text)
    params = spec.tasks[0].params
    assert params["plain"] == "a" + many
    assert params["literal"].startswith(many)
    assert params["after"] == [1, [2, [3]]]


def test_nesting_just_under_the_limit_parses_and_just_over_names_the_field() -> None:
    # the top-level mapping, the tasks list and the task are 3 levels; params' lists the rest
    inner = MAX_SPEC_DEPTH - 3
    ok = HEAD + "[" * inner + "]" * inner + "\n"
    assert WorkflowSpec.from_yaml(ok).tasks[0].params is not None
    over = HEAD + "[" * (inner + 1) + "]" * (inner + 1) + "\n"
    error = error_of(over)
    assert "levels deep" in str(error)
    assert "line 5" in str(error)
