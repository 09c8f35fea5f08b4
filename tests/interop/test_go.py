"""The Go client (`build/bin/dagwire-go`) and the Go `wordcount` adapter on the real stack.

The stack (store on FerretDB + MinIO, dispatcher, orchestrator, Python toolbox) comes from
`conftest.interop_stack`; `scripts/build_go.sh` builds the Go programs once per session.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dagwire.v1 import adapter_service_pb2 as apb
from dagwire.v1 import adapter_service_pb2_grpc as apb_grpc
from tests.interop.conftest import GO_CLIENT, GO_WORDCOUNT_ADAPTER, InteropStack
from tests.servers import find_free_port
from tests.stack import Proc

BLOB_SIZE = 2 * 1024 * 1024 + 5  # above the inline limit: wordcount streams it from the store
BLOB_SEED = 11
PHRASE = "héllo from\tGo  wörld"

MIXED_SPEC = f"""\
name: go-mixed
vars:
  phrase: "unused default"
tasks:
  - id: greet
    agent: echo
    params: {{text: "${{user.phrase}}"}}
  - id: count
    agent: wordcount
    depends_on: [greet]
  - id: literal
    agent: wordcount
    params: {{text: "one two  three\\nfour"}}
  - id: shout
    agent: upper
    depends_on: [greet]
  - id: joined
    agent: concat
    depends_on: [count, literal, shout]
    params: {{sep: ","}}
  - id: data
    agent: blob
    params: {{size: {BLOB_SIZE}, seed: {BLOB_SEED}}}
  - id: data_words
    agent: wordcount
    depends_on: [data]
"""

FAILING_SPEC = """\
name: go-failing
tasks:
  - id: bad_params
    agent: wordcount
    params: {text: 5}
    retry: {max_attempts: 3, initial_backoff: 0.01}
  - id: after_bad
    agent: wordcount
    depends_on: [bad_params]
  - id: fine
    agent: wordcount
    params: {text: "still runs"}
"""


def _blob_content(size: int, seed: int) -> bytes:
    """docs/contracts.md §8's blob content (small sizes only; the test recomputes it in Python)."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


def _go(
    stack: InteropStack, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GO_CLIENT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **stack.client_env, **(env or {})},
        check=False,
    )


def _get(stack: InteropStack, artifact_id: str, dest: Path) -> bytes:
    done = _go(stack, "get", artifact_id, "-o", str(dest))
    assert done.returncode == 0, done.stderr
    return dest.read_bytes()


@pytest.fixture(scope="module")
def go_stack(interop_stack: InteropStack, go_built: None) -> Iterator[InteropStack]:
    """The stack with the Go `wordcount` adapter registered."""
    adapter = interop_stack.start_adapter("go-wordcount-go", GO_WORDCOUNT_ADAPTER, {"wordcount"})
    yield interop_stack
    adapter.stop()


def test_go_client_runs_a_workflow_mixing_toolbox_and_go_wordcount(
    go_stack: InteropStack, tmp_path: Path
) -> None:
    spec = tmp_path / "mixed.yaml"
    spec.write_text(MIXED_SPEC, encoding="utf-8")

    done = _go(go_stack, "run", str(spec), "--var", f"phrase={PHRASE}")

    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr}"
    summary: dict[str, Any] = json.loads(done.stdout)
    assert list(summary) == ["run_id", "status", "nodes"]
    assert summary["status"] == "succeeded"
    assert set(summary["nodes"]) == {
        "greet",
        "count",
        "literal",
        "shout",
        "joined",
        "data",
        "data_words",
    }
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
    # Progress was streamed live to stderr, one line per event, ending with the run.
    assert "count started (agent wordcount, attempt 1)" in done.stderr
    assert f"run {summary['run_id']} succeeded" in done.stderr

    contents = {
        node_id: _get(go_stack, node["artifacts"][0]["artifact_id"], tmp_path / node_id)
        for node_id, node in summary["nodes"].items()
    }
    assert contents["greet"].decode() == PHRASE
    assert contents["count"] == b"4"
    assert contents["literal"] == b"4"
    assert contents["shout"].decode() == PHRASE.upper()
    assert contents["joined"].decode() == "4,4," + PHRASE.upper()
    blob = _blob_content(BLOB_SIZE, BLOB_SEED)
    assert contents["data"] == blob
    # The Go adapter streamed the 2 MiB input from the store (MinIO) by reference.
    assert contents["data_words"].decode() == str(len(blob.decode("utf-8", "replace").split()))

    data = summary["nodes"]["data"]["artifacts"][0]
    assert data["size"] == BLOB_SIZE
    assert data["sha256"] == hashlib.sha256(blob).hexdigest()
    recomputed = _go(go_stack, "blob-sha256", "--size", str(BLOB_SIZE), "--seed", str(BLOB_SEED))
    assert recomputed.returncode == 0, recomputed.stderr
    assert recomputed.stdout == data["sha256"] + "\n"


def test_go_client_exits_1_with_the_summary_when_a_wordcount_task_fails(
    go_stack: InteropStack, tmp_path: Path
) -> None:
    spec = tmp_path / "failing.yaml"
    spec.write_text(FAILING_SPEC, encoding="utf-8")

    done = _go(go_stack, "run", str(spec))

    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "failed"
    bad = summary["nodes"]["bad_params"]
    # Bad params are INVALID/FAILED_PRECONDITION from the Go adapter: not retried.
    assert bad["status"] == "failed"
    assert bad["attempts"] == 1
    assert "params" in bad["error"] and "text" in bad["error"]
    assert summary["nodes"]["after_bad"]["status"] == "skipped"
    assert summary["nodes"]["fine"]["status"] == "succeeded"
    assert "bad_params attempt 1 failed" in done.stderr


def test_go_client_reports_bad_input_and_unreachable_servers_by_exit_status(
    go_stack: InteropStack, tmp_path: Path
) -> None:
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text("name: x\ntasks:\n  - id: a\n    agnt: echo\n", encoding="utf-8")
    invalid = _go(go_stack, "run", str(bad_spec))
    assert invalid.returncode == 2
    assert "agnt" in invalid.stderr
    assert "Traceback" not in invalid.stderr and "panic" not in invalid.stderr

    missing = _go(go_stack, "run", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "nope.yaml" in missing.stderr

    unknown = _go(go_stack, "get", "no-such-artifact", "-o", str(tmp_path / "x"))
    assert unknown.returncode == 2
    assert "no-such-artifact" in unknown.stderr
    assert not (tmp_path / "x").exists()

    closed = f"127.0.0.1:{find_free_port()}"
    spec = tmp_path / "ok.yaml"
    spec.write_text("name: x\ntasks:\n  - id: a\n    agent: echo\n", encoding="utf-8")
    unreachable = _go(go_stack, "run", str(spec), "--server", closed)
    assert unreachable.returncode == 3
    assert closed in unreachable.stderr


def _describe(address: str) -> apb.DescribeResponse:
    with grpc.insecure_channel(address) as channel:
        reply: apb.DescribeResponse = apb_grpc.AgentAdapterServiceStub(channel).Describe(
            apb.DescribeRequest(), timeout=5
        )
        return reply


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(reply.status)


def test_go_adapter_describes_itself_and_deregisters_on_sigterm(go_stack: InteropStack) -> None:
    extra: Proc = go_stack.start_adapter("go-wordcount-extra", GO_WORDCOUNT_ADAPTER, {"wordcount"})
    described = _describe(extra.address)
    assert list(described.agents) == ["wordcount"]
    assert described.language == "go"
    assert described.capacity >= 1
    assert _health(extra.address) == health_pb2.HealthCheckResponse.SERVING

    assert extra.stop(signal.SIGTERM) == 0
    # Deregistered at once: the dispatcher no longer routes anything to that address.
    assert go_stack.registered_agents(extra.address) == set()
    log = extra.log_tail(200)
    assert "registered with the dispatcher" in log
    assert "deregistered from the dispatcher" in log
