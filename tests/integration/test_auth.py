"""Tokens and roles on real services on loopback (docs/security.md): with ``DAGWIRE_AUTH_FILE``
set, the store, dispatcher, toolbox and orchestrator processes check every call's token, the
services call each other with their own service tokens, and the CLI sends its token.

Each test names the rule it proves: a workflow runs end to end for a client; no token or an
unknown one is UNAUTHENTICATED (CLI exit 4); a role that may not make a call is
PERMISSION_DENIED naming the principal and its role, and changes nothing; health stays open
and reflection needs a token; adapters cannot take another principal's instance id or serve
agent keys they were not given; the auth file is re-read without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
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
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dagwire.auth import AuthFile, add_principal, load_principals
from dagwire.rpc.channels import client_channel
from dagwire.rpc.serve import start_server
from dagwire.rpc.tls import TlsConfig
from dagwire.v1 import (
    adapter_service_pb2,
    adapter_service_pb2_grpc,
    common_pb2,
    dispatcher_service_pb2,
    dispatcher_service_pb2_grpc,
    store_service_pb2,
    store_service_pb2_grpc,
)
from tests.certs import CertificateAuthority
from tests.servers import REPO_ROOT
from tests.stack import HELLO, Proc, free_address, orchestrator_proc, start_all, toolbox_proc

DAGWIRE = [sys.executable, "-m", "dagwire_cli.main"]


@dataclass
class SecuredStack:
    """The running services, the auth file and the tokens of its principals."""

    auth_file: Path
    tokens: dict[str, str]
    store: str
    dispatcher: str
    orchestrator: str
    toolbox: str
    env: dict[str, str]

    def cli(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        env.pop("DAGWIRE_TOKEN", None)
        if token is not None:
            env["DAGWIRE_TOKEN"] = token
        return subprocess.run(
            [*DAGWIRE, *args], capture_output=True, env=env, cwd=REPO_ROOT, timeout=60, text=True
        )


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredStack]:
    tmp = tmp_path_factory.mktemp("auth-stack")
    auth_file = tmp / "auth.yaml"
    tokens = {
        "ci": add_principal(auth_file, name="ci", roles=["client"]),
        "orchestrator": add_principal(auth_file, name="orchestrator", roles=["service"]),
        "dispatcher": add_principal(auth_file, name="dispatcher", roles=["service"]),
        "toolbox": add_principal(auth_file, name="toolbox", roles=["adapter"], agents=["*"]),
        "rogue": add_principal(auth_file, name="rogue", roles=["adapter"], agents=["echo"]),
        "ops": add_principal(auth_file, name="ops", roles=["admin"]),
    }
    base = {"DAGWIRE_AUTH_FILE": str(auth_file)}
    store_addr, dispatcher_addr = free_address(), free_address()
    store = Proc(
        "store",
        ["dagwire_services.store", "--listen-addr", store_addr, "--data-dir", str(tmp / "d")],
        store_addr,
        tmp / "store.log",
        env=base,  # the store calls no one: it needs no token of its own
    )
    dispatcher = Proc(
        "dispatcher",
        ["dagwire_services.dispatcher", "--listen-addr", dispatcher_addr],
        dispatcher_addr,
        tmp / "dispatcher.log",
        env=base | {"DAGWIRE_TOKEN": tokens["dispatcher"]},
    )
    toolbox = toolbox_proc(tmp, dispatcher_addr, store_addr)
    toolbox.env = base | {"DAGWIRE_TOKEN": tokens["toolbox"]}
    orchestrator = orchestrator_proc(tmp, store_addr, dispatcher_addr)
    orchestrator.env = base | {"DAGWIRE_TOKEN": tokens["orchestrator"]}
    procs = [store, dispatcher, toolbox, orchestrator]

    async def start() -> None:
        await start_all(store, dispatcher, toolbox)
        deadline = time.monotonic() + 20
        while not await _adapters(dispatcher_addr, tokens["ops"]):
            assert time.monotonic() < deadline, toolbox.log_tail()
            await asyncio.sleep(0.1)
        await start_all(orchestrator)

    try:
        asyncio.run(start())
        yield SecuredStack(
            auth_file,
            tokens,
            store_addr,
            dispatcher_addr,
            orchestrator.address,
            toolbox.address,
            {
                **os.environ,
                "DAGWIRE_ORCHESTRATOR_ADDR": orchestrator.address,
                "DAGWIRE_STORE_ADDR": store_addr,
                "DAGWIRE_DISPATCHER_ADDR": dispatcher_addr,
            },
        )
    finally:
        for proc in reversed(procs):
            proc.stop()


async def _adapters(dispatcher: str, token: str) -> list[dispatcher_service_pb2.AdapterInstance]:
    async with grpc.aio.insecure_channel(dispatcher) as channel:
        reply = await dispatcher_service_pb2_grpc.DispatcherServiceStub(channel).ListAdapters(
            dispatcher_service_pb2.ListAdaptersRequest(), metadata=_bearer(token), timeout=5
        )
    return list(reply.adapters)


def _run_hello(stack: SecuredStack, tmp_path: Path, token: str) -> dict[str, object]:
    spec = tmp_path / "hello.yaml"
    spec.write_text(HELLO)
    done = stack.cli("run", str(spec), "--output", "json", token=token)
    assert done.returncode == 0, done.stderr
    summary: dict[str, object] = json.loads(done.stdout)
    return summary


# ------------------------------------------------------------------ the happy path


def test_a_client_token_runs_a_workflow_through_services_that_check_each_others_tokens(
    secured: SecuredStack, tmp_path: Path
) -> None:
    summary = _run_hello(secured, tmp_path, secured.tokens["ci"])
    assert summary["status"] == "succeeded"
    nodes = summary["nodes"]
    assert isinstance(nodes, dict)
    (both,) = nodes["both"]["artifacts"]
    expected = b"HELLO GRPC / hello gRPC"
    assert both["sha256"] == hashlib.sha256(expected).hexdigest()
    fetched = secured.cli("artifacts", "get", both["artifact_id"], token=secured.tokens["ci"])
    assert (fetched.returncode, fetched.stdout) == (0, expected.decode()), fetched.stderr
    listed = secured.cli("adapters", token=secured.tokens["ci"])
    assert listed.returncode == 0 and "healthy" in listed.stdout, listed.stderr


def test_the_token_file_option_is_the_token_of_every_call(
    secured: SecuredStack, tmp_path: Path
) -> None:
    token_file = tmp_path / "ci.token"
    token_file.write_text(secured.tokens["ci"] + "\n")
    listed = secured.cli("--token-file", str(token_file), "runs")
    assert listed.returncode == 0, listed.stderr


# ------------------------------------------------------------------ UNAUTHENTICATED


def test_no_token_or_an_unknown_one_is_exit_4_naming_the_missing_token(
    secured: SecuredStack,
) -> None:
    for token in (None, "dgw_this-token-is-in-no-auth-file"):
        refused = secured.cli("runs", token=token)
        assert refused.returncode == 4, refused.stderr
        assert "not authenticated" in refused.stderr
        assert "needs a token" in refused.stderr
        assert "Traceback" not in refused.stderr


async def test_every_service_refuses_a_call_without_a_token(secured: SecuredStack) -> None:
    calls = {
        secured.store: lambda ch: store_service_pb2_grpc.ExecutionStoreServiceStub(
            ch
        ).ListRunRecords(store_service_pb2.ListRunRecordsRequest(), timeout=5),
        secured.dispatcher: lambda ch: dispatcher_service_pb2_grpc.DispatcherServiceStub(
            ch
        ).ListAdapters(dispatcher_service_pb2.ListAdaptersRequest(), timeout=5),
        secured.toolbox: lambda ch: adapter_service_pb2_grpc.AgentAdapterServiceStub(ch).Describe(
            adapter_service_pb2.DescribeRequest(), timeout=5
        ),
    }
    for address, call in calls.items():
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(channel)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, address


async def test_health_stays_open_and_reflection_needs_a_token(secured: SecuredStack) -> None:
    async with grpc.aio.insecure_channel(secured.orchestrator) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.ServerReflectionInfo(iter([request]), timeout=5):
                pass
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        names = []
        async for reply in stub.ServerReflectionInfo(
            iter([request]), metadata=_bearer(secured.tokens["ci"]), timeout=5
        ):
            names += [s.name for s in reply.list_services_response.service]
        assert "dagwire.v1.OrchestratorService" in names


# ------------------------------------------------------------------ PERMISSION_DENIED


async def test_a_client_cannot_rewrite_a_run_record_or_add_execution_records(
    secured: SecuredStack, tmp_path: Path
) -> None:
    summary = _run_hello(secured, tmp_path, secured.tokens["ci"])
    run_id = str(summary["run_id"])
    ci = _bearer(secured.tokens["ci"])
    async with grpc.aio.insecure_channel(secured.store) as channel:
        stub = store_service_pb2_grpc.ExecutionStoreServiceStub(channel)
        before = await stub.GetRunRecord(
            store_service_pb2.GetRunRecordRequest(run_id=run_id), metadata=ci, timeout=5
        )
        forged = common_pb2.Run()
        forged.CopyFrom(before.run)
        forged.status = common_pb2.RUN_STATUS_FAILED
        forged.name = "forged"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SaveRunRecord(
                store_service_pb2.SaveRunRecordRequest(run=forged), metadata=ci, timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "principal 'ci' (role client) may not call" in (caught.value.details() or "")
        assert "SaveRunRecord" in (caught.value.details() or "")
        record = common_pb2.ExecutionRecord(run_id=run_id, node_id="greet", attempt=9, agent="echo")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RecordExecutions(
                store_service_pb2.RecordExecutionsRequest(records=[record]),
                metadata=ci,
                timeout=5,
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        after = await stub.GetRunRecord(
            store_service_pb2.GetRunRecordRequest(run_id=run_id), metadata=ci, timeout=5
        )
        listed = await stub.ListExecutionRecords(
            store_service_pb2.ListExecutionRecordsRequest(run_id=run_id), metadata=ci, timeout=5
        )
    assert after.run == before.run
    assert all(r.attempt != 9 for r in listed.records)


async def test_only_services_dispatch_and_execute(secured: SecuredStack) -> None:
    request = adapter_service_pb2.ExecuteRequest(
        agent="echo", params_json='{"text": "x"}', run_id="r", node_id="n", attempt=1
    )
    for name in ("ci", "toolbox"):
        async with grpc.aio.insecure_channel(secured.toolbox) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await adapter_service_pb2_grpc.AgentAdapterServiceStub(channel).Execute(
                    request, metadata=_bearer(secured.tokens[name]), timeout=5
                )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
        assert f"principal {name!r}" in (caught.value.details() or "")
        async with grpc.aio.insecure_channel(secured.dispatcher) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await dispatcher_service_pb2_grpc.DispatcherServiceStub(channel).Dispatch(
                    dispatcher_service_pb2.DispatchRequest(), metadata=_bearer(secured.tokens[name])
                )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, name


def test_a_refused_role_is_exit_4_naming_the_principal(secured: SecuredStack) -> None:
    refused = secured.cli("runs", token=secured.tokens["toolbox"])
    assert refused.returncode == 4, refused.stderr
    assert "not allowed" in refused.stderr
    assert "principal 'toolbox' (role adapter) may not call OrchestratorService.ListRuns" in (
        refused.stderr
    )


# ------------------------------------------------------------------ adapters cannot hijack


async def test_an_adapter_cannot_take_over_another_principals_instance_id(
    secured: SecuredStack,
) -> None:
    (toolbox,) = await _adapters(secured.dispatcher, secured.tokens["ci"])
    rogue = _bearer(secured.tokens["rogue"])
    async with grpc.aio.insecure_channel(secured.dispatcher) as channel:
        stub = dispatcher_service_pb2_grpc.DispatcherServiceStub(channel)
        hijack = dispatcher_service_pb2.RegisterAdapterRequest(
            instance_id=toolbox.instance_id, address=free_address(), agents=["echo"], capacity=8
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RegisterAdapter(hijack, metadata=rogue, timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "another principal registered it" in (caught.value.details() or "")
        for call in (stub.Heartbeat, stub.DeregisterAdapter):
            request_type = (
                dispatcher_service_pb2.HeartbeatRequest
                if call is stub.Heartbeat
                else dispatcher_service_pb2.DeregisterAdapterRequest
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request_type(instance_id=toolbox.instance_id), metadata=rogue)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DeregisterAdapter(
                dispatcher_service_pb2.DeregisterAdapterRequest(instance_id=toolbox.instance_id),
                metadata=_bearer(secured.tokens["ci"]),
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "(role client)" in (caught.value.details() or "")
    (still,) = await _adapters(secured.dispatcher, secured.tokens["ci"])
    assert (still.instance_id, still.address) == (toolbox.instance_id, secured.toolbox)


async def test_an_adapter_registers_only_the_agent_keys_it_was_given(
    secured: SecuredStack,
) -> None:
    rogue = _bearer(secured.tokens["rogue"])
    address = free_address()
    async with grpc.aio.insecure_channel(secured.dispatcher) as channel:
        stub = dispatcher_service_pb2_grpc.DispatcherServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RegisterAdapter(
                dispatcher_service_pb2.RegisterAdapterRequest(
                    instance_id="rogue-1", address=address, agents=["echo", "upper"], capacity=1
                ),
                metadata=rogue,
                timeout=5,
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not serve agent key 'upper' (its agents: echo)" in (
            caught.value.details() or ""
        )
        # its own key, its own instance id: allowed, and then removed again
        await stub.RegisterAdapter(
            dispatcher_service_pb2.RegisterAdapterRequest(
                instance_id="rogue-1", address=address, agents=["echo"], capacity=1
            ),
            metadata=rogue,
            timeout=5,
        )
        await stub.DeregisterAdapter(
            dispatcher_service_pb2.DeregisterAdapterRequest(instance_id="rogue-1"),
            metadata=rogue,
            timeout=5,
        )
    assert [a.address for a in await _adapters(secured.dispatcher, secured.tokens["ci"])] == [
        secured.toolbox
    ]


# ------------------------------------------------------------------ the auth file


def test_a_principal_added_while_the_services_run_is_accepted_within_seconds(
    secured: SecuredStack,
) -> None:
    token = add_principal(secured.auth_file, name="late-ci", roles=["client"])
    deadline = time.monotonic() + 10
    while True:
        listed = secured.cli("runs", token=token)
        if listed.returncode == 0:
            break
        assert listed.returncode == 4, listed.stderr
        assert time.monotonic() < deadline, listed.stderr
        time.sleep(0.3)
    text = secured.auth_file.read_text()
    assert token not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    assert any(p.name == "late-ci" for p in load_principals(text))


# ------------------------------------------------------------------ identity by certificate


async def test_under_mtls_a_certificate_named_in_tls_names_identifies_its_principal(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority(tmp_path, "ca")
    server, known, stranger = ca.issue("server"), ca.issue("svc-a"), ca.issue("stranger")
    auth_file = tmp_path / "auth.yaml"
    add_principal(auth_file, name="svc-a", roles=["service"], tls_names=["svc-a"])
    running = await start_server(
        "127.0.0.1:0",
        [],
        tls=TlsConfig(cert=server.cert, key=server.key, client_ca=ca.cert),
        auth=AuthFile(auth_file),
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        for identity, allowed in ((known, True), (stranger, False)):
            tls = TlsConfig(ca=ca.cert, client_cert=identity.cert, client_key=identity.key)
            async with client_channel(f"127.0.0.1:{running.port}", tls=tls) as channel:
                stub = reflection_pb2_grpc.ServerReflectionStub(channel)
                if allowed:
                    replies = [r async for r in stub.ServerReflectionInfo(iter([request]))]
                    assert replies, "reflection answered nothing"
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        async for _ in stub.ServerReflectionInfo(iter([request]), timeout=5):
                            pass
                    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await running.stop(None)
