"""Fuzzing the spec boundary: random YAML, JSON and dict specs through the orchestrator's parser.

The entry points are the ones a StartRun goes through (`parse_spec` of the orchestrator service,
then `prepare_run`), and `WorkflowSpec.from_dict` for the SDK. Property: each returns a spec or
raises `WorkflowValidationError`, never another exception; the message is non-empty, and an
error about a field names that field (docs/security.md, "Fuzzing"). The sample in `make test`
is small and derandomized; `make fuzz` runs `DAGWIRE_FUZZ_EXAMPLES` examples with a random seed.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from dagwire.errors import WorkflowValidationError
from dagwire.limits import MAX_SPEC_DEPTH
from dagwire.runtime.orchestrator import prepare_run
from dagwire.spec import WorkflowSpec
from dagwire_services.orchestrator.servicer import parse_spec

_LONG = "DAGWIRE_FUZZ_EXAMPLES" in os.environ
_EXAMPLES = int(os.environ.get("DAGWIRE_FUZZ_EXAMPLES", "150"))
_SEED = int(os.environ.get("DAGWIRE_FUZZ_SEED") or (random.randrange(2**32) if _LONG else 0))
_REPLAY = f"seed {_SEED}: replay with make fuzz SEED={_SEED} (and the same EXAMPLES)"


def _fuzz(test: Callable[..., None]) -> Callable[..., None]:
    """The fixed seed (or the long run's) and the example count, for every property below."""
    return seed(_SEED)(
        settings(
            max_examples=_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            print_blob=True,
        )(test)
    )


_ODD_TEXT = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\x07\x1b[31m", "\u202e", "é", "日本", "\U0001f600", "\ud800"[:0]]
)
_TEXT = st.one_of(
    st.text(max_size=12),
    _ODD_TEXT,
    st.text(alphabet="ab-_.${}", max_size=12),
    st.integers(min_value=1, max_value=4).map(lambda n: "x" * (1000 * n)),
)
_PLACEHOLDER = st.sampled_from(
    ["${user.topic}", "${user.}", "${user", "${other.x}", "$${user.x}", "${user.9x}", "${}", "$"]
)
_SCALAR: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _TEXT,
    _PLACEHOLDER,
)
_VALUE: st.SearchStrategy[Any] = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_IDS = st.one_of(st.sampled_from(["a", "b", "c", "d"]), _TEXT)
_TASK_KEYS = ["id", "agent", "params", "depends_on", "retry", "timeout"]
_RETRY_KEYS = ["max_attempts", "backoff", "multiplier", "max_backoff"]


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@st.composite
def _tasks(draw: st.DrawFn) -> Any:
    """A task mapping: mostly the right keys, some with wrong types or unknown keys."""
    task: dict[str, Any] = {}
    for key in _TASK_KEYS:
        if draw(st.integers(0, 9)) == 0:
            continue  # a missing field
        if key == "id":
            task[key] = draw(st.one_of(_IDS, _SCALAR))
        elif key == "agent":
            task[key] = draw(st.one_of(st.sampled_from(["echo", "upper"]), _SCALAR))
        elif key == "depends_on":
            task[key] = draw(st.one_of(st.lists(st.one_of(_IDS, _SCALAR), max_size=4), _SCALAR))
        elif key == "retry":
            task[key] = draw(
                st.one_of(
                    st.dictionaries(
                        st.one_of(st.sampled_from(_RETRY_KEYS), st.text(max_size=5)),
                        _SCALAR,
                        max_size=4,
                    ),
                    _SCALAR,
                )
            )
        elif key == "timeout":
            task[key] = draw(_SCALAR)
        else:
            task[key] = draw(
                st.one_of(_VALUE, st.integers(90, MAX_SPEC_DEPTH + 5).map(_nested), _PLACEHOLDER)
            )
    if draw(st.booleans()):
        task[draw(st.text(max_size=8))] = draw(_SCALAR)  # an unknown key (or a known one again)
    return task if draw(st.integers(0, 19)) else draw(_SCALAR)


@st.composite
def spec_dicts(draw: st.DrawFn) -> Any:
    """A workflow spec as a dict, valid or not: missing, unknown and mistyped fields, cycles."""
    spec: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        spec["name"] = draw(st.one_of(st.just("fuzz"), _SCALAR))
    if draw(st.booleans()):
        spec["vars"] = draw(
            st.one_of(st.dictionaries(st.one_of(st.just("topic"), _TEXT), _VALUE), _SCALAR)
        )
    if draw(st.booleans()):
        spec["max_parallel"] = draw(_SCALAR)
    if draw(st.booleans()):
        spec["fail_fast"] = draw(_SCALAR)
    if draw(st.integers(0, 9)):
        spec["tasks"] = draw(st.one_of(st.lists(_tasks(), max_size=6), _SCALAR))
    if draw(st.integers(0, 4)) == 0:
        spec[draw(st.text(max_size=8))] = draw(_VALUE)
    return spec if draw(st.integers(0, 29)) else draw(_VALUE)


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec shape with a random DAG (or a cycle, or a duplicate id, when drawn)."""
    n = draw(st.integers(1, 6))
    ids = [f"t{i}" for i in range(n)]
    tasks = []
    for i, task_id in enumerate(ids):
        pool = ids if draw(st.integers(0, 5)) == 0 else ids[:i]  # rarely: any edge, cycles too
        deps = draw(st.lists(st.sampled_from(pool), unique=True, max_size=3)) if pool else []
        params = draw(st.one_of(st.none(), _PLACEHOLDER, _VALUE))
        tasks.append({"id": task_id, "agent": "echo", "depends_on": deps, "params": params})
    if draw(st.integers(0, 5)) == 0:
        tasks.append(dict(tasks[0]))  # a duplicate id
    return {"name": "fuzz", "vars": {"topic": "t"}, "tasks": tasks}


def _dump_yaml(data: Any) -> str:
    out = io.StringIO()
    YAML(typ="safe", pure=True).dump(data, out)
    return out.getvalue()


def _texts(data: Any, style: str) -> str:
    if style == "json":
        return json.dumps(data, ensure_ascii=False)
    try:
        return _dump_yaml(data)
    except Exception:  # ruamel cannot write some values (lone surrogates): send JSON instead
        return json.dumps(data)


_MUTATIONS = st.sampled_from(
    ["none", "truncate", "nul", "tab", "control", "dup_line", "deep", "bad_indent"]
)


def _mutate(text: str, how: str, at: int) -> str:
    """Damage YAML/JSON text the ways a person or a fuzzer does."""
    pos = at % (len(text) + 1)
    if how == "truncate":
        return text[:pos]
    if how == "nul":
        return text[:pos] + "\x00" + text[pos:]
    if how == "tab":
        return text[:pos] + "\t" + text[pos:]
    if how == "control":
        return text[:pos] + "\x1b\x7f\x85" + text[pos:]
    if how == "dup_line":
        lines = text.splitlines(keepends=True)
        if lines:
            line = lines[pos % len(lines)]
            lines.insert(pos % len(lines), line)
        return "".join(lines)
    if how == "deep":
        depth = MAX_SPEC_DEPTH - 5 + at % 10
        return (
            "[" * depth + "]" * depth
            if at % 2
            else "a:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(depth))
        )
    if how == "bad_indent":
        return text.replace("\n", "\n ", 1)
    return text


def _check_error(exc: WorkflowValidationError) -> None:
    """The rejection a person reads: one non-empty message naming where the problem is."""
    message = str(exc)
    assert message.strip(), "empty validation message"
    if exc.field and not message.startswith("dependency cycle: "):  # a cycle names its tasks
        leaf = exc.field.rsplit(".", 1)[-1].split("[", 1)[0]
        assert leaf in message or (exc.line is not None and f"line {exc.line}" in message), (
            f"the message does not name field {exc.field!r}: {message!r}"
        )
    if exc.node_id:
        assert exc.node_id in message, f"the message does not name task {exc.node_id!r}"


def _through_orchestrator(text: str, user_vars: dict[str, str]) -> None:
    """What StartRun does with the text: parse, resolve and build the graph."""
    note(_REPLAY)
    try:
        spec = parse_spec(text)
        prepare_run(spec, user_vars)
    except WorkflowValidationError as exc:
        _check_error(exc)


_USER_VARS = st.dictionaries(
    st.one_of(st.just("topic"), st.text(max_size=5)), st.text(max_size=8), max_size=3
)


@_fuzz
@given(data=st.one_of(spec_dicts(), valid_specs()), user_vars=_USER_VARS)
def test_dict_specs_are_accepted_or_rejected_with_a_located_message(
    data: Any, user_vars: dict[str, str]
) -> None:
    note(_REPLAY)
    try:
        prepare_run(WorkflowSpec.from_dict(data), user_vars)  # a non-mapping is rejected too
    except WorkflowValidationError as exc:
        _check_error(exc)


@_fuzz
@given(
    data=st.one_of(spec_dicts(), valid_specs()),
    style=st.sampled_from(["yaml", "json"]),
    how=_MUTATIONS,
    at=st.integers(0, 10_000),
    user_vars=_USER_VARS,
)
def test_spec_text_through_the_orchestrator_parser(
    data: Any, style: str, how: str, at: int, user_vars: dict[str, str]
) -> None:
    _through_orchestrator(_mutate(_texts(data, style), how, at), user_vars)


@_fuzz
@given(text=st.text(max_size=300), user_vars=_USER_VARS)
def test_arbitrary_text_through_the_orchestrator_parser(
    text: str, user_vars: dict[str, str]
) -> None:
    _through_orchestrator(text, user_vars)


@pytest.mark.parametrize(
    "text",
    [
        "name: x\ntasks:\n  - {id: a, agent: echo, depends_on: [b]}\n"
        "  - {id: b, agent: echo, depends_on: [a]}\n",
        "name: x\ntasks:\n  - {id: a, agent: echo}\n  - {id: a, agent: echo}\n",
        "name: x\ntasks:\n  - {id: a, agent: echo, params: '${user.nope}'}\n",
        "name: x\ntasks:\n  - {id: a, agent: echo, retry: {max_attempts: -1}}\n",
        '{"name": "x", "tasks": [{"id": "a", "agent": "echo", "timeout": 1e999}]}',
        "name: x\ntasks:\n  - {id: 'a\x00', agent: echo}\n",
        "name: x\ntasks:\n  - {id: a, agent: echo, timeout: 1e300}\n",
    ],
    ids=[
        "cycle",
        "duplicate-id",
        "unknown-var",
        "negative-retry",
        "infinite-timeout",
        "nul-id",
        "timeout-past-the-limit",  # was accepted, and failed the task at dispatch
    ],
)
def test_known_bad_specs_name_their_task_or_field(text: str) -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        prepare_run(parse_spec(text), {})
    _check_error(caught.value)
    assert "line " in str(caught.value) or caught.value.node_id or caught.value.field
