"""`${secret.NAME}`: the grammar, the resolver over ``DIR/<namespace>/NAME``, redaction, and the
in-process orchestrator (value only in the adapter's params, missing secret refused at start).
The same through the real services is tests/integration/test_secrets_stack.py."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagwire.errors import WorkflowValidationError
from dagwire.limits import MAX_SECRET_BYTES
from dagwire.models import Artifact, RunStatus, TaskNode
from dagwire.runtime import Dispatcher, FunctionAdapter, Orchestrator
from dagwire.runtime.secrets import (
    Redactor,
    SecretError,
    SecretNotFoundError,
    SecretResolver,
)
from dagwire.spec import WorkflowSpec
from dagwire.spec._placeholders import SecretSlot, placeholder_error, split, substitute
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore

VALUE = "s3cr3t-Token/Value"


def spec_of(params: Any, variables: dict[str, Any] | None = None) -> WorkflowSpec:
    data: dict[str, Any] = {
        "name": "w",
        "tasks": [{"id": "call", "agent": "echo", "params": params}],
    }
    if variables is not None:
        data["vars"] = variables
    return WorkflowSpec.from_dict(data)


def secrets_dir(root: Path, values: dict[str, str], namespace: str = "default") -> Path:
    folder = root / namespace
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        (folder / name).write_text(value)
    return root


# --- grammar ---------------------------------------------------------------------------------


def test_secret_placeholder_is_valid_and_kept_out_of_resolved_params() -> None:
    resolved = spec_of({"auth": "Bearer ${secret.API_TOKEN}", "n": 1}).resolve()

    assert resolved.tasks[0].params == {"auth": "Bearer [secret API_TOKEN]", "n": 1}
    (slot,) = resolved.secret_slots("call")
    assert slot.path == ("auth",)
    assert slot.names == ("API_TOKEN",)
    assert slot.filled({"API_TOKEN": "v"}) == "Bearer v"


def test_escaped_secret_placeholder_stays_literal_text() -> None:
    resolved = spec_of({"doc": "write $${secret.X} in a spec"}).resolve()

    assert resolved.tasks[0].params == {"doc": "write ${secret.X} in a spec"}
    assert not resolved.uses_secrets


def test_a_variable_value_spelling_a_secret_is_never_resolved() -> None:
    spec = spec_of({"text": "${user.topic}", "mixed": "${user.topic} ${secret.A}"})
    resolved = spec.resolve({"topic": "${secret.B}"})

    params = resolved.tasks[0].params
    assert params["text"] == "${secret.B}"
    (slot,) = resolved.secret_slots("call")
    assert slot.names == ("A",)  # B, inserted by the variable, is text
    assert slot.filled({"A": "a-value"}) == "${secret.B} a-value"


def test_vars_defaults_spelling_a_secret_stay_text() -> None:
    resolved = spec_of({"text": "${user.v}"}, variables={"v": "${secret.C}"}).resolve()

    assert resolved.tasks[0].params == {"text": "${secret.C}"}
    assert not resolved.uses_secrets


@pytest.mark.parametrize(
    "text", ["${secret.}", "${secret.1x}", "${secret.a-b}", "${secret.../x}", "${secrets.A}"]
)
def test_bad_secret_names_are_spec_errors(text: str) -> None:
    with pytest.raises(WorkflowValidationError) as caught:
        spec_of({"t": text})

    message = str(caught.value)
    assert "task 'call': field 'params.t': invalid placeholder" in message
    assert "${secret.NAME}" in message  # the hint names both placeholder kinds


def test_resolved_spec_round_trips_through_to_dict() -> None:
    spec = spec_of({"a": ["x ${secret.K} $${y}", "${user.u}"]}, variables={"u": "$${no}"})
    resolved = spec.resolve()

    data = resolved.to_dict()
    assert data["tasks"][0]["params"] == {"a": ["x ${secret.K} $${y}", "$$${no}"]}
    again = WorkflowSpec.from_dict(data).resolve()
    assert again.tasks == resolved.tasks
    assert again.secret_slots("call") == resolved.secret_slots("call")


def test_params_that_are_one_secret_string() -> None:
    resolved = spec_of("${secret.WHOLE}").resolve()

    assert resolved.tasks[0].params == "[secret WHOLE]"
    assert resolved.secret_slots("call")[0].path == ()


def test_schema_describes_secret_placeholders() -> None:
    schema = json.dumps(WorkflowSpec.json_schema())

    assert "${secret.NAME}" in schema


# --- resolver --------------------------------------------------------------------------------


def test_read_strips_one_trailing_newline(tmp_path: Path) -> None:
    root = secrets_dir(tmp_path, {"A": "value\n", "B": "two\n\n", "C": "crlf\r\n", "D": "none"})
    resolver = SecretResolver(root)

    assert resolver.read("default", "A") == "value"
    assert resolver.read("default", "B") == "two\n"
    assert resolver.read("default", "C") == "crlf"
    assert resolver.read("default", "D") == "none"


def test_read_sees_a_rotated_value(tmp_path: Path) -> None:
    root = secrets_dir(tmp_path, {"A": "old-value"})
    resolver = SecretResolver(root)
    assert resolver.read("default", "A") == "old-value"

    (root / "default" / "A").write_text("new-value")

    assert resolver.read("default", "A") == "new-value"


def test_secrets_are_per_namespace(tmp_path: Path) -> None:
    secrets_dir(tmp_path, {"A": "in-default"})
    secrets_dir(tmp_path, {"A": "in-team"}, namespace="team-a")
    resolver = SecretResolver(tmp_path)

    assert resolver.read("default", "A") == "in-default"
    assert resolver.read("team-a", "A") == "in-team"


def test_missing_secret_names_the_directory(tmp_path: Path) -> None:
    resolver = SecretResolver(secrets_dir(tmp_path, {}))

    with pytest.raises(SecretNotFoundError) as caught:
        resolver.read("default", "NOPE")

    assert str(caught.value) == f"secret 'NOPE' not found: no file NOPE in {tmp_path / 'default'}"


@pytest.mark.parametrize("namespace", ["..", "../x", "a/b", "a\x00b", "", ".hidden", "x/../.."])
def test_namespaces_that_could_leave_the_directory_are_refused(
    tmp_path: Path, namespace: str
) -> None:
    (tmp_path / "outside").write_text("not yours")
    resolver = SecretResolver(tmp_path / "secrets")

    with pytest.raises(SecretError, match="cannot name a secrets directory"):
        resolver.read(namespace, "outside")


@pytest.mark.parametrize("name", ["..", "../outside", "a/b", "a\x00b", "", "1x", "x.y"])
def test_names_that_could_leave_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "outside").write_text("not yours")
    resolver = SecretResolver(secrets_dir(tmp_path / "secrets", {}))

    with pytest.raises(SecretError, match="is not a secret name"):
        resolver.read("default", name)


def test_unusable_files_are_errors_without_their_content(tmp_path: Path) -> None:
    root = secrets_dir(tmp_path, {"BIG": "x" * (MAX_SECRET_BYTES + 1)})
    (root / "default" / "BIN").write_bytes(b"\xff\xfe-binary")
    (root / "default" / "DIR").mkdir()
    resolver = SecretResolver(root)

    with pytest.raises(SecretError, match="larger than 64 KiB"):
        resolver.read("default", "BIG")
    with pytest.raises(SecretError, match="is not UTF-8 text"):
        resolver.read("default", "BIN")
    with pytest.raises(SecretError, match="is a directory"):
        resolver.read("default", "DIR")


def test_check_lists_each_missing_use_with_task_path_and_directory(tmp_path: Path) -> None:
    root = secrets_dir(tmp_path, {"HAVE": "present-value"})
    spec = WorkflowSpec.from_dict(
        {
            "name": "w",
            "tasks": [
                {"id": "a", "agent": "e", "params": {"h": {"x": "${secret.HAVE}${secret.GONE}"}}},
                {"id": "b", "agent": "e", "params": ["${secret.GONE}"]},
            ],
        }
    ).resolve()

    with pytest.raises(WorkflowValidationError) as caught:
        SecretResolver(root).check(spec, "default")

    folder = root / "default"
    assert str(caught.value).splitlines() == [
        f"task 'a': field 'params.h.x': secret 'GONE' not found: no file GONE in {folder}",
        f"task 'b': field 'params[0]': secret 'GONE' not found: no file GONE in {folder}",
    ]
    assert "present-value" not in str(caught.value)
    assert caught.value.node_id == "a"


def test_check_without_a_directory_says_to_set_it() -> None:
    spec = spec_of({"k": "${secret.KEY}"}).resolve()

    with pytest.raises(WorkflowValidationError) as caught:
        SecretResolver(None).check(spec, "default")

    assert str(caught.value) == (
        "task 'call': field 'params.k': ${secret.KEY} needs a secrets directory: set "
        "DAGWIRE_SECRETS_DIR on the orchestrator (one file per secret, DIR/<namespace>/NAME)"
    )


def test_check_of_a_spec_without_secrets_needs_no_directory() -> None:
    SecretResolver(None).check(spec_of({"k": "${user.x}"}, variables={"x": 1}).resolve(), "default")


# --- redaction -------------------------------------------------------------------------------


def test_redactor_replaces_values_and_their_escaped_forms() -> None:
    redact = Redactor()
    value = 'p@ss "quoted" é\\n'
    redact.add("DB_PASSWORD", value)

    assert redact(f"login failed for {value}") == "login failed for [secret DB_PASSWORD]"
    echoed = json.dumps({"password": value})
    assert value not in redact(echoed)
    assert json.dumps(value)[1:-1] not in redact(echoed)
    assert redact(repr({"password": value})) == "{'password': '[secret DB_PASSWORD]'}"
    assert redact(json.dumps(value, ensure_ascii=False)) == '"[secret DB_PASSWORD]"'
    url = "GET https://api.example.com/v1?key=" + quote(value, safe="") + " failed: 401"
    assert redact(url) == "GET https://api.example.com/v1?key=[secret DB_PASSWORD] failed: 401"


def test_redactor_keeps_every_value_it_saw() -> None:
    redact = Redactor()
    redact.add("T", "first-value")
    redact.add("T", "rotated-value")

    assert redact("first-value then rotated-value") == "[secret T] then [secret T]"


def test_redactor_withholds_a_text_with_a_short_value() -> None:
    redact = Redactor()
    redact.add("PIN", "493")

    assert "493" not in redact("bad pin 493 given")
    assert redact("bad pin 493 given").startswith("[error text withheld: it contains")
    assert redact("nothing to hide") == "nothing to hide"


def test_an_empty_redactor_changes_nothing() -> None:
    redact = Redactor()
    redact.add("EMPTY", "")

    assert not redact
    assert redact("text") == "text"


# --- the in-process orchestrator -------------------------------------------------------------


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[LocalArtifactStore, SqliteExecutionStore]]:
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    executions = SqliteExecutionStore(tmp_path / "executions.sqlite3")
    yield artifacts, executions
    await artifacts.aclose()
    await executions.aclose()


def echo_then_fail_once(seen: list[Any]) -> FunctionAdapter:
    async def call(task: TaskNode, inputs: list[Artifact], trace_id: str) -> list[Artifact]:
        seen.append(task.params)
        if task.attempt == 1:
            raise RuntimeError(f"upstream refused {json.dumps(task.params)}")
        if task.attempt == 2:
            raise RuntimeError(f"refused again: {task.params['auth']}")
        return [Artifact(name="out", content=json.dumps(task.params).encode())]

    return FunctionAdapter(call)


async def test_orchestrator_gives_the_value_to_the_adapter_only(
    tmp_path: Path, stores: tuple[LocalArtifactStore, SqliteExecutionStore]
) -> None:
    root = secrets_dir(tmp_path / "secrets", {"API_TOKEN": VALUE + "\n"})
    seen: list[Any] = []
    dispatcher = Dispatcher()
    dispatcher.register_adapter("echo", echo_then_fail_once(seen))
    orchestrator = Orchestrator(*stores, dispatcher=dispatcher, secrets_dir=root)
    spec = {
        "name": "w",
        "tasks": [
            {
                "id": "call",
                "agent": "echo",
                "params": {"auth": "Bearer ${secret.API_TOKEN}", "raw": "$${secret.API_TOKEN}"},
                "retry": {"max_attempts": 3, "initial_backoff": 0},
            }
        ],
    }
    try:
        summary = await orchestrator.run_workflow(spec)
        record = await orchestrator.get_run(summary.run_id)
        records = await stores[1].list_records(summary.run_id)
        events = [e async for e in orchestrator.watch_run(summary.run_id)]
    finally:
        await orchestrator.aclose()

    assert summary.status is RunStatus.SUCCEEDED
    assert seen == [{"auth": f"Bearer {VALUE}", "raw": "${secret.API_TOKEN}"}] * 3
    errors = [r.error for r in records if r.error]
    assert errors == [
        'RuntimeError: upstream refused {"auth": "Bearer [secret API_TOKEN]", '
        '"raw": "${secret.API_TOKEN}"}',
        "RuntimeError: refused again: Bearer [secret API_TOKEN]",
    ]
    shown = json.dumps(record.to_json()) + "".join(json.dumps(e.to_json()) for e in events)
    assert "[secret API_TOKEN]" in shown
    assert VALUE not in shown
    assert VALUE not in json.dumps([r.to_json() for r in records])


async def test_orchestrator_refuses_a_missing_secret_before_recording(
    tmp_path: Path, stores: tuple[LocalArtifactStore, SqliteExecutionStore]
) -> None:
    seen: list[Any] = []
    dispatcher = Dispatcher()
    dispatcher.register_adapter("echo", echo_then_fail_once(seen))
    root = secrets_dir(tmp_path / "secrets", {})
    orchestrator = Orchestrator(*stores, dispatcher=dispatcher, secrets_dir=root)
    try:
        with pytest.raises(WorkflowValidationError, match="secret 'API_TOKEN' not found"):
            await orchestrator.start_run(spec_of({"auth": "${secret.API_TOKEN}"}))
        runs = await stores[1].list_runs()
    finally:
        await orchestrator.aclose()

    assert runs == []
    assert seen == []


async def test_a_secret_deleted_after_the_start_fails_the_attempt_without_a_value(
    tmp_path: Path, stores: tuple[LocalArtifactStore, SqliteExecutionStore]
) -> None:
    root = secrets_dir(tmp_path / "secrets", {"K": "k-value-1234"})
    dispatcher = Dispatcher()
    gate_path = root / "default" / "K"

    async def first(task: TaskNode, inputs: list[Artifact], trace_id: str) -> list[Artifact]:
        os.remove(gate_path)  # gone before the dependent task is dispatched
        return [Artifact(name="out", content=b"x")]

    async def second(task: TaskNode, inputs: list[Artifact], trace_id: str) -> list[Artifact]:
        raise AssertionError("never dispatched without its secret")

    dispatcher.register_adapter("first", FunctionAdapter(first))
    dispatcher.register_adapter("second", FunctionAdapter(second))
    orchestrator = Orchestrator(*stores, dispatcher=dispatcher, secrets_dir=root)
    spec = {
        "name": "w",
        "tasks": [
            {"id": "a", "agent": "first"},
            {"id": "b", "agent": "second", "depends_on": ["a"], "params": "${secret.K}"},
        ],
    }
    try:
        summary = await orchestrator.run_workflow(spec)
    finally:
        await orchestrator.aclose()

    assert summary.status is RunStatus.FAILED
    error = summary.nodes["b"].error or ""
    assert error.startswith("secret 'K' not found: no file K in ")


def test_dagwire_up_passes_an_absolute_secrets_dir_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagwire_cli.stack import LocalStack

    monkeypatch.chdir(tmp_path)
    stack = LocalStack(tmp_path / "data", env={"DAGWIRE_SECRETS_DIR": "secrets"})

    # the processes run in the data directory: a relative path must mean the caller's
    assert stack._env["DAGWIRE_SECRETS_DIR"] == str(tmp_path / "secrets")


TEXT = st.text(alphabet=st.sampled_from("ab${}.$ user_xsecrt\n"), max_size=40)


@given(TEXT)
def test_split_without_secrets_is_substitute_and_with_them_rebuilds_the_text(text: str) -> None:
    if placeholder_error(text) is not None:
        return
    parts = split(text, lambda name: f"<{name}>")
    if isinstance(parts, str):
        assert parts == substitute(text, lambda name: f"<{name}>")
        return
    # joined with each secret spelled again, it is the text with its user variables filled
    slot = SecretSlot((), parts)
    assert WorkflowSpec.from_dict(
        {"name": "w", "tasks": [{"id": "t", "agent": "a", "params": slot.spelled()}]}
    ).resolve().secret_slots("t") == (slot,)


async def test_an_adopted_run_fills_and_redacts_its_secrets_at_the_adopter(
    tmp_path: Path, stores: tuple[LocalArtifactStore, SqliteExecutionStore]
) -> None:
    artifacts, executions = stores
    root = secrets_dir(tmp_path / "secrets", {"K": "adopted-value-42"})
    seen: list[tuple[str, int, Any]] = []

    def dispatcher(slow: float) -> Dispatcher:
        async def call(task: TaskNode, inputs: list[Artifact], trace_id: str) -> list[Artifact]:
            seen.append((task.id, task.attempt, task.params))
            await asyncio.sleep(slow)
            if task.attempt == 2:
                raise RuntimeError(f"refused {task.params}")
            return [Artifact(name="out", content=b"ok")]

        d = Dispatcher()
        d.register_adapter("slow", FunctionAdapter(call))
        return d

    spec = {
        "name": "adopted",
        "tasks": [
            {
                "id": "t",
                "agent": "slow",
                "params": {"key": "${secret.K}"},
                "retry": {"max_attempts": 3, "initial_backoff": 0},
            }
        ],
    }
    owner = Orchestrator(
        artifacts,
        executions,
        dispatcher=dispatcher(60),
        instance_id="owner",
        lease_seconds=0.3,
        secrets_dir=root,
    )
    adopter = Orchestrator(
        artifacts,
        executions,
        dispatcher=dispatcher(0),
        instance_id="adopter",
        lease_seconds=0.3,
        secrets_dir=root,
    )
    run_id = await owner.start_run(spec)
    async with asyncio.timeout(10):
        while not seen:
            await asyncio.sleep(0.01)
    for state in list(owner._active.values()):
        owner._abandon(state)  # what a killed owner leaves: no more writes, the lease lapses
    await owner.aclose()

    await adopter.recover_orphans()
    async with asyncio.timeout(10):
        while (stored := await executions.get_run(run_id)) is None or stored.owner != "adopter":
            await asyncio.sleep(0.02)
        summary = await adopter.wait_run(run_id)
    records = await executions.list_records(run_id)
    await adopter.aclose()

    assert summary.status is RunStatus.SUCCEEDED, summary.error
    assert [(node, attempt) for node, attempt, _ in seen] == [("t", 1), ("t", 2), ("t", 3)]
    assert all(params == {"key": "adopted-value-42"} for _, _, params in seen)
    errors = {r.attempt: r.error for r in records}
    assert errors[2] == "RuntimeError: refused {'key': '[secret K]'}"
    assert "adopted-value-42" not in json.dumps([r.to_json() for r in records])
