"""Helpers for tests that run dagwire services as real processes on free loopback ports.

`Proc` is one service subprocess (``python -m ...`` or a script) logging JSON lines to a file;
`start_dispatcher`, `start_toolbox` and `wait_adapters` bring up the routing side; the event
helpers follow runs through an `OrchestratorClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dagwire.rpc.channels import client_channel
from dagwire.rpc.orchestrator_client import OrchestratorClient
from dagwire.runtime import RunEvent, RunEventKind
from tests.servers import REPO_ROOT, find_free_port

__all__ = [
    "HELLO",
    "Proc",
    "collect_events",
    "dispatcher_proc",
    "first_event",
    "free_address",
    "list_adapters",
    "orchestrator_proc",
    "start_all",
    "start_dispatcher",
    "start_toolbox",
    "started",
    "toolbox_proc",
    "until",
    "wait_adapters",
]


# The seed's data flow: a variable, a chain and a fan-in (docs/contracts.md §2).
HELLO = """\
name: hello
vars:
  topic: gRPC
tasks:
  - id: greet
    agent: echo
    params:
      text: "hello ${user.topic}"
  - id: shout
    agent: upper
    depends_on: [greet]
  - id: both
    agent: concat
    depends_on: [shout, greet]
    params: {sep: " / "}
"""


@dataclass
class Proc:
    """A dagwire service subprocess on a fixed loopback address, logging to a file.

    `args` follow ``python``: ``["-m", "dagwire_services.store", ...]`` or a script path; a
    first argument that is neither a flag nor a ``.py`` file is taken as a module name.
    `command`, when given, is run instead (an adapter or client in another language).
    """

    name: str
    args: list[str]
    address: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        args = self.args
        if args and not args[0].startswith("-") and not args[0].endswith(".py"):
            args = ["-m", *args]
        self.popen = subprocess.Popen(
            self.command or [sys.executable, *args],
            cwd=REPO_ROOT,
            env={**os.environ, "DAGWIRE_LOG_FORMAT": "json", **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_serving(self, within: float = 30.0) -> None:
        """Wait until the process's health service says SERVING (fail if it exits).

        The probe dials as the environment says (TLS when ``DAGWIRE_TLS_CA`` is set).
        """
        async with client_channel(self.address) as chan:
            health = health_pb2_grpc.HealthStub(chan)
            deadline = time.monotonic() + within
            while True:
                assert self.popen is not None
                assert self.popen.poll() is None, f"{self.name} exited:\n{self.log_tail()}"
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                assert time.monotonic() < deadline, f"{self.name} not SERVING:\n{self.log_tail()}"
                await asyncio.sleep(0.05)

    def wait_serving_blocking(self, within: float = 30.0) -> None:
        """`wait_serving` for synchronous fixtures (outside an event loop)."""
        asyncio.run(self.wait_serving(within))

    def stop(self, sig: int = signal.SIGTERM, wait: float = 20.0) -> int | None:
        """Send `sig` (SIGKILL to crash it) and wait; returns the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.popen.returncode

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


def free_address() -> str:
    """``127.0.0.1:<a free port>``."""
    return f"127.0.0.1:{find_free_port()}"


def dispatcher_proc(tmp: Path, *, static_adapters: str = "", name: str = "dispatcher") -> Proc:
    """A dispatcher service process on a free port (not started yet)."""
    address = free_address()
    args = ["dagwire_services.dispatcher", "--listen-addr", address]
    if static_adapters:
        args += ["--static-adapters", static_adapters]
    return Proc(name, args, address, tmp / f"{name}.log")


def toolbox_proc(
    tmp: Path, dispatcher_addr: str, store_addr: str, *, name: str = "toolbox", debug: bool = False
) -> Proc:
    """A toolbox adapter process registering with the dispatcher (not started yet).

    With `debug`, it logs every call it executes (with its run, task and attempt).
    """
    address = free_address()
    args = [
        "dagwire_services.adapters.toolbox",
        "--listen-addr",
        address,
        "--dispatcher-addr",
        dispatcher_addr,
        "--store-addr",
        store_addr,
    ]
    if debug:
        args += ["--log-level", "debug"]
    return Proc(name, args, address, tmp / f"{name}.log")


def orchestrator_proc(
    tmp: Path, store_addr: str, dispatcher_addr: str, *args: str, name: str = "orchestrator"
) -> Proc:
    """An orchestrator service process on a free port (not started yet); `args` are flags."""
    address = free_address()
    command = [
        "dagwire_services.orchestrator",
        "--listen-addr",
        address,
        "--store-addr",
        store_addr,
        "--dispatcher-addr",
        dispatcher_addr,
        *args,
    ]
    return Proc(name, command, address, tmp / f"{name}.log")


async def start_all(*procs: Proc) -> None:
    """Start the processes at once, then wait until every one serves."""
    for proc in procs:
        proc.start()
    await asyncio.gather(*(proc.wait_serving() for proc in procs))


async def start_dispatcher(
    tmp: Path, *, static_adapters: str = "", name: str = "dispatcher"
) -> Proc:
    """Start a dispatcher service process and wait until it serves."""
    proc = dispatcher_proc(tmp, static_adapters=static_adapters, name=name)
    await start_all(proc)
    return proc


async def start_toolbox(
    tmp: Path, dispatcher_addr: str, store_addr: str, *, name: str = "toolbox", debug: bool = False
) -> Proc:
    """Start a toolbox adapter process (see `toolbox_proc`) and wait until it serves."""
    proc = toolbox_proc(tmp, dispatcher_addr, store_addr, name=name, debug=debug)
    await start_all(proc)
    return proc


async def list_adapters(dispatcher_addr: str) -> list[Any]:
    """The dispatcher's adapter instances (`AdapterInstance` messages)."""
    from dagwire.v1 import dispatcher_service_pb2 as dpb
    from dagwire.v1 import dispatcher_service_pb2_grpc as dpb_grpc

    async with client_channel(dispatcher_addr) as chan:
        reply = await dpb_grpc.DispatcherServiceStub(chan).ListAdapters(
            dpb.ListAdaptersRequest(), timeout=5
        )
    return list(reply.adapters)


async def wait_adapters(dispatcher_addr: str, addresses: set[str], within: float = 20.0) -> None:
    """Wait until an instance at each of `addresses` is registered and healthy."""
    from dagwire.v1 import dispatcher_service_pb2 as dpb

    deadline = time.monotonic() + within
    while True:
        healthy = {
            a.address
            for a in await list_adapters(dispatcher_addr)
            if a.health == dpb.ADAPTER_HEALTH_HEALTHY
        }
        if addresses <= healthy:
            return
        assert time.monotonic() < deadline, f"adapters {addresses - healthy} never registered"
        await asyncio.sleep(0.1)


async def collect_events(client: OrchestratorClient, run_id: str, after: int = 0) -> list[RunEvent]:
    """Every event of the run after `after`, to its `run_finished`."""
    return [e async for e in client.watch_run(run_id, after_sequence=after)]


async def first_event(
    client: OrchestratorClient,
    run_id: str,
    predicate: Callable[[RunEvent], bool],
    within: float = 20.0,
) -> RunEvent:
    """The run's first event that matches `predicate` (fails if the run ends without one)."""
    async with asyncio.timeout(within):
        async for event in client.watch_run(run_id):
            if predicate(event):
                return event
    raise AssertionError(f"run {run_id} finished without the awaited event")


def started(node_id: str) -> Callable[[RunEvent], bool]:
    """Matches the `task_started` events of `node_id`."""
    return lambda e: e.kind is RunEventKind.TASK_STARTED and e.node_id == node_id


async def until(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    """Poll `check` every 0.1 s until it is true (fail after `within` seconds)."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)
