"""The polyglot stack: dagwire's services on FerretDB + MinIO, plus adapters and clients in Go,
TypeScript and Java, each built once per session by its own `scripts/build_<lang>.sh`.

Every process runs on free loopback ports; logs go to files under the session's tmp dir and
their tails are shown when something does not come up.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from dagwire.v1 import dispatcher_service_pb2 as dpb
from dagwire.v1 import dispatcher_service_pb2_grpc as dpb_grpc
from tests.servers import REPO_ROOT, S3Endpoint, find_free_port
from tests.stack import Proc

BUILD_TIMEOUT_SECONDS = 1800
START_TIMEOUT_SECONDS = 30.0


@dataclass
class InteropStack:
    """Store (FerretDB + MinIO), dispatcher, orchestrator and the Python toolbox, as processes."""

    tmp: Path
    store_addr: str
    dispatcher_addr: str
    orchestrator_addr: str
    processes: list[Proc] = field(default_factory=list)

    @property
    def client_env(self) -> dict[str, str]:
        """`DAGWIRE_*` variables that point a client or an adapter at this stack."""
        return {
            "DAGWIRE_ORCHESTRATOR_ADDR": self.orchestrator_addr,
            "DAGWIRE_DISPATCHER_ADDR": self.dispatcher_addr,
            "DAGWIRE_STORE_ADDR": self.store_addr,
        }

    def start(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None, address: str = ""
    ) -> Proc:
        """Start one more server process and wait until its health check is SERVING."""
        address = address or f"127.0.0.1:{find_free_port()}"
        process = Proc(
            name,
            [],
            address,
            self.tmp / f"{name}.log",
            {**self.client_env, "DAGWIRE_LISTEN_ADDR": address, **(env or {})},
            command=argv,
        )
        self.processes.append(process)
        process.start()
        process.wait_serving_blocking(START_TIMEOUT_SECONDS)
        return process

    def start_adapter(
        self, name: str, argv: list[str], agents: set[str], *, env: dict[str, str] | None = None
    ) -> Proc:
        """Start an adapter and wait until the dispatcher routes every one of `agents` to it."""
        process = self.start(name, argv, env=env)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not agents <= self.registered_agents(process.address):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} never registered {sorted(agents)} with the dispatcher:\n"
                    f"{process.log_tail()}"
                )
            time.sleep(0.1)
        return process

    def registered_agents(self, address: str | None = None) -> set[str]:
        """Agent keys the dispatcher has healthy instances for (of one address, if given)."""
        with grpc.insecure_channel(self.dispatcher_addr) as channel:
            reply = dpb_grpc.DispatcherServiceStub(channel).ListAdapters(
                dpb.ListAdaptersRequest(page_size=1000), timeout=5
            )
        return {
            key
            for instance in reply.adapters
            if address is None or instance.address == address
            for key in instance.agents
        }

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def _python_service(module: str) -> list[str]:
    return [sys.executable, "-m", f"dagwire_services.{module}"]


@pytest.fixture(scope="session")
def interop_stack(
    tmp_path_factory: pytest.TempPathFactory, mongodb_uri: str, s3_endpoint: S3Endpoint
) -> Iterator[InteropStack]:
    """dagwire's services on FerretDB + MinIO with the Python toolbox registered."""
    tmp = tmp_path_factory.mktemp("interop")
    stack = InteropStack(
        tmp,
        store_addr=f"127.0.0.1:{find_free_port()}",
        dispatcher_addr=f"127.0.0.1:{find_free_port()}",
        orchestrator_addr=f"127.0.0.1:{find_free_port()}",
    )
    storage_env = {
        "DAGWIRE_DATA_DIR": str(tmp / "data"),
        "DAGWIRE_MONGODB_URI": f"{mongodb_uri.rstrip('/')}/dagwire_interop",
        "DAGWIRE_S3_ENDPOINT": s3_endpoint.endpoint,
        "DAGWIRE_S3_ACCESS_KEY": s3_endpoint.access_key,
        "DAGWIRE_S3_SECRET_KEY": s3_endpoint.secret_key,
        "DAGWIRE_S3_BUCKET": f"{s3_endpoint.bucket_prefix}-interop",
    }
    try:
        stack.start("store", _python_service("store"), env=storage_env, address=stack.store_addr)
        stack.start("dispatcher", _python_service("dispatcher"), address=stack.dispatcher_addr)
        stack.start(
            "orchestrator", _python_service("orchestrator"), address=stack.orchestrator_addr
        )
        stack.start_adapter(
            "toolbox",
            _python_service("adapters.toolbox"),
            {"echo", "upper", "concat", "fail", "sleep", "blob"},
        )
        yield stack
    finally:
        stack.close()


def build(language: str) -> None:
    """Run `scripts/build_<language>.sh` (quick when nothing changed); fail with its output."""
    script = REPO_ROOT / "scripts" / f"build_{language}.sh"
    if not script.exists():
        pytest.fail(f"{script} is missing")
    done = subprocess.run(
        [str(script)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{script.name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="session")
def go_built() -> None:
    build("go")


@pytest.fixture(scope="session")
def node_built() -> None:
    build("node")


@pytest.fixture(scope="session")
def java_built() -> None:
    build("java")


GO_CLIENT = [str(REPO_ROOT / "build" / "bin" / "dagwire-go")]
GO_WORDCOUNT_ADAPTER = [str(REPO_ROOT / "build" / "bin" / "go-wordcount")]
GO_UPCASE_ADAPTER = [str(REPO_ROOT / "build" / "bin" / "go-upcase")]
NODE_CLIENT = ["node", str(REPO_ROOT / "clients" / "node" / "dist" / "main.js")]
TS_REVERSE_ADAPTER = [
    "node",
    str(REPO_ROOT / "services" / "adapters" / "ts-reverse" / "dist" / "main.js"),
]
JAVA_CLIENT = [
    "java",
    "-jar",
    str(REPO_ROOT / "clients" / "java" / "target" / "dagwire-java-client.jar"),
]
