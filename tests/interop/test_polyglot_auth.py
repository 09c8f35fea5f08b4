"""The Go, TypeScript and Java clients and the Go and TypeScript adapters against Python
services with everything on (docs/security.md): mTLS on every hop, every call's token checked
against the auth file, store grants, as `dagwire up --secure` makes them
(`dagwire_cli.secure`).

The Go `wordcount` and `upcase` and TypeScript `reverse` adapters register with adapter tokens
of their own (each may serve its one key); each client runs a workflow through them with the
client's token, and is refused with exit status 4 for an unknown token or a role that may not
run workflows. Inputs and outputs over 1 MiB reach the store with each attempt's grant
(`ExecuteRequest.store_token`), since the adapters' own tokens open nothing there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dagwire.auth import add_principal
from dagwire.rpc.dispatcher_client import RemoteDispatcher
from dagwire.rpc.tls import TLS_ENV
from dagwire.toolbox import blob_chunks
from dagwire_cli.secure import SecureSetup, issue_certificate, prepare_secure
from tests.interop.conftest import (
    GO_CLIENT,
    GO_UPCASE_ADAPTER,
    GO_WORDCOUNT_ADAPTER,
    JAVA_CLIENT,
    NODE_CLIENT,
    TS_REVERSE_ADAPTER,
)
from tests.stack import Proc, free_address

CLIENTS = {"go": GO_CLIENT, "node": NODE_CLIENT, "java": JAVA_CLIENT}
SPEC = """\
name: polyglot-secure
tasks:
  - id: greet
    agent: echo
    params: {text: "hello secure world"}
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
EXPECTED = b"3 | dlrow eruces olleh"
BLOB_SIZE = 1_500_000  # over the 1 MiB inline limit: every hop goes through the store
BIG_SPEC = f"""\
name: polyglot-secure-big
tasks:
  - id: data
    agent: blob
    params: {{size: {BLOB_SIZE}, seed: 1}}
  - id: count
    agent: wordcount
    depends_on: [data]
  - id: loud
    agent: upcase
    depends_on: [data]
  - id: back
    agent: reverse
    depends_on: [data]
"""
_CLEAR = {**dict.fromkeys(TLS_ENV, ""), "DAGWIRE_TOKEN": "", "DAGWIRE_TOKEN_FILE": ""}


@dataclass
class SecureStack:
    setup: SecureSetup
    client_env: dict[str, str]
    tokens: dict[str, str]


async def _registered(dispatcher: str, agents: set[str], within: float = 30.0) -> None:
    client = RemoteDispatcher(dispatcher)
    try:
        deadline = time.monotonic() + within
        while True:
            found = {a for info in await client.list_adapters() for a in info.agents}
            if agents <= found:
                return
            assert time.monotonic() < deadline, f"registered: {sorted(found)}"
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def secure_stack(
    tmp_path_factory: pytest.TempPathFactory, go_built: None, node_built: None
) -> Iterator[SecureStack]:
    tmp = tmp_path_factory.mktemp("polyglot-secure")
    setup = prepare_secure(tmp, host="127.0.0.1", addresses={})
    folder = setup.folder
    tokens = {}
    adapters = (("go-wordcount", "wordcount"), ("go-upcase", "upcase"), ("ts-reverse", "reverse"))
    for name, agent in adapters:
        issue_certificate(folder, name, "127.0.0.1")
        tokens[name] = add_principal(setup.auth_file, name=name, roles=["adapter"], agents=[agent])
    tokens["client"] = setup.token_file("client").read_text().strip()
    tokens["toolbox"] = setup.token_file("toolbox").read_text().strip()
    procs: list[Proc] = []
    addresses = {name: free_address() for name in ("store", "dispatcher", "orchestrator")}
    peers = {
        "DAGWIRE_STORE_ADDR": addresses["store"],
        "DAGWIRE_DISPATCHER_ADDR": addresses["dispatcher"],
    }

    def start(name: str, env: dict[str, str], args: list[str], command: list[str] | None) -> None:
        address = addresses.get(name) or free_address()
        proc = Proc(
            name,
            [*args, "--listen-addr", address] if args else [],
            address,
            tmp / f"{name}.log",
            {**_CLEAR, "DAGWIRE_LISTEN_ADDR": address, **env},
            command=command,
        )
        procs.append(proc)
        proc.start()

    def adapter_env(name: str) -> dict[str, str]:
        own = setup.service_env("toolbox") | {
            "DAGWIRE_TLS_CERT": str(folder / f"{name}.pem"),
            "DAGWIRE_TLS_KEY": str(folder / f"{name}.key"),
            "DAGWIRE_TLS_CLIENT_CERT": str(folder / f"{name}.pem"),
            "DAGWIRE_TLS_CLIENT_KEY": str(folder / f"{name}.key"),
            "DAGWIRE_TOKEN": tokens[name],
            "DAGWIRE_TOKEN_FILE": "",
        }
        own.pop("DAGWIRE_AUTH_FILE")  # Go and TS adapters rely on mTLS for their callers
        return own | peers

    saved = dict(os.environ)
    os.environ.update(setup.client_env("admin"))  # this process's probes, as the admin
    try:
        store_args = ["dagwire_services.store", "--data-dir", str(tmp / "data")]
        start("store", setup.service_env("store"), store_args, None)
        start(
            "dispatcher",
            setup.service_env("dispatcher") | peers,
            ["dagwire_services.dispatcher"],
            None,
        )
        start(
            "toolbox",
            setup.service_env("toolbox") | peers,
            ["dagwire_services.adapters.toolbox"],
            None,
        )
        start("go-wordcount", adapter_env("go-wordcount"), [], GO_WORDCOUNT_ADAPTER)
        start("go-upcase", adapter_env("go-upcase"), [], GO_UPCASE_ADAPTER)
        start("ts-reverse", adapter_env("ts-reverse"), [], TS_REVERSE_ADAPTER)
        start(
            "orchestrator",
            setup.service_env("orchestrator") | peers,
            ["dagwire_services.orchestrator"],
            None,
        )

        async def ready() -> None:
            for proc in procs:
                if proc.command is None:
                    await proc.wait_serving()
            await _registered(addresses["dispatcher"], {"echo", "wordcount", "upcase", "reverse"})

        try:
            asyncio.run(ready())
        except AssertionError:
            raise AssertionError(
                "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in procs)
            ) from None
        client_env = {
            **saved,
            **_CLEAR,
            **setup.client_env("client"),
            "DAGWIRE_ORCHESTRATOR_ADDR": addresses["orchestrator"],
            "DAGWIRE_STORE_ADDR": addresses["store"],
            "DAGWIRE_DISPATCHER_ADDR": addresses["dispatcher"],
        }
        yield SecureStack(setup, client_env, tokens)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for proc in reversed(procs):
            proc.stop()


@pytest.fixture(scope="module")
def java_ready(java_built: None) -> None:
    """The Java jar, built only when a Java case runs."""


@pytest.fixture
def need(request: pytest.FixtureRequest) -> Callable[[str], None]:
    def ensure(client: str) -> None:
        if client == "java":
            request.getfixturevalue("java_ready")

    return ensure


def _client(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLIENTS[name], *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_every_client_runs_a_workflow_through_go_and_ts_adapters_with_auth_on(
    secure_stack: SecureStack, client: str, need: Callable[[str], None], tmp_path: Path
) -> None:
    need(client)
    spec = tmp_path / "secure.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    done = _client(client, secure_stack.client_env, "run", str(spec))
    assert done.returncode == 0, f"{client} exit {done.returncode}:\n{done.stderr}"
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded", summary
    (both,) = summary["nodes"]["both"]["artifacts"]
    assert both["sha256"] == hashlib.sha256(EXPECTED).hexdigest()


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_every_client_exits_4_for_an_unknown_token_or_a_role_that_may_not_run(
    secure_stack: SecureStack, client: str, need: Callable[[str], None], tmp_path: Path
) -> None:
    need(client)
    spec = tmp_path / "secure.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    unknown = _client(
        client,
        secure_stack.client_env | {"DAGWIRE_TOKEN": "dgw_not-a-token-of-this-stack"},
        "run",
        str(spec),
    )
    assert unknown.returncode == 4, unknown.stderr
    assert "not authenticated" in unknown.stderr and "needs a token" in unknown.stderr
    adapter = _client(
        client,
        secure_stack.client_env | {"DAGWIRE_TOKEN": secure_stack.tokens["toolbox"]},
        "run",
        str(spec),
    )
    assert adapter.returncode == 4, adapter.stderr
    assert (
        "not allowed" in adapter.stderr and "principal 'toolbox' (role adapter)" in adapter.stderr
    )


def test_go_and_ts_adapters_move_artifacts_over_1_mib_with_the_attempts_store_grant(
    secure_stack: SecureStack, tmp_path: Path
) -> None:
    """The blob reaches `wordcount` and `upcase` (Go) and `reverse` (TS) by reference, and the
    outputs of `upcase` (as large) and `reverse` (larger still) are uploaded by the adapters:
    with an adapter's own token the store answers PERMISSION_DENIED and the tasks fail, with
    the attempt's grant they succeed."""
    blob = b"".join(blob_chunks(BLOB_SIZE, 1))
    text = blob.decode("utf-8", errors="replace")
    reversed_out = "".join(reversed(text)).encode("utf-8")
    assert len(reversed_out) > 1 << 20
    spec = tmp_path / "big.yaml"
    spec.write_text(BIG_SPEC, encoding="utf-8")
    done = _client("go", secure_stack.client_env, "run", str(spec))
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr}\n{done.stdout}"
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded", summary
    (count,) = summary["nodes"]["count"]["artifacts"]
    expected_count = str(len(text.split())).encode()
    assert count["sha256"] == hashlib.sha256(expected_count).hexdigest()
    (loud,) = summary["nodes"]["loud"]["artifacts"]
    assert loud["size"] == BLOB_SIZE
    assert loud["sha256"] == hashlib.sha256(blob.upper()).hexdigest()
    (back,) = summary["nodes"]["back"]["artifacts"]
    assert back["size"] == len(reversed_out)
    assert back["sha256"] == hashlib.sha256(reversed_out).hexdigest()


def test_adapters_register_and_heartbeat_with_their_own_tokens_after_grants(
    secure_stack: SecureStack, tmp_path: Path
) -> None:
    """A grant opens only the store: after attempts that used grants, the adapters are still
    registered (RegisterAdapter and Heartbeat keep the adapter's own token) and take work."""
    spec = tmp_path / "big.yaml"
    spec.write_text(BIG_SPEC, encoding="utf-8")
    first = _client("go", secure_stack.client_env, "run", str(spec))
    assert first.returncode == 0, first.stderr
    dispatcher = secure_stack.client_env["DAGWIRE_DISPATCHER_ADDR"]
    asyncio.run(_registered(dispatcher, {"wordcount", "upcase", "reverse"}, within=5.0))
    again = _client("go", secure_stack.client_env, "run", str(spec))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["status"] == "succeeded"
