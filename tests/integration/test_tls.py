"""TLS and mTLS on real servers on loopback, with real certificates made for the test
(tests/certs.py): a TLS-only stack run end to end through the CLI, refused clients, clear
errors, certificate rotation without restart, and plaintext health next to a TLS port
(docs/security.md)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dagwire.rpc.channels import client_channel
from dagwire.rpc.serve import RunningServer, start_server
from dagwire.rpc.status import error_from_rpc
from dagwire.rpc.tls import TLS_ENV, TlsConfig
from tests.certs import CertificateAuthority, Identity
from tests.servers import REPO_ROOT
from tests.stack import (
    HELLO,
    Proc,
    free_address,
    orchestrator_proc,
    start_all,
    toolbox_proc,
    wait_adapters,
)

DAGWIRE = [sys.executable, "-m", "dagwire_cli.main"]
_NO_TLS = dict.fromkeys(TLS_ENV, "")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, Path]:
    folder = tmp_path_factory.mktemp("pki")
    return CertificateAuthority(folder, "ca"), folder


@pytest.fixture(scope="module")
def ca(pki: tuple[CertificateAuthority, Path]) -> CertificateAuthority:
    return pki[0]


@pytest.fixture(scope="module")
def other_ca(pki: tuple[CertificateAuthority, Path]) -> CertificateAuthority:
    return CertificateAuthority(pki[1] / "other", "other")


async def _check(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(reply.status)


async def _refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    return caught.value


@pytest.fixture
async def mtls_server(
    ca: CertificateAuthority, tmp_path: Path
) -> AsyncIterator[tuple[RunningServer, Identity]]:
    """A server requiring client certificates signed by `ca`, its health on a plaintext port."""
    server = ca.issue("server")
    tls = TlsConfig(cert=server.cert, key=server.key, client_ca=ca.cert, health_addr="127.0.0.1:0")
    running = await start_server("127.0.0.1:0", [], tls=tls)
    yield running, server
    await running.stop(None)


# ------------------------------------------------------------------ refusals and messages


async def test_plaintext_client_is_refused_with_a_hint_naming_tls(
    mtls_server: tuple[RunningServer, Identity],
) -> None:
    running, _ = mtls_server
    assert running.tls
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        refused = await _refused(channel)
    message = str(error_from_rpc(refused))
    assert "if it serves TLS, set DAGWIRE_TLS_CA" in message


async def test_wrong_ca_is_an_unavailable_naming_tls_and_the_setting(
    ca: CertificateAuthority, other_ca: CertificateAuthority, tmp_path: Path
) -> None:
    server = ca.issue("plain-tls-server")
    running = await start_server("127.0.0.1:0", [], tls=TlsConfig(cert=server.cert, key=server.key))
    try:
        wrong = TlsConfig(ca=other_ca.cert)
        async with client_channel(f"127.0.0.1:{running.port}", tls=wrong) as channel:
            refused = await _refused(channel)
        message = str(error_from_rpc(refused))
        assert message.startswith(
            "TLS: the server's certificate is not signed by the CA this client trusts "
            "(DAGWIRE_TLS_CA)"
        ), message
        # the right CA, without a client certificate: this server does not ask for one
        async with client_channel(
            f"127.0.0.1:{running.port}", tls=TlsConfig(ca=ca.cert)
        ) as channel:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await running.stop(None)


async def test_server_name_override_is_checked_for_ipv4_targets(
    ca: CertificateAuthority,
) -> None:
    server = ca.issue("named-server")
    running = await start_server("127.0.0.1:0", [], tls=TlsConfig(cert=server.cert, key=server.key))
    try:
        target = f"ipv4:127.0.0.1:{running.port}"
        good = TlsConfig(ca=ca.cert, server_name="localhost")
        async with client_channel(target, tls=good) as channel:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
        bad = TlsConfig(ca=ca.cert, server_name="store.example")
        async with client_channel(target, tls=bad) as channel:
            refused = await _refused(channel)
        assert "DAGWIRE_TLS_SERVER_NAME" in str(error_from_rpc(refused))
    finally:
        await running.stop(None)


async def test_mtls_refuses_a_client_without_certificate_and_one_signed_by_another_ca(
    mtls_server: tuple[RunningServer, Identity],
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, _ = mtls_server
    address = f"127.0.0.1:{running.port}"
    monkeypatch.setenv("DAGWIRE_TLS_CA", str(ca.cert))  # as a user sets it, no client cert
    async with client_channel(address) as channel:
        refused = await _refused(channel)
    assert "client certificate (DAGWIRE_TLS_CLIENT_CERT)" in str(error_from_rpc(refused))
    stranger = other_ca.issue("stranger")
    foreign = TlsConfig(ca=ca.cert, client_cert=stranger.cert, client_key=stranger.key)
    async with client_channel(address, tls=foreign) as channel:
        await _refused(channel)
    member = ca.issue("member")
    good = TlsConfig(ca=ca.cert, client_cert=member.cert, client_key=member.key)
    async with client_channel(address, tls=good) as channel:
        assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_a_service_uses_its_own_certificate_as_client_identity(
    mtls_server: tuple[RunningServer, Identity], ca: CertificateAuthority
) -> None:
    running, _ = mtls_server
    peer = ca.issue("peer-service")  # another service: a server cert, no client cert set
    own = TlsConfig(ca=ca.cert, cert=peer.cert, key=peer.key)
    async with client_channel(f"127.0.0.1:{running.port}", tls=own) as channel:
        assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------ health and rotation


async def test_health_is_served_alone_on_the_plaintext_health_address(
    mtls_server: tuple[RunningServer, Identity],
) -> None:
    running, _ = mtls_server
    assert running.health_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.health_port}") as channel:
        assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
        reflection = channel.unary_unary("/grpc.reflection.v1alpha.ServerReflection/Nothing")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await reflection(b"", timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        await running.health.enter_graceful_shutdown()
        assert await _check(channel) == health_pb2.HealthCheckResponse.NOT_SERVING


def _peer_serial(port: int, ca: Path) -> int:
    """The serial number of the certificate a new TLS connection to `port` is shown."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


async def test_rotated_server_certificate_is_used_by_new_connections_without_restart(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    first, second = ca.issue("rotate-1"), ca.issue("rotate-2")
    first.install(cert, key)
    running = await start_server("127.0.0.1:0", [], tls=TlsConfig(cert=cert, key=key))
    try:
        address = f"127.0.0.1:{running.port}"
        assert await asyncio.to_thread(_peer_serial, running.port, ca.cert) == first.serial
        async with client_channel(address, tls=TlsConfig(ca=ca.cert)) as before:
            assert await _check(before) == health_pb2.HealthCheckResponse.SERVING
            second.install(cert, key)
            assert await asyncio.to_thread(_peer_serial, running.port, ca.cert) == second.serial
            async with client_channel(address, tls=TlsConfig(ca=ca.cert)) as after:
                assert await _check(after) == health_pb2.HealthCheckResponse.SERVING
            # the connection made before the rotation stays up
            assert await _check(before) == health_pb2.HealthCheckResponse.SERVING
        # a rotation half done (the new certificate, the old key) keeps the last good pair
        ca.issue("rotate-3").install(cert, tmp_path / "ignored.key")
        assert await asyncio.to_thread(_peer_serial, running.port, ca.cert) == second.serial
    finally:
        await running.stop(None)


async def test_rotated_client_certificate_is_used_by_new_channels(
    mtls_server: tuple[RunningServer, Identity],
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    running, _ = mtls_server
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    ca.issue("client-1").install(cert, key)
    tls = TlsConfig(ca=ca.cert, client_cert=cert, client_key=key)
    address = f"127.0.0.1:{running.port}"
    async with client_channel(address, tls=tls) as open_channel:
        assert await _check(open_channel) == health_pb2.HealthCheckResponse.SERVING
        other_ca.issue("client-2").install(cert, key)  # now an identity the server refuses
        async with client_channel(address, tls=tls) as channel:
            await _refused(channel)
        # the channel opened before keeps its connection and its credentials
        assert await _check(open_channel) == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------ start-up errors


@pytest.mark.parametrize("service", ["store", "orchestrator", "adapters.toolbox"])
def test_a_missing_certificate_file_is_a_one_line_start_up_error(
    service: str, ca: CertificateAuthority, tmp_path: Path
) -> None:
    leaf = ca.issue(f"startup-{service}")
    missing = tmp_path / "missing.pem"
    env = {
        **os.environ,
        **_NO_TLS,
        "DAGWIRE_TLS_CERT": str(missing),
        "DAGWIRE_TLS_KEY": str(leaf.key),
        "DAGWIRE_DATA_DIR": str(tmp_path / "data"),
    }
    done = subprocess.run(
        [sys.executable, "-m", f"dagwire_services.{service}", "--listen-addr", "127.0.0.1:0"],
        capture_output=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: cannot read DAGWIRE_TLS_CERT='{missing}': No such file or directory" in (
        done.stderr
    )


# ------------------------------------------------------------------ the stack through the CLI


def _service_env(identity: Identity, ca: CertificateAuthority) -> dict[str, str]:
    """A service serving mTLS, dialling its peers with its own certificate."""
    return {
        **_NO_TLS,
        "DAGWIRE_TLS_CERT": str(identity.cert),
        "DAGWIRE_TLS_KEY": str(identity.key),
        "DAGWIRE_TLS_CLIENT_CA": str(ca.cert),
        "DAGWIRE_TLS_CA": str(ca.cert),
    }


@pytest.fixture(scope="module")
def tls_stack(
    ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Store, dispatcher, toolbox and orchestrator processes serving mTLS only; yields the
    CLI's environment (its own client certificate), with ``HEALTH`` the orchestrator's
    plaintext health address."""
    tmp = tmp_path_factory.mktemp("tls-stack")
    cli = ca.issue("cli")
    client_env = {
        **_NO_TLS,
        "DAGWIRE_TLS_CA": str(ca.cert),
        "DAGWIRE_TLS_CLIENT_CERT": str(cli.cert),
        "DAGWIRE_TLS_CLIENT_KEY": str(cli.key),
    }
    procs: list[Proc] = []
    saved = dict(os.environ)
    os.environ.update(client_env)  # the fixture's own probes dial as the CLI does
    try:
        store_addr = free_address()
        store = Proc(
            "store",
            ["dagwire_services.store", "--listen-addr", store_addr, "--data-dir", str(tmp / "d")],
            store_addr,
            tmp / "store.log",
            env=_service_env(ca.issue("store"), ca),
        )
        dispatcher_addr = free_address()
        dispatcher = Proc(
            "dispatcher",
            ["dagwire_services.dispatcher", "--listen-addr", dispatcher_addr],
            dispatcher_addr,
            tmp / "dispatcher.log",
            env=_service_env(ca.issue("dispatcher"), ca),
        )
        toolbox = toolbox_proc(tmp, dispatcher_addr, store_addr)
        toolbox.env = _service_env(ca.issue("toolbox"), ca)
        orchestrator = orchestrator_proc(tmp, store_addr, dispatcher_addr)
        health = free_address()
        orchestrator.env = _service_env(ca.issue("orchestrator"), ca) | {
            "DAGWIRE_HEALTH_ADDR": health
        }
        procs += [store, dispatcher, toolbox, orchestrator]

        async def start() -> None:
            await start_all(store, dispatcher, toolbox)
            await wait_adapters(dispatcher_addr, {toolbox.address})
            await start_all(orchestrator)

        asyncio.run(start())
        yield {
            **saved,
            **client_env,
            "DAGWIRE_ORCHESTRATOR_ADDR": orchestrator.address,
            "DAGWIRE_STORE_ADDR": store_addr,
            "DAGWIRE_DISPATCHER_ADDR": dispatcher_addr,
            "HEALTH": health,
        }
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for proc in reversed(procs):
            proc.stop()


def _dagwire(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DAGWIRE, *args], capture_output=True, env=env, cwd=REPO_ROOT, timeout=60, text=True
    )


def test_tls_only_stack_runs_a_workflow_end_to_end_through_the_cli(
    tls_stack: dict[str, str], tmp_path: Path
) -> None:
    spec = tmp_path / "hello.yaml"
    spec.write_text(HELLO)
    done = _dagwire(tls_stack, "run", str(spec), "--output", "json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded"
    (both,) = summary["nodes"]["both"]["artifacts"]
    expected = b"HELLO GRPC / hello gRPC"
    assert both["sha256"] == hashlib.sha256(expected).hexdigest()
    fetched = _dagwire(tls_stack, "artifacts", "get", both["artifact_id"])
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == expected.decode()
    adapters = _dagwire(tls_stack, "adapters")
    assert adapters.returncode == 0, adapters.stderr
    assert "healthy" in adapters.stdout


def test_tls_stack_refuses_plaintext_and_foreign_clients_with_exit_3(
    tls_stack: dict[str, str], other_ca: CertificateAuthority
) -> None:
    plaintext = _dagwire(tls_stack | _NO_TLS, "runs")
    assert plaintext.returncode == 3, plaintext.stderr
    assert "if it serves TLS, set DAGWIRE_TLS_CA" in plaintext.stderr
    assert "Traceback" not in plaintext.stderr
    stranger = other_ca.issue("cli-stranger")
    foreign = _dagwire(
        tls_stack
        | {
            "DAGWIRE_TLS_CLIENT_CERT": str(stranger.cert),
            "DAGWIRE_TLS_CLIENT_KEY": str(stranger.key),
        },
        "runs",
    )
    assert foreign.returncode == 3, foreign.stderr
    assert "TLS handshake" in foreign.stderr
    wrong_ca = _dagwire(tls_stack | {"DAGWIRE_TLS_CA": str(other_ca.cert)}, "runs")
    assert wrong_ca.returncode == 3, wrong_ca.stderr
    assert "TLS: the server's certificate is not signed by the CA" in wrong_ca.stderr


def test_tls_stack_answers_probes_on_the_plaintext_health_address(
    tls_stack: dict[str, str],
) -> None:
    probe = _dagwire(tls_stack | _NO_TLS, "health", tls_stack["HEALTH"])
    assert (probe.returncode, probe.stdout.strip()) == (0, "SERVING"), probe.stderr
    secure = _dagwire(tls_stack, "health", tls_stack["DAGWIRE_ORCHESTRATOR_ADDR"])
    assert (secure.returncode, secure.stdout.strip()) == (0, "SERVING"), secure.stderr
