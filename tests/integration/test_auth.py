"""Tokens, roles and namespaces on real services on loopback (docs/security.md).

The store, dispatcher, toolbox and orchestrator processes serve mTLS only (certificates from
tests/certs.py) and have ``DAGWIRE_AUTH_FILE`` set: they check every call's token, call each
other with their own service tokens, and the CLI sends its token. Each test names the rule it
proves: a workflow runs end to end for a client; no token or an unknown one is
UNAUTHENTICATED (CLI exit 4); a role that may not make a call is PERMISSION_DENIED naming the
principal and its role, and changes nothing; health stays open and reflection needs a token;
adapters cannot take another principal's instance id or serve agent keys they were not
given; the auth file is re-read without a restart; a client sees and touches only the runs
of its namespaces, and another namespace's run reads as unknown; adapters reach the store
only with their attempts' grants.
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
from dagwire.grants import GrantKey
from dagwire.rpc.channels import client_channel
from dagwire.rpc.orchestrator_client import OrchestratorClient
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
    grants: GrantKey
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
        "team-b": add_principal(auth_file, name="team-b", roles=["client"], namespaces=["team-b"]),
        "both": add_principal(
            auth_file, name="both", roles=["client"], namespaces=["team-b", "default"]
        ),
        "orchestrator": add_principal(auth_file, name="orchestrator", roles=["service"]),
        "dispatcher": add_principal(auth_file, name="dispatcher", roles=["service"]),
        "toolbox": add_principal(auth_file, name="toolbox", roles=["adapter"], agents=["*"]),
        "rogue": add_principal(auth_file, name="rogue", roles=["adapter"], agents=["echo"]),
        "ops": add_principal(auth_file, name="ops", roles=["admin"]),
    }
    grant_key = tmp / "grant.key"
    grant_key.write_bytes(os.urandom(48).hex().encode())
    ca = CertificateAuthority(tmp / "pki", "ca")

    def tls(name: str) -> dict[str, str]:  # mTLS only, the service's own certificate
        identity = ca.issue(name)
        return {
            "DAGWIRE_TLS_CERT": str(identity.cert),
            "DAGWIRE_TLS_KEY": str(identity.key),
            "DAGWIRE_TLS_CLIENT_CA": str(ca.cert),
            "DAGWIRE_TLS_CA": str(ca.cert),
        }

    user = ca.issue("user")
    saved = dict(os.environ)
    os.environ.update(  # this process and the CLI dial mTLS as `user`
        {
            "DAGWIRE_TLS_CA": str(ca.cert),
            "DAGWIRE_TLS_CLIENT_CERT": str(user.cert),
            "DAGWIRE_TLS_CLIENT_KEY": str(user.key),
        }
    )
    base = {"DAGWIRE_AUTH_FILE": str(auth_file)}
    granting = base | {"DAGWIRE_GRANT_KEY_FILE": str(grant_key)}
    store_addr, dispatcher_addr = free_address(), free_address()
    store = Proc(
        "store",
        ["dagwire_services.store", "--listen-addr", store_addr, "--data-dir", str(tmp / "d")],
        store_addr,
        tmp / "store.log",
        env=granting | tls("store"),  # the store calls no one: it needs no token
    )
    dispatcher = Proc(
        "dispatcher",
        ["dagwire_services.dispatcher", "--listen-addr", dispatcher_addr],
        dispatcher_addr,
        tmp / "dispatcher.log",
        env=granting | tls("dispatcher") | {"DAGWIRE_TOKEN": tokens["dispatcher"]},
    )
    toolbox = toolbox_proc(tmp, dispatcher_addr, store_addr)
    toolbox.env = base | tls("toolbox") | {"DAGWIRE_TOKEN": tokens["toolbox"]}
    orchestrator = orchestrator_proc(tmp, store_addr, dispatcher_addr)
    orchestrator.env = base | tls("orchestrator") | {"DAGWIRE_TOKEN": tokens["orchestrator"]}
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
            GrantKey(grant_key.read_bytes()),
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
        os.environ.clear()
        os.environ.update(saved)


async def _adapters(dispatcher: str, token: str) -> list[dispatcher_service_pb2.AdapterInstance]:
    async with client_channel(dispatcher) as channel:
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
        async with client_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(channel)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, address


async def test_health_stays_open_and_reflection_needs_a_token(secured: SecuredStack) -> None:
    async with client_channel(secured.orchestrator) as channel:
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
    async with client_channel(secured.store) as channel:
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
        async with client_channel(secured.toolbox) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await adapter_service_pb2_grpc.AgentAdapterServiceStub(channel).Execute(
                    request, metadata=_bearer(secured.tokens[name]), timeout=5
                )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
        assert f"principal {name!r}" in (caught.value.details() or "")
        async with client_channel(secured.dispatcher) as channel:
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
    async with client_channel(secured.dispatcher) as channel:
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
    async with client_channel(secured.dispatcher) as channel:
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


# ------------------------------------------------------------------ namespaces


def _run_in(stack: SecuredStack, tmp_path: Path, token: str, *args: str) -> dict[str, object]:
    spec = tmp_path / "hello.yaml"
    spec.write_text(HELLO)
    done = stack.cli("run", str(spec), "--output", "json", *args, token=token)
    assert done.returncode == 0, done.stderr
    summary: dict[str, object] = json.loads(done.stdout)
    return summary


def _listed(stack: SecuredStack, token: str, *args: str) -> list[dict[str, object]]:
    listed = stack.cli("runs", "--output", "json", "--limit", "1000", *args, token=token)
    assert listed.returncode == 0, listed.stderr
    runs: list[dict[str, object]] = json.loads(listed.stdout)
    return runs


async def test_another_namespaces_run_reads_exactly_as_an_unknown_one(
    secured: SecuredStack, tmp_path: Path
) -> None:
    theirs = _run_in(secured, tmp_path, secured.tokens["team-b"])
    run_id = str(theirs["run_id"])
    nodes = theirs["nodes"]
    assert isinstance(nodes, dict)
    artifact_id = nodes["both"]["artifacts"][0]["artifact_id"]
    unknown_run, unknown_artifact = "0190a0b0-0000-7000-8000-000000000000", "a" * 26
    ci = secured.tokens["ci"]
    # the CLI: same exit status, same words, for their run and an unknown one
    for command in (("watch",), ("cancel",)):
        hidden = secured.cli(*command, run_id, token=ci)
        unknown = secured.cli(*command, unknown_run, token=ci)
        assert hidden.returncode == unknown.returncode == 2, (hidden.stderr, unknown.stderr)
        assert hidden.stderr.replace(run_id, "ID") == unknown.stderr.replace(unknown_run, "ID")
    hidden = secured.cli("artifacts", "get", artifact_id, token=ci)
    unknown = secured.cli("artifacts", "get", unknown_artifact, token=ci)
    assert hidden.returncode == unknown.returncode == 2, (hidden.stderr, unknown.stderr)
    assert hidden.stderr.replace(artifact_id, "ID") == unknown.stderr.replace(
        unknown_artifact, "ID"
    )
    # the store's reads, called directly: NOT_FOUND or nothing, as for an unknown id
    metadata = _bearer(ci)
    async with client_channel(secured.store) as channel:
        executions = store_service_pb2_grpc.ExecutionStoreServiceStub(channel)
        artifacts = store_service_pb2_grpc.ArtifactStoreServiceStub(channel)
        for rid in (run_id, unknown_run):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await executions.GetRunRecord(
                    store_service_pb2.GetRunRecordRequest(run_id=rid), metadata=metadata
                )
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            records = await executions.ListExecutionRecords(
                store_service_pb2.ListExecutionRecordsRequest(run_id=rid), metadata=metadata
            )
            events = await executions.ReadRunEvents(
                store_service_pb2.ReadRunEventsRequest(run_id=rid), metadata=metadata
            )
            listed = await artifacts.ListArtifacts(
                store_service_pb2.ListArtifactsRequest(run_id=rid), metadata=metadata
            )
            assert (list(records.records), list(events.events), list(listed.artifacts)) == (
                [],
                [],
                [],
            )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await artifacts.StatArtifact(
                store_service_pb2.StatArtifactRequest(artifact_id=artifact_id), metadata=metadata
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == f"artifact {artifact_id!r} not found"
        runs = await executions.ListRunRecords(
            store_service_pb2.ListRunRecordsRequest(page_size=1000), metadata=metadata
        )
        assert run_id not in {r.run_id for r in runs.runs}
        # their own token reads it all
        mine = await executions.GetRunRecord(
            store_service_pb2.GetRunRecordRequest(run_id=run_id),
            metadata=_bearer(secured.tokens["team-b"]),
        )
        assert mine.run.namespace == "team-b"
    fetched = secured.cli("artifacts", "get", artifact_id, token=secured.tokens["team-b"])
    assert fetched.returncode == 0, fetched.stderr


def test_listings_show_only_the_callers_namespace_and_all_namespaces_is_for_admins(
    secured: SecuredStack, tmp_path: Path
) -> None:
    ours = str(_run_in(secured, tmp_path, secured.tokens["ci"])["run_id"])
    theirs = str(_run_in(secured, tmp_path, secured.tokens["team-b"])["run_id"])
    ci_runs = {str(r["run_id"]): r["namespace"] for r in _listed(secured, secured.tokens["ci"])}
    assert ci_runs.get(ours) == "default" and theirs not in ci_runs
    b_runs = {str(r["run_id"]) for r in _listed(secured, secured.tokens["team-b"])}
    assert theirs in b_runs and ours not in b_runs
    # a principal with two namespaces: its first by default, the other by --namespace
    both = secured.tokens["both"]
    assert theirs in {str(r["run_id"]) for r in _listed(secured, both)}
    assert ours in {str(r["run_id"]) for r in _listed(secured, both, "--namespace", "default")}
    refused = secured.cli("runs", "--namespace", "team-b", token=secured.tokens["ci"])
    assert refused.returncode == 4, refused.stderr
    assert "may not use namespace 'team-b' (its namespaces: default)" in refused.stderr
    refused = secured.cli("runs", "--all-namespaces", token=secured.tokens["ci"])
    assert refused.returncode == 4 and "admins only" in refused.stderr, refused.stderr
    every = {
        str(r["run_id"]): r["namespace"]
        for r in _listed(secured, secured.tokens["ops"], "--all-namespaces")
    }
    assert every[ours] == "default" and every[theirs] == "team-b"
    table = secured.cli("runs", "--all-namespaces", token=secured.tokens["ops"])
    assert any(line.startswith("team-b ") and theirs in line for line in table.stdout.splitlines())


def test_starting_in_a_namespace_not_ones_own_is_refused_and_stores_nothing(
    secured: SecuredStack, tmp_path: Path
) -> None:
    before = _listed(secured, secured.tokens["ops"], "--all-namespaces")
    spec = tmp_path / "hello.yaml"
    spec.write_text(HELLO)
    refused = secured.cli("run", str(spec), "--namespace", "team-b", token=secured.tokens["ci"])
    assert refused.returncode == 4, refused.stderr
    assert "may not use namespace 'team-b'" in refused.stderr
    invalid = secured.cli("run", str(spec), "--namespace", "Team_B", token=secured.tokens["ops"])
    assert invalid.returncode == 2, invalid.stderr
    assert "'Team_B' is not a valid namespace" in invalid.stderr
    assert _listed(secured, secured.tokens["ops"], "--all-namespaces") == before


async def test_one_request_id_in_two_namespaces_starts_two_runs(secured: SecuredStack) -> None:
    run_ids = {}
    for name, namespace in (("ci", "default"), ("team-b", "team-b")):
        os.environ["DAGWIRE_TOKEN"] = secured.tokens[name]
        try:
            async with OrchestratorClient(secured.orchestrator) as client:
                run_ids[name] = await client.start_run(HELLO, request_id="shared-request-id")
                again = await client.start_run(HELLO, request_id="shared-request-id")
                assert again == run_ids[name]
                record = await client.get_run(run_ids[name])
                assert record.namespace == namespace
        finally:
            del os.environ["DAGWIRE_TOKEN"]
    assert run_ids["ci"] != run_ids["team-b"]


# ------------------------------------------------------------------ per-attempt store grants

BIG_SIZE = 1_500_000  # above the 1 MiB inline limit: uploaded and fetched by reference


def test_an_adapter_moves_large_artifacts_with_its_attempts_grants(
    secured: SecuredStack, tmp_path: Path
) -> None:
    spec = tmp_path / "big.yaml"
    spec.write_text(
        "name: big\n"
        "tasks:\n"
        f"  - {{id: big, agent: blob, params: {{size: {BIG_SIZE}, seed: 3}}}}\n"
        "  - {id: loud, agent: upper, depends_on: [big]}\n"
    )
    done = secured.cli("run", str(spec), "--output", "json", token=secured.tokens["ci"])
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded", summary
    (big,) = summary["nodes"]["big"]["artifacts"]
    (loud,) = summary["nodes"]["loud"]["artifacts"]
    assert big["size"] == BIG_SIZE  # uploaded by reference with the grant of `big`
    assert loud["size"] > BIG_SIZE // 2  # `big` fetched with the grant of `loud`, then stored


async def _artifact_of(stack: SecuredStack, tmp_path: Path) -> tuple[str, str]:
    summary = _run_hello(stack, tmp_path, stack.tokens["ci"])
    nodes = summary["nodes"]
    assert isinstance(nodes, dict)
    return str(summary["run_id"]), str(nodes["greet"]["artifacts"][0]["artifact_id"])


async def test_an_adapter_token_alone_reads_and_writes_nothing_in_the_store(
    secured: SecuredStack, tmp_path: Path
) -> None:
    _, artifact_id = await _artifact_of(secured, tmp_path)
    async with client_channel(secured.store) as channel:
        stub = store_service_pb2_grpc.ArtifactStoreServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.StatArtifact(
                store_service_pb2.StatArtifactRequest(artifact_id=artifact_id),
                metadata=_bearer(secured.tokens["toolbox"]),
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "principal 'toolbox' (role adapter)" in (caught.value.details() or "")


async def test_a_grant_reads_its_run_only_stores_its_attempt_only_and_expires(
    secured: SecuredStack, tmp_path: Path
) -> None:
    run_a, artifact_a = await _artifact_of(secured, tmp_path)
    _, artifact_b = await _artifact_of(secured, tmp_path)
    grant = secured.grants.mint(run_a, "shout", 1, seconds=60)
    async with client_channel(secured.store) as channel:
        stub = store_service_pb2_grpc.ArtifactStoreServiceStub(channel)

        async def stat(artifact_id: str, token: str) -> grpc.aio.AioRpcError | None:
            try:
                await stub.StatArtifact(
                    store_service_pb2.StatArtifactRequest(artifact_id=artifact_id),
                    metadata=_bearer(token),
                )
            except grpc.aio.AioRpcError as exc:
                return exc
            return None

        assert await stat(artifact_a, grant) is None
        other_run = await stat(artifact_b, grant)
        assert other_run is not None and other_run.code() == grpc.StatusCode.NOT_FOUND
        assert other_run.details() == f"artifact {artifact_b!r} not found"
        forged = GrantKey(b"k" * 48).mint(run_a, "shout", 1, seconds=60)
        expired = secured.grants.mint(run_a, "shout", 1, seconds=-400)
        for token in (forged, expired):
            refused = await stat(artifact_a, token)
            assert refused is not None and refused.code() == grpc.StatusCode.UNAUTHENTICATED

        async def upload(run_id: str, node_id: str) -> store_service_pb2.PutArtifactResponse:
            header = store_service_pb2.PutArtifactRequest(
                header=store_service_pb2.ArtifactHeader(name="out", run_id=run_id, node_id=node_id)
            )
            chunk = store_service_pb2.PutArtifactRequest(chunk=b"forged output")
            reply: store_service_pb2.PutArtifactResponse = await stub.PutArtifact(
                iter([header, chunk]), metadata=_bearer(grant)
            )
            return reply

        stored = await upload("", "")
        assert (stored.artifact.run_id, stored.artifact.node_id) == (run_a, "shout")
        for run_id, node_id in ((run_a, "greet"), ("another-run", "shout")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await upload(run_id, node_id)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "may store outputs of that attempt only" in (caught.value.details() or "")
    async with client_channel(secured.store) as channel:
        executions = store_service_pb2_grpc.ExecutionStoreServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await executions.GetRunRecord(
                store_service_pb2.GetRunRecordRequest(run_id=run_a), metadata=_bearer(grant)
            )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "store grant of attempt" in (caught.value.details() or "")
