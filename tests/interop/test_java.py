"""The Java client (`clients/java`, grpc-java stubs built from `protos/`) against the real stack.

It runs a workflow of toolbox agents on the services (FerretDB + MinIO), and the tests check
what a Java user sees: the summary JSON on stdout, the event lines on stderr, the exit
status, and that the artifacts and execution records it names are really in the store. Its
`blob-sha256` recomputes docs/contracts.md §8's `blob` in Java and must match the store's digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dagwire.models import ExecutionRecord
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from tests.interop.conftest import JAVA_CLIENT, InteropStack
from tests.servers import find_free_port

BLOB_SIZE = 2 * 1024 * 1024 + 5  # streamed to MinIO (over the inline limit), not a multiple of 32
BLOB_SEED = 11
TOPIC = "grpc-java ✓ naïve"

SPEC = f"""\
name: java-toolbox
vars:
  topic: "the default, unused"
tasks:
  - id: greet
    agent: echo
    params: {{text: "hello ${{user.topic}}"}}
  - id: shout
    agent: upper
    depends_on: [greet]
  - id: both
    agent: concat
    depends_on: [greet, shout]
    params: {{sep: " / "}}
  - id: data
    agent: blob
    params: {{size: {BLOB_SIZE}, seed: {BLOB_SEED}}}
"""

EXPECTED_TEXT = {
    "greet": f"hello {TOPIC}",
    "shout": f"hello {TOPIC}".upper(),
    "both": f"hello {TOPIC} / " + f"hello {TOPIC}".upper(),
}

FAILING_SPEC = """\
name: java-failing
tasks:
  - id: ok
    agent: echo
    params: {text: fine}
  - id: broken
    agent: fail
    params: {message: "boom from the java test"}
  - id: after
    agent: echo
    depends_on: [broken]
"""


@dataclass(frozen=True)
class JavaRun:
    """One `run` of the Java client: its exit status, output, and the summary it printed."""

    done: subprocess.CompletedProcess[str]
    summary: dict[str, Any]


def java(
    stack: InteropStack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the Java client's jar with the stack's addresses in its environment."""
    return subprocess.run(
        [*JAVA_CLIENT, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=180,
        env={**os.environ, **stack.client_env, **(env or {})},
        check=False,
    )


def run_spec(stack: InteropStack, tmp: Path, name: str, spec: str, *args: str) -> JavaRun:
    path = tmp / name
    path.write_text(spec, encoding="utf-8")
    done = java(stack, "run", str(path), *args)
    assert done.returncode in (0, 1), f"exit {done.returncode}:\n{done.stderr}"
    return JavaRun(done, json.loads(done.stdout))


@pytest.fixture(scope="module")
def java_run(
    interop_stack: InteropStack, java_built: None, tmp_path_factory: pytest.TempPathFactory
) -> JavaRun:
    """The toolbox workflow, run once through the Java client with `--var topic=...`."""
    tmp = tmp_path_factory.mktemp("java")
    return run_spec(interop_stack, tmp, "toolbox.yaml", SPEC, "--var", f"topic={TOPIC}")


@pytest.fixture(scope="module")
def failing_run(
    interop_stack: InteropStack, java_built: None, tmp_path_factory: pytest.TempPathFactory
) -> JavaRun:
    tmp = tmp_path_factory.mktemp("java-failing")
    return run_spec(interop_stack, tmp, "failing.yaml", FAILING_SPEC)


async def _contents(stack: InteropStack, artifact_ids: dict[str, str]) -> dict[str, bytes]:
    store = RemoteArtifactStore(stack.store_addr)
    try:
        return {
            node_id: b"".join([chunk async for chunk in store.open(artifact_id)])
            for node_id, artifact_id in artifact_ids.items()
        }
    finally:
        await store.aclose()


async def _records(stack: InteropStack, run_id: str) -> list[ExecutionRecord]:
    executions = RemoteExecutionStore(stack.store_addr)
    try:
        return await executions.list_records(run_id)
    finally:
        await executions.aclose()


def _artifact_ids(summary: dict[str, Any]) -> dict[str, str]:
    ids = {}
    for node_id, node in summary["nodes"].items():
        (artifact,) = node["artifacts"]
        ids[node_id] = artifact["artifact_id"]
    return ids


def test_java_run_exits_0_and_prints_the_summary_json_in_the_cli_shape(
    java_run: JavaRun,
) -> None:
    assert java_run.done.returncode == 0, java_run.done.stderr
    summary = java_run.summary
    assert set(summary) == {"run_id", "status", "nodes"}
    assert summary["status"] == "succeeded"
    assert list(summary["nodes"]) == ["greet", "shout", "both", "data"]  # spec order
    for node_id, node in summary["nodes"].items():
        assert node == {
            "status": "succeeded",
            "attempts": 1,
            "error": None,
            "artifacts": node["artifacts"],
        }, node_id
        (artifact,) = node["artifacts"]
        assert set(artifact) == {"artifact_id", "name", "sha256", "size"}
        assert artifact["name"] == "out"
    assert summary["nodes"]["data"]["artifacts"][0]["size"] == BLOB_SIZE


def test_java_run_prints_one_stderr_line_per_event_as_it_follows_the_run(
    java_run: JavaRun,
) -> None:
    lines = java_run.done.stderr.splitlines()
    run_id = java_run.summary["run_id"]
    assert lines[0].startswith(f"run {run_id} started (trace ")
    for node_id in ("greet", "shout", "both", "data"):
        assert any(f"] {node_id}: attempt 1 started on agent " in line for line in lines)
        assert any(f"] {node_id}: succeeded after 1 attempt" in line for line in lines)
    assert lines[-1].endswith(f"run {run_id} succeeded")


def test_java_run_artifacts_hold_the_resolved_variable_text(
    java_run: JavaRun, interop_stack: InteropStack
) -> None:
    contents = asyncio.run(_contents(interop_stack, _artifact_ids(java_run.summary)))

    for node_id, expected in EXPECTED_TEXT.items():
        assert contents[node_id].decode("utf-8") == expected, node_id
    for node_id, node in java_run.summary["nodes"].items():
        (artifact,) = node["artifacts"]
        assert hashlib.sha256(contents[node_id]).hexdigest() == artifact["sha256"], node_id
        assert len(contents[node_id]) == artifact["size"], node_id


def test_java_blob_sha256_equals_the_stores_digest_of_the_blob_artifact(
    java_run: JavaRun, interop_stack: InteropStack
) -> None:
    (blob,) = java_run.summary["nodes"]["data"]["artifacts"]
    content = asyncio.run(_contents(interop_stack, {"data": blob["artifact_id"]}))["data"]

    done = java(interop_stack, "blob-sha256", "--size", str(BLOB_SIZE), "--seed", str(BLOB_SEED))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == blob["sha256"] == hashlib.sha256(content).hexdigest()


def test_java_run_leaves_one_succeeded_execution_record_per_task(
    java_run: JavaRun, interop_stack: InteropStack
) -> None:
    records = asyncio.run(_records(interop_stack, java_run.summary["run_id"]))

    assert sorted(r.node_id for r in records) == ["both", "data", "greet", "shout"]
    assert {r.status for r in records} == {"succeeded"}
    assert len({r.trace_id for r in records}) == 1
    ids = _artifact_ids(java_run.summary)
    for record in records:
        assert record.output_artifact_ids == [ids[record.node_id]]
    both = next(r for r in records if r.node_id == "both")
    assert both.input_artifact_ids == [ids["greet"], ids["shout"]]


def test_java_artifacts_get_downloads_the_blob_with_its_digest(
    java_run: JavaRun, interop_stack: InteropStack, tmp_path: Path
) -> None:
    (blob,) = java_run.summary["nodes"]["data"]["artifacts"]
    target = tmp_path / "blob.bin"

    done = java(interop_stack, "artifacts", "get", blob["artifact_id"], "-o", str(target))

    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == blob["sha256"]
    assert done.stdout == ""


def test_java_run_exits_1_when_a_task_fails_and_skips_its_dependents(
    failing_run: JavaRun,
) -> None:
    assert failing_run.done.returncode == 1
    nodes = failing_run.summary["nodes"]
    assert failing_run.summary["status"] == "failed"
    assert nodes["ok"]["status"] == "succeeded"
    assert nodes["broken"]["status"] == "failed"
    assert nodes["broken"]["attempts"] == 1
    assert "boom from the java test" in nodes["broken"]["error"]
    assert nodes["after"]["status"] == "skipped"
    assert nodes["after"]["attempts"] == 0
    assert nodes["after"]["artifacts"] == []
    assert "broken: attempt 1 failed: " in failing_run.done.stderr


def test_java_run_of_an_invalid_spec_exits_2_with_one_line_naming_the_field(
    interop_stack: InteropStack, java_built: None, tmp_path: Path
) -> None:
    spec = tmp_path / "typo.yaml"
    spec.write_text("name: typo\ntasks:\n  - id: a\n    agent: echo\n    dependson: [b]\n")

    done = java(interop_stack, "run", str(spec))

    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: the orchestrator refused to start the run of ")
    assert "INVALID_ARGUMENT" in line
    assert "dependson" in line


def test_java_run_with_an_unset_variable_exits_2_naming_it(
    interop_stack: InteropStack, java_built: None, tmp_path: Path
) -> None:
    spec = tmp_path / "unset.yaml"
    spec.write_text(
        'name: unset\ntasks:\n  - id: a\n    agent: echo\n    params: {text: "${user.who}"}\n'
    )

    done = java(interop_stack, "run", str(spec))

    assert done.returncode == 2
    assert "who" in done.stderr
    assert "Exception" not in done.stderr


def test_java_run_exits_3_when_the_orchestrator_is_unreachable(
    interop_stack: InteropStack, java_built: None, tmp_path: Path
) -> None:
    spec = tmp_path / "hello.yaml"
    spec.write_text("name: hello\ntasks:\n  - id: a\n    agent: echo\n")
    nobody = f"127.0.0.1:{find_free_port()}"

    done = java(interop_stack, "run", str(spec), env={"DAGWIRE_ORCHESTRATOR_ADDR": nobody})

    assert done.returncode == 3
    assert done.stdout == ""
    assert f"cannot reach the orchestrator at {nobody} (from DAGWIRE_ORCHESTRATOR_ADDR)" in (
        done.stderr
    )


def test_java_run_rejects_bad_input_before_calling_any_server(
    interop_stack: InteropStack, java_built: None, tmp_path: Path
) -> None:
    spec = tmp_path / "hello.yaml"
    spec.write_text("name: hello\ntasks:\n  - id: a\n    agent: echo\n")

    missing = java(interop_stack, "run", str(tmp_path / "nope.yaml"))
    bad_var = java(interop_stack, "run", str(spec), "--var", "no-equals-sign")
    bad_addr = java(interop_stack, "run", str(spec), "--server", "localhost")

    assert [missing.returncode, bad_var.returncode, bad_addr.returncode] == [2, 2, 2]
    assert missing.stderr == f"error: workflow spec {tmp_path / 'nope.yaml'} does not exist\n"
    assert "--var 'no-equals-sign': expected KEY=VALUE" in bad_var.stderr
    assert "--server: 'localhost' is not host:port" in bad_addr.stderr
