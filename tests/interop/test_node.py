"""The TypeScript side of dagwire: the node client and the `reverse` adapter (ts-reverse).

Built once per session by `scripts/build_node.sh`; run against the real services on FerretDB +
MinIO with the Python toolbox registered (`interop_stack`). Each test starts its own ts-reverse
process, so killing one never disturbs another test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from dagwire.v1 import adapter_service_pb2 as apb
from dagwire.v1 import adapter_service_pb2_grpc as apb_grpc
from dagwire.v1 import dispatcher_service_pb2 as dpb
from dagwire.v1 import dispatcher_service_pb2_grpc as dpb_grpc
from tests.interop.conftest import NODE_CLIENT, TS_REVERSE_ADAPTER, InteropStack
from tests.stack import Proc

BLOB_SIZE = 3 * 1024 * 1024 + 5  # held by reference in the store, and not a multiple of 32
BLOB_SEED = 11
PHRASE = "héllo wörld 😀 from node"
WAIT_SECONDS = 30.0

MIXED_SPEC = f"""\
name: node-mixed
vars:
  phrase: "default phrase"
tasks:
  - id: greet
    agent: echo
    params: {{text: "${{user.phrase}}"}}
  - id: back
    agent: reverse
    depends_on: [greet]
  - id: shout
    agent: upper
    depends_on: [back]
  - id: direct
    agent: reverse
    params: {{text: "ab😀c"}}
  - id: data
    agent: blob
    params: {{size: {BLOB_SIZE}, seed: {BLOB_SEED}}}
  - id: data_back
    agent: reverse
    depends_on: [data]
"""


@pytest.fixture
def ts_stack(interop_stack: InteropStack, node_built: None) -> Iterator[InteropStack]:
    """The stack (with the toolbox) plus one ts-reverse adapter of this test's own."""
    adapter = interop_stack.start_adapter("ts-reverse-node", TS_REVERSE_ADAPTER, {"reverse"})
    yield interop_stack
    adapter.stop()


def _ts_adapter(stack: InteropStack) -> Proc:
    return next(p for p in reversed(stack.processes) if p.name == "ts-reverse-node")


def _client(
    stack: InteropStack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NODE_CLIENT, *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **stack.client_env, **(env or {})},
        check=False,
    )


async def _contents(stack: InteropStack, summary: dict[str, Any]) -> dict[str, bytes]:
    store = RemoteArtifactStore(stack.store_addr)
    try:
        out = {}
        for node_id, node in summary["nodes"].items():
            (artifact,) = node["artifacts"]
            out[node_id] = b"".join([c async for c in store.open(artifact["artifact_id"])])
        return out
    finally:
        await store.aclose()


async def _records(stack: InteropStack, run_id: str) -> list[Any]:
    executions = RemoteExecutionStore(stack.store_addr)
    try:
        return await executions.list_records(run_id)
    finally:
        await executions.aclose()


def _in_flight(stack: InteropStack, address: str) -> int:
    with grpc.insecure_channel(stack.dispatcher_addr) as channel:
        reply = dpb_grpc.DispatcherServiceStub(channel).ListAdapters(
            dpb.ListAdaptersRequest(page_size=1000, agent="reverse"), timeout=5
        )
    return sum(i.in_flight for i in reply.adapters if i.address == address)


def test_node_client_runs_toolbox_and_typescript_tasks_and_prints_the_summary(
    ts_stack: InteropStack, tmp_path: Path
) -> None:
    spec = tmp_path / "mixed.yaml"
    spec.write_text(MIXED_SPEC, encoding="utf-8")

    done = _client(ts_stack, "run", str(spec), "--var", f"phrase={PHRASE}")

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert set(summary) == {"run_id", "status", "nodes"}
    assert summary["status"] == "succeeded"
    assert list(summary["nodes"]) == ["greet", "back", "shout", "direct", "data", "data_back"]
    for node_id, node in summary["nodes"].items():
        assert node == {
            "status": "succeeded",
            "attempts": 1,
            "error": None,
            "artifacts": [
                {
                    "artifact_id": node["artifacts"][0]["artifact_id"],
                    "name": "out",
                    "sha256": node["artifacts"][0]["sha256"],
                    "size": node["artifacts"][0]["size"],
                }
            ],
        }, node_id
    # One progress line per event on stderr, as the run went.
    assert f"started run {summary['run_id']}" in done.stderr
    assert "task back started (attempt 1, agent reverse)" in done.stderr
    assert f"run {summary['run_id']} (node-mixed) succeeded" in done.stderr

    contents = asyncio.run(_contents(ts_stack, summary))
    for node_id, content in contents.items():
        artifact = summary["nodes"][node_id]["artifacts"][0]
        assert hashlib.sha256(content).hexdigest() == artifact["sha256"], node_id
        assert len(content) == artifact["size"], node_id
    assert contents["greet"].decode() == PHRASE
    assert contents["back"].decode() == PHRASE[::-1]
    assert contents["shout"].decode() == PHRASE[::-1].upper()
    assert contents["direct"].decode() == "c😀ba"
    # A large input streamed from the store, reversed, and uploaded back by reference.
    assert contents["data_back"].decode() == contents["data"].decode("utf-8", "replace")[::-1]

    records = asyncio.run(_records(ts_stack, summary["run_id"]))
    assert {r.node_id: r.agent for r in records} == {
        "greet": "echo",
        "back": "reverse",
        "shout": "upper",
        "direct": "reverse",
        "data": "blob",
        "data_back": "reverse",
    }
    assert {r.status for r in records} == {"succeeded"}
    assert len({r.trace_id for r in records}) == 1


def test_node_blob_sha256_matches_the_stored_blob_artifact(
    ts_stack: InteropStack, tmp_path: Path
) -> None:
    spec = tmp_path / "blob.yaml"
    spec.write_text(
        "name: blob\ntasks:\n  - id: data\n    agent: blob\n"
        f"    params: {{size: {BLOB_SIZE}, seed: {BLOB_SEED}}}\n",
        encoding="utf-8",
    )
    done = _client(ts_stack, "run", str(spec))
    assert done.returncode == 0, done.stderr
    (artifact,) = json.loads(done.stdout)["nodes"]["data"]["artifacts"]

    recomputed = _client(
        ts_stack, "blob-sha256", "--size", str(BLOB_SIZE), "--seed", str(BLOB_SEED)
    )

    assert recomputed.returncode == 0, recomputed.stderr
    assert recomputed.stdout.strip() == artifact["sha256"]
    stored = asyncio.run(_contents(ts_stack, {"nodes": {"data": {"artifacts": [artifact]}}}))
    assert recomputed.stdout.strip() == hashlib.sha256(stored["data"]).hexdigest()


def test_node_client_exits_1_when_a_reverse_task_refuses_its_params(
    ts_stack: InteropStack, tmp_path: Path
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: bad-params\ntasks:\n"
        "  - id: bad\n    agent: reverse\n    params: {text: 5}\n"
        "  - id: after\n    agent: echo\n    depends_on: [bad]\n",
        encoding="utf-8",
    )

    done = _client(ts_stack, "run", str(spec))

    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "failed"
    nodes = summary["nodes"]
    assert nodes["bad"]["status"] == "failed"
    assert "params.text must be a string, got number 5" in nodes["bad"]["error"]
    assert nodes["bad"]["artifacts"] == []
    assert nodes["after"]["status"] == "skipped"
    assert nodes["after"]["attempts"] == 0


def test_reverse_invalid_argument_is_not_retried(ts_stack: InteropStack, tmp_path: Path) -> None:
    spec = tmp_path / "bad-retry.yaml"
    spec.write_text(
        "name: bad-params-retry\ntasks:\n"
        "  - id: bad\n    agent: reverse\n    params: {delay_ms: -1}\n"
        "    retry: {max_attempts: 3, initial_backoff: 0.01}\n",
        encoding="utf-8",
    )

    done = _client(ts_stack, "run", str(spec))

    assert done.returncode == 1, done.stderr
    bad = json.loads(done.stdout)["nodes"]["bad"]
    assert "params.delay_ms must be a number of milliseconds" in bad["error"]
    assert bad["attempts"] == 1


def test_node_client_exits_2_for_a_bad_spec_and_3_for_an_unreachable_server(
    ts_stack: InteropStack, tmp_path: Path
) -> None:
    spec = tmp_path / "typo.yaml"
    spec.write_text("name: typo\ntasks:\n  - id: a\n    agnet: echo\n", encoding="utf-8")

    bad = _client(ts_stack, "run", str(spec))
    missing = _client(ts_stack, "run", str(tmp_path / "nope.yaml"))
    unreachable = _client(ts_stack, "run", str(spec), "--server", "127.0.0.1:1")

    assert bad.returncode == 2
    assert "agnet" in bad.stderr
    assert missing.returncode == 2
    assert "nope.yaml" in missing.stderr
    assert unreachable.returncode == 3
    assert "127.0.0.1:1" in unreachable.stderr
    assert "Traceback" not in bad.stderr + missing.stderr + unreachable.stderr
    assert bad.stdout == missing.stdout == unreachable.stdout == ""


def test_ts_adapter_deregisters_and_exits_0_on_sigterm(ts_stack: InteropStack) -> None:
    adapter = _ts_adapter(ts_stack)
    assert "reverse" in ts_stack.registered_agents(adapter.address)

    returncode = adapter.stop(signal.SIGTERM)

    assert returncode == 0, adapter.log_tail()
    assert ts_stack.registered_agents(adapter.address) == set()
    assert "deregistered from the dispatcher" in adapter.log_tail()


def test_ts_adapter_killed_mid_task_fails_that_task_and_the_run_still_ends(
    ts_stack: InteropStack, tmp_path: Path
) -> None:
    adapter = _ts_adapter(ts_stack)
    spec = tmp_path / "kill.yaml"
    spec.write_text(
        "name: killed\ntasks:\n"
        "  - id: slow\n    agent: reverse\n    params: {text: never, delay_ms: 120000}\n"
        "  - id: after\n    agent: upper\n    depends_on: [slow]\n"
        "  - id: other\n    agent: echo\n    params: {text: independent}\n",
        encoding="utf-8",
    )
    client = subprocess.Popen(
        [*NODE_CLIENT, "run", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ts_stack.client_env},
    )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while _in_flight(ts_stack, adapter.address) == 0:
            assert client.poll() is None, client.communicate()
            assert time.monotonic() < deadline, "the slow reverse task never reached the adapter"
            time.sleep(0.05)

        adapter.stop(signal.SIGKILL)
        stdout, stderr = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()

    assert client.returncode == 1, stderr
    summary = json.loads(stdout)
    assert summary["status"] == "failed"
    slow = summary["nodes"]["slow"]
    assert slow["status"] == "failed"
    assert slow["attempts"] == 1
    assert adapter.address in slow["error"]
    assert "failed during the call" in slow["error"]
    assert summary["nodes"]["after"]["status"] == "skipped"
    assert summary["nodes"]["other"]["status"] == "succeeded"
    assert "task slow attempt 1 failed" in stderr


def _dns(address: str) -> str:
    """`dns:///localhost:PORT` for a loopback `host:port`: the name is looked up by grpc-js."""
    return f"dns:///localhost:{address.rsplit(':', 1)[1]}"


def test_ts_adapter_registers_and_uploads_through_dns_targets(
    interop_stack: InteropStack, node_built: None
) -> None:
    dispatcher, store = _dns(interop_stack.dispatcher_addr), _dns(interop_stack.store_addr)
    adapter = interop_stack.start_adapter(
        "ts-reverse-dns",
        TS_REVERSE_ADAPTER,
        {"reverse"},
        env={"DAGWIRE_DISPATCHER_ADDR": dispatcher, "DAGWIRE_STORE_ADDR": store},
    )
    try:
        text = "ab" * (600 * 1024)  # reversed it is over the 1 MiB inline limit: uploaded
        with grpc.insecure_channel(adapter.address) as channel:
            reply = apb_grpc.AgentAdapterServiceStub(channel).Execute(
                apb.ExecuteRequest(
                    agent="reverse",
                    params_json=json.dumps({"text": text}),
                    run_id="dns-targets",
                    node_id="big",
                    attempt=1,
                ),
                timeout=30,
            )
        (out,) = reply.output_artifacts
        assert out.WhichOneof("body") == "reference"
        assert out.reference.store_address == store
        content = asyncio.run(_read_artifact(interop_stack.store_addr, out.artifact_id))
        assert content == text[::-1].encode()
        assert f"dispatcher {dispatcher}, store {store}" in adapter.log_tail()
    finally:
        adapter.stop()


async def _read_artifact(store_addr: str, artifact_id: str) -> bytes:
    store = RemoteArtifactStore(store_addr)
    try:
        return b"".join([c async for c in store.open(artifact_id)])
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        ("DAGWIRE_DISPATCHER_ADDR", "dns:///dispatcher", "is not dns:///name:port (the port is"),
        ("DAGWIRE_DISPATCHER_ADDR", "dns://resolver-only", "is not dns:///name:port"),
        ("DAGWIRE_DISPATCHER_ADDR", "http://dispatcher:50052", "is not a host:port address"),
        ("DAGWIRE_STORE_ADDR", "dns:///store:0", "is not dns:///name:port"),
        ("DAGWIRE_STORE_ADDR", "ipv4:store-a:50053", 'has "store-a:50053", which is not an IPv4'),
        ("DAGWIRE_STORE_ADDR", "store", "is not a host:port address"),
    ],
)
def test_ts_adapter_refuses_a_malformed_peer_target_with_one_line_naming_it(
    node_built: None, setting: str, value: str, reason: str
) -> None:
    done = subprocess.run(
        TS_REVERSE_ADAPTER,
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "DAGWIRE_LISTEN_ADDR": "127.0.0.1:0", setting: value},
        check=False,
    )

    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"ts-reverse: {setting}={json.dumps(value)} {reason}")
    assert done.stdout == ""
