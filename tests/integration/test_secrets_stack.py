"""`${secret.NAME}` through the real services (docs/security.md, "Secrets"): store, dispatcher,
an SDK adapter and an orchestrator with ``DAGWIRE_SECRETS_DIR`` as separate processes on
loopback (embedded storage: this is not about storage), serving mTLS with tokens and grants as
`dagwire up --secure` runs them, driven by the CLI and the client.

The adapter echoes its params into its output and, on its first attempt, into its error. The
value must reach the adapter and appear nowhere else: not in GetRun's record, the WatchRun
events, the execution records, the CLI's output (text and JSON) or any service's log.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dagwire.auth import add_principal
from dagwire.errors import WorkflowValidationError
from dagwire.models import RunStatus, TaskStatus
from dagwire.rpc.orchestrator_client import OrchestratorClient
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from dagwire.runtime import RunEventKind
from dagwire_cli.secure import issue_certificate, prepare_secure
from tests.servers import REPO_ROOT
from tests.stack import Proc, collect_events, free_address, start_all, wait_adapters

ADAPTER = Path(__file__).parent / "adapters" / "secret_echo_adapter.py"
_SCRIPT = Path(sys.executable).parent / "dagwire"
DAGWIRE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dagwire_cli.main"]

VALUE = "tok-7f3a9c2e-ONLY-FOR-THE-ADAPTER"
SPEC = """\
name: secret-call
tasks:
  - id: call
    agent: echo_params
    params:
      auth: "Bearer ${secret.API_TOKEN}"
      literal: "$${secret.API_TOKEN}"
      who: "${user.who}"
    retry: {max_attempts: 2, initial_backoff: 0}
"""
MISSING = """\
name: missing-secret
tasks:
  - id: call
    agent: echo_params
    params: {headers: {x-key: "${secret.NOT_THERE}"}}
"""


@dataclass
class Stack:
    orchestrator: str
    store: str
    secrets: Path
    received: Path
    tmp: Path
    procs: list[Proc]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DAGWIRE_ORCHESTRATOR_ADDR": self.orchestrator,
            "DAGWIRE_STORE_ADDR": self.store,
        }

    def logs(self) -> str:
        return "\n".join(p.log_path.read_text(errors="replace") for p in self.procs)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("secrets-stack")
    secrets = tmp / "secrets"
    (secrets / "default").mkdir(parents=True)
    (secrets / "default" / "API_TOKEN").write_text(VALUE + "\n")  # as Kubernetes writes it
    received = tmp / "received.jsonl"
    # mTLS, tokens and grants on, as `dagwire up --secure` runs them; this process and the CLI
    # act as the admin, the echoing adapter as an adapter principal of its own
    setup = prepare_secure(tmp, host="127.0.0.1", addresses={})
    issue_certificate(setup.folder, "secret-echo", "127.0.0.1")
    echo_token = add_principal(
        setup.auth_file, name="secret-echo", roles=["adapter"], agents=["echo_params"]
    )
    echo_env = setup.service_env("toolbox") | {
        "DAGWIRE_TLS_CERT": str(setup.folder / "secret-echo.pem"),
        "DAGWIRE_TLS_KEY": str(setup.folder / "secret-echo.key"),
        "DAGWIRE_TLS_CLIENT_CERT": str(setup.folder / "secret-echo.pem"),
        "DAGWIRE_TLS_CLIENT_KEY": str(setup.folder / "secret-echo.key"),
        "DAGWIRE_TOKEN": echo_token,
        "DAGWIRE_TOKEN_FILE": "",
    }
    saved = dict(os.environ)
    os.environ.update(setup.client_env("admin"))
    store_addr, dispatcher_addr = free_address(), free_address()
    adapter_addr, orchestrator_addr = free_address(), free_address()
    store = Proc(
        "store",
        ["dagwire_services.store", "--listen-addr", store_addr, "--data-dir", str(tmp / "d")],
        store_addr,
        tmp / "store.log",
        env=setup.service_env("store"),
    )
    dispatcher = Proc(
        "dispatcher",
        ["dagwire_services.dispatcher", "--listen-addr", dispatcher_addr],
        dispatcher_addr,
        tmp / "dispatcher.log",
        env=setup.service_env("dispatcher"),
    )
    adapter = Proc(
        "secret-echo",
        [
            str(ADAPTER),
            "--listen-addr",
            adapter_addr,
            "--dispatcher-addr",
            dispatcher_addr,
            "--store-addr",
            store_addr,
        ],
        adapter_addr,
        tmp / "adapter.log",
        env={
            **echo_env,
            "SECRET_ECHO_RECEIVED": str(received),
            # a script, not a module: put the checkout's `dagwire` first on its path
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
        },
    )
    orchestrator = Proc(
        "orchestrator",
        [
            "dagwire_services.orchestrator",
            "--listen-addr",
            orchestrator_addr,
            "--store-addr",
            store_addr,
            "--dispatcher-addr",
            dispatcher_addr,
        ],
        orchestrator_addr,
        tmp / "orchestrator.log",
        env={
            **setup.service_env("orchestrator"),
            "DAGWIRE_SECRETS_DIR": str(secrets),
            "DAGWIRE_LOG_LEVEL": "debug",
        },
    )
    procs = [store, dispatcher, adapter, orchestrator]

    async def start() -> None:
        await start_all(store, dispatcher)
        await start_all(adapter)
        await wait_adapters(dispatcher_addr, {adapter_addr})
        await start_all(orchestrator)

    try:
        asyncio.run(start())
        yield Stack(
            orchestrator_addr, store_addr, secrets, received, tmp, [store, dispatcher, orchestrator]
        )
    finally:
        for proc in reversed(procs):
            proc.stop()
        os.environ.clear()
        os.environ.update(saved)


def dagwire(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DAGWIRE, *args],
        capture_output=True,
        text=True,
        env=stack.env(),
        cwd=REPO_ROOT,
        timeout=60,
    )


def spec_file(stack: Stack, name: str, text: str) -> Path:
    path = stack.tmp / name
    path.write_text(text)
    return path


async def test_the_value_reaches_the_adapter_and_nothing_else(stack: Stack) -> None:
    spec = spec_file(stack, "secret.yaml", SPEC)
    as_json = dagwire(stack, "run", str(spec), "--var", "who=json", "--output", "json")
    as_text = dagwire(stack, "run", str(spec), "--var", "who=${secret.API_TOKEN}")

    # the CLI: both runs succeeded on their second attempt, the first one's error redacted
    assert as_json.returncode == 0, as_json.stderr
    assert as_text.returncode == 0, as_text.stderr
    summary = json.loads(as_json.stdout)
    assert summary["status"] == "succeeded"
    assert summary["nodes"]["call"]["attempts"] == 2
    assert "[secret API_TOKEN]" in as_json.stderr + as_text.stderr + as_text.stdout
    for shown in (as_json.stdout, as_json.stderr, as_text.stdout, as_text.stderr):
        assert VALUE not in shown, shown

    # the adapter got the value at each attempt; `$${` and a --var spelling one stay text
    received = [json.loads(line) for line in stack.received.read_text().splitlines()]
    assert (
        received[:2]
        == [{"auth": f"Bearer {VALUE}", "literal": "${secret.API_TOKEN}", "who": "json"}] * 2
    )
    assert (
        received[2:]
        == [
            {
                "auth": f"Bearer {VALUE}",
                "literal": "${secret.API_TOKEN}",
                "who": "${secret.API_TOKEN}",
            }
        ]
        * 2
    )

    run_id = summary["run_id"]
    async with OrchestratorClient(stack.orchestrator) as client:
        record = await client.get_run(run_id)
        events = await collect_events(client, run_id)
    executions = RemoteExecutionStore(stack.store)
    artifacts = RemoteArtifactStore(stack.store)
    try:
        records = await executions.list_records(run_id)
        (output,) = record.nodes["call"].artifacts
        assert output.artifact_id is not None
        content = (await artifacts.load(output.artifact_id)).content
    finally:
        await executions.aclose()
        await artifacts.aclose()

    # what the adapter writes into its outputs is its business (and shows it got the value)
    assert content is not None and VALUE in content.decode()

    assert record.status == RunStatus.SUCCEEDED
    assert "${secret.API_TOKEN}" in json.dumps(record.spec)  # the spec keeps the name only
    assert VALUE not in json.dumps(record.to_json())
    failed = [e for e in events if e.kind is RunEventKind.ATTEMPT_FAILED]
    assert len(failed) == 1
    assert failed[0].error is not None
    assert "Bearer [secret API_TOKEN]" in failed[0].error
    for event in events:
        assert VALUE not in json.dumps(event.to_json()), event
    assert [r.status for r in records] == [TaskStatus.FAILED, TaskStatus.SUCCEEDED]
    assert records[0].error is not None and "[secret API_TOKEN]" in records[0].error
    for execution in records:
        assert VALUE not in json.dumps(execution.to_json())

    logs = stack.logs()
    assert "attempt failed" in logs
    assert VALUE not in logs


async def test_a_missing_secret_is_refused_at_start_and_nothing_is_stored(stack: Stack) -> None:
    async with OrchestratorClient(stack.orchestrator) as client:
        before = [r.run_id for r in (await client.list_runs(page_size=1000)).runs]
        with pytest.raises(WorkflowValidationError) as caught:
            await client.start_run(MISSING)
        result = dagwire(stack, "run", str(spec_file(stack, "missing.yaml", MISSING)))
        after = [r.run_id for r in (await client.list_runs(page_size=1000)).runs]

    folder = stack.secrets / "default"
    expected = (
        "task 'call': field 'params.headers.x-key': secret 'NOT_THERE' not found: "
        f"no file NOT_THERE in {folder}"
    )
    assert expected in str(caught.value)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert after == before
