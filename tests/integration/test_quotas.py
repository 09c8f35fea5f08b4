"""Quotas from ``DAGWIRE_QUOTAS_FILE`` on real services serving mTLS with tokens and grants
(docs/security.md): each quota refuses
what is over it with a message naming the quota, its value and the namespace, nothing is
stored for a refused call, a namespace's overrides win over the defaults, and the file is
re-read while the services run."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest

from dagwire.rpc.channels import client_channel
from dagwire.v1 import store_service_pb2, store_service_pb2_grpc
from dagwire_cli.secure import prepare_secure
from tests.servers import REPO_ROOT
from tests.stack import (
    Proc,
    dispatcher_proc,
    free_address,
    orchestrator_proc,
    start_all,
    toolbox_proc,
    wait_adapters,
)

DAGWIRE = [sys.executable, "-m", "dagwire_cli.main"]
QUOTAS = """\
defaults:
  tasks_per_run: 3
  params_bytes_per_task: 200
  spec_bytes: 3000
  artifact_bytes: 1000000
  metadata_bytes: 100
  concurrent_runs: 1
namespaces:
  big:
    tasks_per_run: 10
"""


@dataclass
class QuotaStack:
    quotas_file: Path
    store: str
    env: dict[str, str]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*DAGWIRE, *args],
            capture_output=True,
            env=self.env,
            cwd=REPO_ROOT,
            timeout=60,
            text=True,
        )

    def run_ids(self, namespace: str = "default") -> set[str]:
        listed = self.cli("runs", "--output", "json", "--namespace", namespace, "-n", "1000")
        assert listed.returncode == 0, listed.stderr
        return {r["run_id"] for r in json.loads(listed.stdout)}


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuotaStack]:
    tmp = tmp_path_factory.mktemp("quota-stack")
    quotas_file = tmp / "quotas.yaml"
    quotas_file.write_text(QUOTAS)
    env = {"DAGWIRE_QUOTAS_FILE": str(quotas_file)}
    # mTLS, tokens and grants on, as `dagwire up --secure` runs them; the CLI and this
    # process act as the admin (quotas bind every principal; an admin may use any namespace)
    setup = prepare_secure(tmp, host="127.0.0.1", addresses={})
    saved = dict(os.environ)
    os.environ.update(setup.client_env("admin"))
    store_addr = free_address()
    store = Proc(
        "store",
        ["dagwire_services.store", "--listen-addr", store_addr, "--data-dir", str(tmp / "d")],
        store_addr,
        tmp / "store.log",
        env=env | setup.service_env("store"),
    )
    dispatcher = dispatcher_proc(tmp)
    dispatcher.env = setup.service_env("dispatcher")
    toolbox = toolbox_proc(tmp, dispatcher.address, store_addr)
    toolbox.env = setup.service_env("toolbox")
    orchestrator = orchestrator_proc(tmp, store_addr, dispatcher.address)
    orchestrator.env = env | setup.service_env("orchestrator")
    procs = [store, dispatcher, toolbox, orchestrator]

    async def start() -> None:
        await start_all(store, dispatcher, toolbox)
        await wait_adapters(dispatcher.address, {toolbox.address})
        await start_all(orchestrator)

    try:
        asyncio.run(start())
        yield QuotaStack(
            quotas_file,
            store_addr,
            {
                **os.environ,
                "DAGWIRE_ORCHESTRATOR_ADDR": orchestrator.address,
                "DAGWIRE_STORE_ADDR": store_addr,
            },
        )
    finally:
        for proc in reversed(procs):
            proc.stop()
        os.environ.clear()
        os.environ.update(saved)


def _spec(tmp_path: Path, tasks: list[dict[str, object]], comment: str = "") -> Path:
    path = tmp_path / f"flow-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(f"# {comment}\n" + json.dumps({"name": "quota", "tasks": tasks}))
    return path


def _echoes(n: int) -> list[dict[str, object]]:
    return [{"id": f"t{i}", "agent": "echo", "params": {"text": "x"}} for i in range(n)]


def test_over_a_size_quota_a_run_is_refused_naming_the_quota_and_nothing_is_stored(
    quota_stack: QuotaStack, tmp_path: Path
) -> None:
    before = quota_stack.run_ids()
    cases = [
        (_spec(tmp_path, _echoes(4)), "4 tasks, over the tasks_per_run quota of 3"),
        (
            _spec(tmp_path, [{"id": "wide", "agent": "echo", "params": {"text": "x" * 300}}]),
            "task 'wide' has 312 bytes of params, over the params_bytes_per_task quota of 200",
        ),
        (_spec(tmp_path, _echoes(1), "x" * 3000), "over the spec_bytes quota of 3000 bytes"),
    ]
    for spec, message in cases:
        refused = quota_stack.cli("run", str(spec))
        assert refused.returncode == 2, refused.stderr
        assert message in refused.stderr and "namespace 'default'" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert quota_stack.run_ids() == before
    # a namespace's override wins over the defaults
    allowed = quota_stack.cli("run", str(_spec(tmp_path, _echoes(4))), "--namespace", "big")
    assert allowed.returncode == 0, allowed.stderr


def test_concurrent_runs_over_the_quota_are_refused_until_one_finishes(
    quota_stack: QuotaStack, tmp_path: Path
) -> None:
    slow = _spec(tmp_path, [{"id": "nap", "agent": "sleep", "params": {"seconds": 3}}])
    first = subprocess.Popen(
        [*DAGWIRE, "run", str(slow)],
        env=quota_stack.env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # until the first run is recorded as running
            listed = quota_stack.cli("runs", "--status", "running", "--output", "json")
            if json.loads(listed.stdout or "[]"):
                break
            assert time.monotonic() < deadline, listed.stderr
            time.sleep(0.1)
        refused = quota_stack.cli("run", str(_spec(tmp_path, _echoes(1))))
        assert refused.returncode == 1, refused.stderr
        assert "has 1 runs running, its concurrent_runs quota of 1" in refused.stderr
        assert first.wait(30) == 0
    finally:
        first.kill()
        first.communicate()
    again = quota_stack.cli("run", str(_spec(tmp_path, _echoes(1))))
    assert again.returncode == 0, again.stderr


def test_an_output_over_the_artifact_quota_fails_its_task_and_is_not_stored(
    quota_stack: QuotaStack, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, [{"id": "big", "agent": "blob", "params": {"size": 1_500_000}}])
    done = quota_stack.cli("run", str(spec), "--output", "json")
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    node = summary["nodes"]["big"]
    assert node["status"] == "failed"
    assert "artifact_bytes quota of 1000000 bytes" in node["error"]
    assert node["artifacts"] == []


async def test_metadata_over_its_quota_is_refused_before_any_content(
    quota_stack: QuotaStack,
) -> None:
    header = store_service_pb2.PutArtifactRequest(
        header=store_service_pb2.ArtifactHeader(name="out", metadata={"k": "v" * 200})
    )
    async with client_channel(quota_stack.store) as channel:  # mTLS, the admin's token
        stub = store_service_pb2_grpc.ArtifactStoreServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.PutArtifact(iter([header, store_service_pb2.PutArtifactRequest(chunk=b"x")]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "header.metadata is 201 bytes, over the metadata_bytes quota of 100" in (
        caught.value.details() or ""
    )


def test_a_changed_quotas_file_applies_within_seconds(
    quota_stack: QuotaStack, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, _echoes(5))
    assert quota_stack.cli("run", str(spec)).returncode == 2
    quota_stack.quotas_file.write_text(QUOTAS.replace("tasks_per_run: 3", "tasks_per_run: 5"))
    try:
        deadline = time.monotonic() + 10
        while (done := quota_stack.cli("run", str(spec))).returncode != 0:
            assert done.returncode == 2 and time.monotonic() < deadline, done.stderr
            time.sleep(0.3)
    finally:
        quota_stack.quotas_file.write_text(QUOTAS)
