"""TLS, mTLS and bearer tokens in the Go, TypeScript and Java clients and in the Go and
TypeScript adapters, against real Python services on loopback (docs/security.md).

One stack per module: a store (local data directory), dispatcher, toolbox and orchestrator
serving **mTLS only**, plus the Go `wordcount` and the TypeScript `reverse` adapters serving
mTLS too, each process with its own certificate from `tests/certs.py`. Every client runs one
workflow through both adapters. Tokens are checked against a small recording gRPC server in
the test (the Python servers do not check tokens yet): it keeps every call's metadata and
answers UNAUTHENTICATED or PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dagwire.rpc.channels import client_channel
from dagwire.rpc.tls import TLS_ENV, TlsConfig
from dagwire.v1 import adapter_service_pb2 as apb
from dagwire.v1 import adapter_service_pb2_grpc as apb_grpc
from dagwire.v1 import dispatcher_service_pb2 as dpb
from dagwire.v1 import dispatcher_service_pb2_grpc as dpb_grpc
from tests.certs import CertificateAuthority, Identity
from tests.interop.conftest import (
    GO_CLIENT,
    GO_WORDCOUNT_ADAPTER,
    JAVA_CLIENT,
    NODE_CLIENT,
    TS_REVERSE_ADAPTER,
)
from tests.stack import Proc, free_address

_NO_SECURITY = {**dict.fromkeys(TLS_ENV, ""), "DAGWIRE_TOKEN": "", "DAGWIRE_TOKEN_FILE": ""}
START_SECONDS = 30.0

SPEC = """\
name: polyglot-mtls
tasks:
  - id: greet
    agent: echo
    params: {text: "hello mTLS world"}
  - id: count
    agent: wordcount
    depends_on: [greet]
  - id: back
    agent: reverse
    depends_on: [greet]
  - id: both
    agent: concat
    depends_on: [count, back]
    params: {sep: " | "}
"""
EXPECTED = b"3 | dlrow SLTm olleh"

CLIENTS = {"go": GO_CLIENT, "node": NODE_CLIENT, "java": JAVA_CLIENT}


@dataclass
class MtlsStack:
    """The mTLS stack's addresses, its CAs, and the environment of a client it accepts."""

    ca: CertificateAuthority
    other_ca: CertificateAuthority
    orchestrator: str
    dispatcher: str
    store: str
    go_adapter: Proc
    ts_adapter: Proc
    go_health: str
    ts_health: str
    client_env: dict[str, str]
    tls: TlsConfig  # the test's own client settings (a certificate signed by `ca`)


def _service_env(identity: Identity, ca: CertificateAuthority) -> dict[str, str]:
    """A process serving mTLS only and dialling its peers with its own certificate."""
    return {
        **_NO_SECURITY,
        "DAGWIRE_TLS_CERT": str(identity.cert),
        "DAGWIRE_TLS_KEY": str(identity.key),
        "DAGWIRE_TLS_CLIENT_CA": str(ca.cert),
        "DAGWIRE_TLS_CA": str(ca.cert),
    }


async def _health(address: str, tls: TlsConfig | None) -> int:
    channel = (
        client_channel(address, tls=tls) if tls is not None else grpc.aio.insecure_channel(address)
    )
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


def _wait_serving(proc: Proc, tls: TlsConfig | None, address: str = "") -> None:
    """Wait until `proc` answers SERVING at `address` (default its own), dialling with `tls`."""
    deadline = time.monotonic() + START_SECONDS
    while True:
        assert proc.popen is not None and proc.popen.poll() is None, (
            f"{proc.name} exited:\n{proc.log_tail()}"
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            if asyncio.run(_health(address or proc.address, tls)) == 1:
                return
        assert time.monotonic() < deadline, f"{proc.name} not SERVING:\n{proc.log_tail()}"
        time.sleep(0.1)


async def _agents(dispatcher: str, tls: TlsConfig) -> dict[str, set[str]]:
    async with client_channel(dispatcher, tls=tls) as channel:
        reply = await dpb_grpc.DispatcherServiceStub(channel).ListAdapters(
            dpb.ListAdaptersRequest(page_size=1000), timeout=5
        )
    out: dict[str, set[str]] = {}
    for instance in reply.adapters:
        if instance.health == dpb.ADAPTER_HEALTH_HEALTHY:
            out.setdefault(instance.address, set()).update(instance.agents)
    return out


def _wait_registered(proc: Proc, agent: str, dispatcher: str, tls: TlsConfig) -> None:
    deadline = time.monotonic() + START_SECONDS
    while agent not in asyncio.run(_agents(dispatcher, tls)).get(proc.address, set()):
        assert time.monotonic() < deadline, f"{proc.name} never registered:\n{proc.log_tail()}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def mtls_stack(
    tmp_path_factory: pytest.TempPathFactory, go_built: None, node_built: None
) -> Iterator[MtlsStack]:
    tmp = tmp_path_factory.mktemp("polyglot-mtls")
    ca = CertificateAuthority(tmp / "pki", "ca")
    other_ca = CertificateAuthority(tmp / "pki" / "other", "other")
    user = ca.issue("user")
    tls = TlsConfig(ca=ca.cert, client_cert=user.cert, client_key=user.key)
    procs: list[Proc] = []

    def start(
        name: str,
        env: dict[str, str],
        *,
        args: list[str] | None = None,
        command: list[str] | None = None,
    ) -> Proc:
        address = free_address()
        if args is not None:
            args = [*args, "--listen-addr", address]
        proc = Proc(
            name,
            args or [],
            address,
            tmp / f"{name}.log",
            {**_service_env(ca.issue(name), ca), "DAGWIRE_LISTEN_ADDR": address, **env},
            command=command,
        )
        procs.append(proc)
        proc.start()
        return proc

    try:
        store = start("store", {}, args=["dagwire_services.store", "--data-dir", str(tmp / "data")])
        dispatcher = start("dispatcher", {}, args=["dagwire_services.dispatcher"])
        for proc in (store, dispatcher):
            _wait_serving(proc, tls)
        peers = {"DAGWIRE_DISPATCHER_ADDR": dispatcher.address, "DAGWIRE_STORE_ADDR": store.address}
        toolbox = start(
            "toolbox",
            {},
            args=[
                "dagwire_services.adapters.toolbox",
                "--dispatcher-addr",
                dispatcher.address,
                "--store-addr",
                store.address,
            ],
        )
        go_health, ts_health = free_address(), free_address()
        go_adapter = start(
            "go-wordcount",
            {**peers, "DAGWIRE_HEALTH_ADDR": go_health},
            command=GO_WORDCOUNT_ADAPTER,
        )
        ts_adapter = start(
            "ts-reverse", {**peers, "DAGWIRE_HEALTH_ADDR": ts_health}, command=TS_REVERSE_ADAPTER
        )
        orchestrator = start(
            "orchestrator",
            {},
            args=[
                "dagwire_services.orchestrator",
                "--store-addr",
                store.address,
                "--dispatcher-addr",
                dispatcher.address,
            ],
        )
        _wait_serving(orchestrator, tls)
        _wait_registered(toolbox, "echo", dispatcher.address, tls)
        _wait_registered(go_adapter, "wordcount", dispatcher.address, tls)
        _wait_registered(ts_adapter, "reverse", dispatcher.address, tls)
        yield MtlsStack(
            ca=ca,
            other_ca=other_ca,
            orchestrator=orchestrator.address,
            dispatcher=dispatcher.address,
            store=store.address,
            go_adapter=go_adapter,
            ts_adapter=ts_adapter,
            go_health=go_health,
            ts_health=ts_health,
            client_env={
                **os.environ,
                **_NO_SECURITY,
                "DAGWIRE_TLS_CA": str(ca.cert),
                "DAGWIRE_TLS_CLIENT_CERT": str(user.cert),
                "DAGWIRE_TLS_CLIENT_KEY": str(user.key),
                "DAGWIRE_ORCHESTRATOR_ADDR": orchestrator.address,
                "DAGWIRE_STORE_ADDR": store.address,
                "DAGWIRE_DISPATCHER_ADDR": dispatcher.address,
            },
            tls=tls,
        )
    finally:
        for proc in reversed(procs):
            proc.stop()


@pytest.fixture(scope="module")
def java_ready(java_built: None) -> None:
    """The Java jar, built only when a Java case runs."""


def _client(
    name: str, env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLIENTS[name], *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture
def need(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Build the jar for the Java cases (the Go and TS builds come with the stack)."""

    def ensure(client: str) -> None:
        if client == "java":
            request.getfixturevalue("java_ready")

    return ensure


# ------------------------------------------------------------------ end to end over mTLS


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_runs_a_workflow_over_mtls_through_the_go_and_ts_adapters(
    mtls_stack: MtlsStack, client: str, need: Callable[[str], None], tmp_path: Path
) -> None:
    need(client)
    spec = tmp_path / "mtls.yaml"
    spec.write_text(SPEC, encoding="utf-8")

    done = _client(client, mtls_stack.client_env, "run", str(spec))

    assert done.returncode == 0, f"{client} exit {done.returncode}:\n{done.stderr}"
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded"
    for node_id in ("greet", "count", "back", "both"):
        assert summary["nodes"][node_id]["status"] == "succeeded", summary["nodes"][node_id]
    (both,) = summary["nodes"]["both"]["artifacts"]
    assert both["sha256"] == hashlib.sha256(EXPECTED).hexdigest()
    if client == "go":
        fetched = _client("go", mtls_stack.client_env, "get", both["artifact_id"])
        assert fetched.returncode == 0, fetched.stderr
        assert fetched.stdout.encode() == EXPECTED


def test_go_and_ts_adapters_serve_mtls_only_and_health_in_plaintext(
    mtls_stack: MtlsStack,
) -> None:
    for adapter, health in (
        (mtls_stack.go_adapter, mtls_stack.go_health),
        (mtls_stack.ts_adapter, mtls_stack.ts_health),
    ):
        # probes without TLS get the health service on its own address ...
        assert asyncio.run(_health(health, None)) == health_pb2.HealthCheckResponse.SERVING
        # ... but the adapter's port refuses plaintext, and TLS without a client certificate
        for refused in (None, TlsConfig(ca=mtls_stack.ca.cert)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                asyncio.run(_health(adapter.address, refused))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, adapter.name
        assert asyncio.run(_health(adapter.address, mtls_stack.tls)) == 1

        async def describe(address: str = adapter.address) -> apb.DescribeResponse:
            async with client_channel(address, tls=mtls_stack.tls) as channel:
                return await apb_grpc.AgentAdapterServiceStub(channel).Describe(
                    apb.DescribeRequest(), timeout=5
                )

        language = asyncio.run(describe()).language
        assert language == ("go" if adapter is mtls_stack.go_adapter else "typescript")


# ------------------------------------------------------------------ refusals and bad files


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_a_client_trusting_another_ca_exits_3_naming_tls(
    mtls_stack: MtlsStack, client: str, need: Callable[[str], None], tmp_path: Path
) -> None:
    need(client)
    spec = tmp_path / "mtls.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    wrong_ca = {"DAGWIRE_TLS_CA": str(mtls_stack.other_ca.cert)}
    system_roots = {"DAGWIRE_TLS_CA": ""}  # a client certificate alone: TLS, the system's roots

    for settings in (wrong_ca, system_roots):
        started = time.monotonic()
        done = _client(client, mtls_stack.client_env | settings, "run", str(spec), timeout=60)

        assert done.returncode == 3, f"{client} {settings}: {done.returncode}\n{done.stderr}"
        assert time.monotonic() - started < 30
        assert (
            "TLS: the server's certificate is not signed by the CA this client trusts "
            "(DAGWIRE_TLS_CA)" in done.stderr
        ), done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr  # one line, no stack trace


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_a_plaintext_or_certificate_less_client_exits_3_with_a_tls_hint(
    mtls_stack: MtlsStack, client: str, need: Callable[[str], None], tmp_path: Path
) -> None:
    need(client)
    spec = tmp_path / "mtls.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    no_cert = {"DAGWIRE_TLS_CLIENT_CERT": "", "DAGWIRE_TLS_CLIENT_KEY": ""}

    plaintext = _client(
        client, mtls_stack.client_env | no_cert | {"DAGWIRE_TLS_CA": ""}, "run", str(spec)
    )
    certless = _client(client, mtls_stack.client_env | no_cert, "run", str(spec))

    assert plaintext.returncode == 3, f"{client}: {plaintext.returncode}\n{plaintext.stderr}"
    assert "if it serves TLS, set DAGWIRE_TLS_CA to its CA" in plaintext.stderr
    assert certless.returncode == 3, f"{client}: {certless.returncode}\n{certless.stderr}"
    assert "client certificate (DAGWIRE_TLS_CLIENT_CERT)" in certless.stderr, certless.stderr
    assert len(plaintext.stderr.splitlines()) == len(certless.stderr.splitlines()) == 1


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_a_missing_tls_file_exits_2_naming_the_setting_and_path(
    mtls_stack: MtlsStack, client: str, need: Callable[[str], None], tmp_path: Path
) -> None:
    need(client)
    spec = tmp_path / "mtls.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    missing = tmp_path / "missing-ca.pem"

    done = _client(
        client, mtls_stack.client_env | {"DAGWIRE_TLS_CA": str(missing)}, "run", str(spec)
    )

    assert done.returncode == 2, f"{client}: {done.returncode}\n{done.stderr}"
    (line,) = done.stderr.splitlines()
    assert f"cannot read DAGWIRE_TLS_CA='{missing}': No such file or directory" in line


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_the_server_name_setting_is_checked_for_dns_and_ipv4_targets(
    mtls_stack: MtlsStack, client: str, need: Callable[[str], None], tmp_path: Path
) -> None:
    need(client)
    spec = tmp_path / "mtls.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    port = mtls_stack.orchestrator.rsplit(":", 1)[1]
    # Java takes no ipv4: list (docs/targets.md): it dials dns:///localhost instead
    target = f"dns:///localhost:{port}" if client == "java" else f"ipv4:127.0.0.1:{port}"
    env = mtls_stack.client_env | {"DAGWIRE_ORCHESTRATOR_ADDR": target}

    wrong = _client(client, env | {"DAGWIRE_TLS_SERVER_NAME": "store.example"}, "run", str(spec))
    right = _client(client, env | {"DAGWIRE_TLS_SERVER_NAME": "localhost"}, "run", str(spec))

    assert wrong.returncode == 3, f"{client}: {wrong.returncode}\n{wrong.stderr}"
    assert "set DAGWIRE_TLS_SERVER_NAME to a name it carries" in wrong.stderr, wrong.stderr
    assert right.returncode == 0, f"{client}: {right.returncode}\n{right.stderr}"
    assert json.loads(right.stdout)["status"] == "succeeded"


@pytest.mark.parametrize(
    ("command", "prefix"),
    [(GO_WORDCOUNT_ADAPTER, "go-wordcount: error: "), (TS_REVERSE_ADAPTER, "ts-reverse: ")],
    ids=["go", "ts"],
)
def test_an_adapter_with_a_bad_tls_file_exits_2_naming_the_setting(
    mtls_stack: MtlsStack, command: list[str], prefix: str, tmp_path: Path
) -> None:
    leaf = mtls_stack.ca.issue("bad-files")
    missing = tmp_path / "missing.pem"
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello\n")
    cases = {
        f"cannot read DAGWIRE_TLS_CERT='{missing}': No such file or directory": {
            "DAGWIRE_TLS_CERT": str(missing),
            "DAGWIRE_TLS_KEY": str(leaf.key),
        },
        f"invalid DAGWIRE_TLS_KEY='{not_a_key}': not a PEM private key": {
            "DAGWIRE_TLS_CERT": str(leaf.cert),
            "DAGWIRE_TLS_KEY": str(not_a_key),
        },
        "DAGWIRE_TLS_CERT is set but DAGWIRE_TLS_KEY is not": {"DAGWIRE_TLS_CERT": str(leaf.cert)},
    }
    for expected, tls_env in cases.items():
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                **_NO_SECURITY,
                **tls_env,
                "DAGWIRE_LISTEN_ADDR": free_address(),
                "DAGWIRE_DISPATCHER_ADDR": mtls_stack.dispatcher,
            },
            check=False,
        )
        assert done.returncode == 2, f"{command}: {done.returncode}\n{done.stderr}"
        (line,) = done.stderr.splitlines()
        assert line.startswith(prefix + expected), line


# ------------------------------------------------------------------ rotation


def _peer_serial(address: str, ca: Path, identity: Identity) -> int:
    """The serial number of the certificate a new TLS connection to `address` is shown."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(identity.cert), str(identity.key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.mark.parametrize(
    ("command", "within"),
    [(GO_WORDCOUNT_ADAPTER, 0.0), (TS_REVERSE_ADAPTER, 5.0)],
    ids=["go", "ts"],
)
def test_an_adapter_serves_a_rotated_certificate_without_restart(
    mtls_stack: MtlsStack, command: list[str], within: float, tmp_path: Path
) -> None:
    ca = mtls_stack.ca
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    first, second = ca.issue("rotate-1"), ca.issue("rotate-2")
    first.install(cert, key)
    health = free_address()
    proc = Proc(
        "rotating",
        [],
        free_address(),
        tmp_path / "rotating.log",
        {
            **_NO_SECURITY,
            "DAGWIRE_TLS_CERT": str(cert),
            "DAGWIRE_TLS_KEY": str(key),
            "DAGWIRE_TLS_CLIENT_CA": str(ca.cert),
            "DAGWIRE_HEALTH_ADDR": health,
            "DAGWIRE_DISPATCHER_ADDR": "127.0.0.1:1",  # nobody: registration keeps retrying
        },
        command=command,
    )
    proc.env["DAGWIRE_LISTEN_ADDR"] = proc.address
    user = ca.issue("rotation-user")
    proc.start()
    try:
        _wait_serving(proc, None, health)
        assert _peer_serial(proc.address, ca.cert, user) == first.serial
        second.install(cert, key)
        deadline = time.monotonic() + within
        while (serial := _peer_serial(proc.address, ca.cert, user)) != second.serial:
            assert time.monotonic() < deadline, f"still {serial}:\n{proc.log_tail()}"
            time.sleep(0.2)
        # a rotation half done (a new certificate next to the old key) keeps the last good pair
        ca.issue("rotate-3").install(cert, tmp_path / "ignored.key")
        time.sleep(within / 2 + 0.1)
        assert _peer_serial(proc.address, ca.cert, user) == second.serial
        assert "cannot be used yet" in proc.log_path.read_text()
    finally:
        proc.stop()


# ------------------------------------------------------------------ tokens


class _Recorder(grpc.GenericRpcHandler):
    """Answers every call with one status, keeping each call's method and metadata."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message
        self.calls: list[tuple[str, dict[str, str]]] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        metadata = {key: str(value) for key, value in details.invocation_metadata}
        self.calls.append((details.method, metadata))

        def refuse(request: bytes, context: grpc.ServicerContext) -> Any:
            context.abort(self.code, self.message)

        if details.method.endswith(("/GetArtifact", "/WatchRun")):
            return grpc.unary_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)

    def authorizations(self, method_suffix: str = "") -> list[str]:
        return [
            metadata.get("authorization", "")
            for method, metadata in self.calls
            if method.endswith(method_suffix)
        ]


@contextlib.contextmanager
def _recording_server(code: grpc.StatusCode, message: str) -> Iterator[tuple[str, _Recorder]]:
    recorder = _Recorder(code, message)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((recorder,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", recorder
    finally:
        server.stop(None)


@pytest.mark.parametrize("source", ["env", "file", "flag"])
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_a_client_sends_its_token_and_exits_4_when_unauthenticated(
    client: str, source: str, need: Callable[[str], None], tmp_path: Path
) -> None:
    need(client)
    spec = tmp_path / "hello.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n\n")  # the trailing newlines are not part of it
    env = {**os.environ, **_NO_SECURITY}
    args = ["run", str(spec)]
    if source == "env":
        env |= {"DAGWIRE_TOKEN": "s3cret-token", "DAGWIRE_TOKEN_FILE": str(tmp_path / "unused")}
    elif source == "file":
        env["DAGWIRE_TOKEN_FILE"] = str(token_file)
    else:
        env["DAGWIRE_TOKEN"] = "not-this-one"
        args += ["--token-file", str(token_file)]

    with _recording_server(grpc.StatusCode.UNAUTHENTICATED, "bad token for test") as (addr, rec):
        done = _client(client, env | {"DAGWIRE_ORCHESTRATOR_ADDR": addr}, *args, timeout=60)

    assert done.returncode == 4, f"{client}: {done.returncode}\n{done.stderr}"
    assert rec.authorizations("/StartRun") == ["Bearer s3cret-token"]
    (line,) = done.stderr.splitlines()
    assert line.endswith("error: not authenticated: bad token for test"), line


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_permission_denied_exits_4_with_not_allowed(
    client: str, need: Callable[[str], None], tmp_path: Path
) -> None:
    need(client)
    spec = tmp_path / "hello.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    env = {**os.environ, **_NO_SECURITY, "DAGWIRE_TOKEN": "reader"}
    with _recording_server(grpc.StatusCode.PERMISSION_DENIED, "role reader cannot start runs") as (
        addr,
        _,
    ):
        done = _client(client, env | {"DAGWIRE_ORCHESTRATOR_ADDR": addr}, "run", str(spec))
    assert done.returncode == 4, f"{client}: {done.returncode}\n{done.stderr}"
    (line,) = done.stderr.splitlines()
    assert line.endswith("error: not allowed: role reader cannot start runs"), line


def test_go_get_sends_the_token_to_the_store(tmp_path: Path, go_built: None) -> None:
    env = {**os.environ, **_NO_SECURITY, "DAGWIRE_TOKEN": "store-token"}
    with _recording_server(grpc.StatusCode.UNAUTHENTICATED, "no") as (addr, rec):
        done = _client("go", env, "get", "some-id", "--store", addr)
    assert done.returncode == 4, done.stderr
    assert rec.authorizations("/GetArtifact") == ["Bearer store-token"]


@pytest.mark.parametrize("command", [GO_WORDCOUNT_ADAPTER, TS_REVERSE_ADAPTER], ids=["go", "ts"])
def test_an_adapter_sends_its_token_to_the_dispatcher(
    command: list[str], tmp_path: Path, go_built: None, node_built: None
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("adapter-token\n")
    with _recording_server(grpc.StatusCode.UNAUTHENTICATED, "who are you") as (addr, rec):
        proc = Proc(
            "token-adapter",
            [],
            free_address(),
            tmp_path / "adapter.log",
            {
                **_NO_SECURITY,
                "DAGWIRE_DISPATCHER_ADDR": addr,
                "DAGWIRE_TOKEN_FILE": str(token_file),
            },
            command=command,
        )
        proc.env["DAGWIRE_LISTEN_ADDR"] = proc.address
        proc.start()
        try:
            deadline = time.monotonic() + START_SECONDS
            while not rec.authorizations("/RegisterAdapter"):
                assert proc.popen is not None and proc.popen.poll() is None, proc.log_tail()
                assert time.monotonic() < deadline, proc.log_tail()
                time.sleep(0.05)
        finally:
            proc.stop()
    assert set(rec.authorizations("/RegisterAdapter")) == {"Bearer adapter-token"}
