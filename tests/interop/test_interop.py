"""One workflow across three languages of adapters, driven by clients in three languages.

Its tasks run on the Python toolbox (`echo`, `upper`, `concat`, `blob`), the Go adapter
(`wordcount`) and the TypeScript adapter (`reverse`); the Go, TypeScript and Java clients each
start it with a variable, follow it and print the summary. The services run on FerretDB + MinIO.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from tests.interop.conftest import (
    GO_CLIENT,
    GO_WORDCOUNT_ADAPTER,
    JAVA_CLIENT,
    NODE_CLIENT,
    TS_REVERSE_ADAPTER,
    InteropStack,
)

BLOB_SIZE = 3 * 1024 * 1024 + 17  # over the inline limit and not a multiple of 32
BLOB_SEED = 7

SPEC = f"""\
name: polyglot
vars:
  phrase: "unused default"
tasks:
  - id: greet
    agent: echo
    params: {{text: "${{user.phrase}}"}}
  - id: count
    agent: wordcount
    depends_on: [greet]
  - id: backwards
    agent: reverse
    depends_on: [greet]
  - id: shout
    agent: upper
    depends_on: [backwards]
  - id: joined
    agent: concat
    depends_on: [count, shout]
    params: {{sep: "|"}}
  - id: data
    agent: blob
    params: {{size: {BLOB_SIZE}, seed: {BLOB_SEED}}}
"""

PHRASE = "héllo polyglot wörld"
EXPECTED_TEXT = {
    "greet": PHRASE,
    "count": "3",
    "backwards": PHRASE[::-1],
    "shout": PHRASE[::-1].upper(),
    "joined": "3|" + PHRASE[::-1].upper(),
}


def blob_sha256(size: int, seed: int) -> str:
    """docs/contracts.md §8's `blob` content digest, recomputed here as the fourth language's
    check."""
    digest = hashlib.sha256()
    produced, i = 0, 0
    while produced < size:
        block = hashlib.sha256(f"{seed}:{i}".encode()).digest()[: size - produced]
        digest.update(block)
        produced += len(block)
        i += 1
    return digest.hexdigest()


@pytest.fixture(scope="module")
def polyglot_stack(
    interop_stack: InteropStack, go_built: None, node_built: None, java_built: None
) -> Iterator[InteropStack]:
    """The stack with the Go `wordcount` and TypeScript `reverse` adapters registered."""
    go = interop_stack.start_adapter("go-wordcount", GO_WORDCOUNT_ADAPTER, {"wordcount"})
    ts = interop_stack.start_adapter("ts-reverse", TS_REVERSE_ADAPTER, {"reverse"})
    yield interop_stack
    ts.stop()
    go.stop()


CLIENTS = {"go": GO_CLIENT, "node": NODE_CLIENT, "java": JAVA_CLIENT}


def _run_client(
    stack: InteropStack, argv: list[str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **stack.client_env},
        check=False,
    )


async def _read_back(stack: InteropStack, summary: dict[str, Any]) -> dict[str, bytes]:
    store = RemoteArtifactStore(stack.store_addr)
    try:
        contents = {}
        for node_id, node in summary["nodes"].items():
            (artifact,) = node["artifacts"]
            chunks = [chunk async for chunk in store.open(artifact["artifact_id"])]
            contents[node_id] = b"".join(chunks)
            assert hashlib.sha256(contents[node_id]).hexdigest() == artifact["sha256"], node_id
            assert len(contents[node_id]) == artifact["size"], node_id
        return contents
    finally:
        await store.aclose()


async def _records(stack: InteropStack, run_id: str) -> list[Any]:
    executions = RemoteExecutionStore(stack.store_addr)
    try:
        return await executions.list_records(run_id)
    finally:
        await executions.aclose()


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_one_workflow_runs_on_python_go_and_typescript_adapters_from_each_client(
    polyglot_stack: InteropStack, client: str, tmp_path: Path
) -> None:
    spec = tmp_path / "polyglot.yaml"
    spec.write_text(SPEC, encoding="utf-8")

    done = _run_client(
        polyglot_stack, CLIENTS[client], "run", str(spec), "--var", f"phrase={PHRASE}"
    )

    assert done.returncode == 0, f"{client} client exit {done.returncode}:\n{done.stderr}"
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded"
    assert set(summary["nodes"]) == {*EXPECTED_TEXT, "data"}
    for node_id, node in summary["nodes"].items():
        assert node["status"] == "succeeded", (node_id, node)
        assert node["attempts"] == 1
        assert node["error"] is None
    # The client followed the run live: its progress names the tasks on stderr.
    assert "wordcount" in done.stderr or "count" in done.stderr

    contents = asyncio.run(_read_back(polyglot_stack, summary))
    for node_id, text in EXPECTED_TEXT.items():
        assert contents[node_id].decode("utf-8") == text, node_id
    data_sha = summary["nodes"]["data"]["artifacts"][0]["sha256"]
    assert data_sha == blob_sha256(BLOB_SIZE, BLOB_SEED)

    # The client's language recomputes the blob digest from docs/contracts.md §8's definition.
    recomputed = _run_client(
        polyglot_stack,
        CLIENTS[client],
        "blob-sha256",
        "--size",
        str(BLOB_SIZE),
        "--seed",
        str(BLOB_SEED),
    )
    assert recomputed.returncode == 0, recomputed.stderr
    assert recomputed.stdout.strip() == data_sha

    records = asyncio.run(_records(polyglot_stack, summary["run_id"]))
    by_node = {r.node_id: r for r in records if r.status == "succeeded"}
    assert set(by_node) == set(summary["nodes"])
    assert {r.agent for r in records} >= {"wordcount", "reverse", "echo", "upper"}
    assert len({r.trace_id for r in records}) == 1, "one trace id per run"
    assert by_node["count"].input_artifact_ids == [
        summary["nodes"]["greet"]["artifacts"][0]["artifact_id"]
    ]
