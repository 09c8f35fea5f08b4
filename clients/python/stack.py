"""The local stack: store, dispatcher, orchestrator and the toolbox adapter as child processes.

`LocalStack` is what `dagwire up` runs, and what `make run`, the benchmarks and the end-to-end
tests reuse::

    async with LocalStack(Path(".dagwire"), port_base=47000) as stack:
        client = OrchestratorClient(stack.orchestrator_addr)
        ...

Each service runs as ``sys.executable -m dagwire_services.<module>`` (so it works from an
installed package, not only a checkout), in a session of its own (a terminal's Ctrl-C reaches
only the supervisor, which then stops the children in order) and, on Linux, with a
parent-death signal (SIGKILL) so that even a killed supervisor leaves no orphan behind, also
while the children are draining after its SIGTERM. Logs are appended to, never truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from dagwire.errors import DagwireError
from dagwire.rpc.channels import client_channel
from dagwire.settings import DEFAULT_PORTS, SettingsError, StorageSettings
from dagwire.stores.factory import build_artifact_store, describe_storage
from dagwire.v1 import dispatcher_service_pb2 as dpb
from dagwire.v1 import dispatcher_service_pb2_grpc as dpb_grpc
from dagwire_cli.secure import SecureSetup

__all__ = [
    "DEFAULT_PORT_BASE",
    "PORT_OFFSETS",
    "TOOLBOX_AGENTS",
    "ChildExitedError",
    "LocalStack",
    "PortBusyError",
    "StackError",
    "StackSettingsError",
    "StartTimeoutError",
    "stack_ports",
]

LOOPBACK = "127.0.0.1"
#: The orchestrator's default port; every other port is an offset from it (docs/contracts.md §1).
DEFAULT_PORT_BASE = DEFAULT_PORTS["orchestrator"]
PORT_OFFSETS: Mapping[str, int] = {
    "orchestrator": 0,
    "dispatcher": DEFAULT_PORTS["dispatcher"] - DEFAULT_PORT_BASE,
    "store": DEFAULT_PORTS["store"] - DEFAULT_PORT_BASE,
    "toolbox": DEFAULT_PORTS["adapter"] - DEFAULT_PORT_BASE,
}
#: The agent keys the toolbox serves (docs/contracts.md §8); the stack is ready once all are
#: routable.
TOOLBOX_AGENTS = frozenset({"echo", "upper", "concat", "fail", "sleep", "blob"})

DEFAULT_START_TIMEOUT = 60.0
#: Above the orchestrator's own 10 s grace for running workflows plus its cancel tail.
DEFAULT_STOP_GRACE = 25.0
LOG_TAIL_LINES = 20
#: A service's log is appended to across restarts; past this size it first moves to ``.1``.
LOG_ROTATE_BYTES = 10 << 20
_PR_SET_PDEATHSIG = 1


class StackError(DagwireError):
    """The local stack could not start or a process of it failed; the message says which."""


class StackSettingsError(StackError):
    """A ``DAGWIRE_*`` storage setting is invalid or incomplete (nothing was started)."""


class PortBusyError(StackError):
    """A port the stack needs is already in use (nothing was started)."""


class ChildExitedError(StackError):
    """A service process exited on its own; the message names it and shows its log tail."""


class StartTimeoutError(StackError):
    """The stack did not become ready in time; the message says what was still missing."""


def stack_ports(port_base: int = DEFAULT_PORT_BASE) -> dict[str, int]:
    """The port of each process for a port base (the default base gives docs/contracts.md §1's
    ports).

    Args:
        port_base: the orchestrator's port; the others keep their default offsets (+1, +2, +9).

    Returns:
        Process name -> port.

    Raises:
        ValueError: a port would fall outside 1-65535.
    """
    ports = {name: port_base + offset for name, offset in PORT_OFFSETS.items()}
    if port_base < 1 or max(ports.values()) > 65535:
        raise ValueError(
            f"--port-base {port_base} gives ports {min(ports.values())}-{max(ports.values())}: "
            f"choose a base between 1 and {65535 - max(PORT_OFFSETS.values())}"
        )
    return ports


@dataclass
class _Child:
    """One service process of the stack."""

    name: str
    module: str
    address: str
    env: dict[str, str]
    log_path: Path | None
    process: asyncio.subprocess.Process | None = None
    log_file: IO[bytes] | None = None
    log_start: int = 0
    """Where this start's lines begin in the log (earlier starts' lines come before)."""
    exited: asyncio.Future[int] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.log_path is None:
            return "(its log went to stderr above)"
        try:
            with self.log_path.open("rb") as log:
                log.seek(self.log_start)
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc.strerror or exc})"
        tail = text.splitlines()[-lines:]
        return "\n".join("    " + line for line in tail) if tail else "    (empty log)"


class LocalStack:
    """Store, dispatcher, orchestrator and the toolbox adapter, each its own process.

    The constructor does no I/O. `start()` (or ``async with``) checks every port is free,
    starts the processes, and returns once every gRPC health check is SERVING and the
    dispatcher routes every toolbox agent; `stop()` sends SIGTERM in dependency order
    (orchestrator, toolbox, then dispatcher and store), waits up to `stop_grace` seconds for
    each, then SIGKILLs what is left. `wait()` returns when a process exits on its own.

    Storage is embedded under `data_dir` unless ``DAGWIRE_MONGODB_URI`` /
    ``DAGWIRE_S3_ENDPOINT`` (and the S3 keys) are set in `env` or the environment. Every
    process gets that environment, ``DAGWIRE_SECRETS_DIR`` (made absolute) included.

    Args:
        data_dir: embedded storage directory; logs go to ``data_dir/logs/<process>.log``.
        port_base: the orchestrator's port; dispatcher +1, store +2, toolbox +9 (default:
            50051, i.e. docs/contracts.md §1's ports).
        host: the loopback address every process listens on.
        verbose: send the processes' logs to this process's stderr instead of files.
        env: extra environment for every process (on top of ``os.environ``).
        start_timeout: seconds the stack gets to become ready.
        stop_grace: seconds each process gets to stop after SIGTERM before SIGKILL.
        secure: run every process with TLS, mTLS, tokens and grants from this
            ``DIR/secure/`` folder (`dagwire_cli.secure`); this process's own probes then
            dial as the environment says (`dagwire up --secure` sets it to the admin's).
    """

    def __init__(
        self,
        data_dir: Path | str = ".dagwire",
        *,
        port_base: int = DEFAULT_PORT_BASE,
        host: str = LOOPBACK,
        verbose: bool = False,
        env: Mapping[str, str] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_grace: float = DEFAULT_STOP_GRACE,
        secure: SecureSetup | None = None,
    ) -> None:
        self.secure = secure
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.host = host
        self.ports = stack_ports(port_base)
        self.verbose = verbose
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self._env = {**os.environ, **(env or {})}
        secrets = self._env.get("DAGWIRE_SECRETS_DIR")
        if secrets:  # the processes run in data_dir: a relative path means the caller's
            self._env["DAGWIRE_SECRETS_DIR"] = str(Path(secrets).expanduser().absolute())
        self._children: list[_Child] = []
        self._stopping = False
        self.startup_seconds: float | None = None

    # ------------------------------------------------------------------ addresses

    def address(self, name: str) -> str:
        """``host:port`` of one process (``orchestrator``, ``dispatcher``, ``store``,
        ``toolbox``)."""
        return f"{self.host}:{self.ports[name]}"

    @property
    def orchestrator_addr(self) -> str:
        return self.address("orchestrator")

    @property
    def dispatcher_addr(self) -> str:
        return self.address("dispatcher")

    @property
    def store_addr(self) -> str:
        return self.address("store")

    @property
    def toolbox_addr(self) -> str:
        return self.address("toolbox")

    @property
    def log_dir(self) -> Path | None:
        """Where the processes' logs are (None with `verbose`: they go to stderr)."""
        return None if self.verbose else self.data_dir / "logs"

    @property
    def client_env(self) -> dict[str, str]:
        """``DAGWIRE_*_ADDR`` variables that point the CLI (or any client) at this stack."""
        return {
            "DAGWIRE_ORCHESTRATOR_ADDR": self.orchestrator_addr,
            "DAGWIRE_DISPATCHER_ADDR": self.dispatcher_addr,
            "DAGWIRE_STORE_ADDR": self.store_addr,
        }

    @property
    def pids(self) -> dict[str, int]:
        """Process name -> pid of every started process."""
        return {c.name: c.pid for c in self._children if c.pid is not None}

    def ready_line(self) -> str:
        """The one line `dagwire up` prints once the stack is ready."""
        settings = self._storage_settings()
        if settings.mongodb_uri or settings.s3_endpoint:
            storage = describe_storage(settings)
            where = (
                f"records in {storage['execution_store']}, artifacts in {storage['artifact_store']}"
            )
        else:
            where = f"data in {self.data_dir}"
        logs = f"logs in {self.log_dir}" if self.log_dir is not None else "logs on stderr"
        secure = (
            f" TLS, mTLS and tokens on: `source {self.secure.client_env_file}` first."
            if self.secure is not None
            else ""
        )
        return (
            f"dagwire up: ready: orchestrator {self.orchestrator_addr}, dispatcher "
            f"{self.dispatcher_addr}, store {self.store_addr}, toolbox {self.toolbox_addr}; "
            f"{where}; {logs}.{secure} Ctrl-C to stop."
        )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Check the ports, start every process, and wait until the stack is ready.

        Raises:
            PortBusyError: a port is in use (nothing was started).
            StackSettingsError: the storage settings are invalid (nothing was started).
            ChildExitedError: a process exited during start-up (the others were stopped).
            StartTimeoutError: not ready within `start_timeout` (everything was stopped).
        """
        if self._children:
            raise StackError("this stack was already started")
        self._storage_settings()  # fail on bad DAGWIRE_* storage settings before any process
        self._check_ports()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            # The store needs nobody; the dispatcher keeps the adapter registry in the store (a
            # restarted dispatcher knows every adapter at once: docs/registry.md); the
            # orchestrator recovers orphaned runs from the store and the toolbox registers
            # with the dispatcher, so they come last.
            await self._spawn("store", "store", {"DAGWIRE_DATA_DIR": str(self.data_dir)})
            await self._wait_serving(["store"], started)
            await self._spawn("dispatcher", "dispatcher", {"DAGWIRE_STORE_ADDR": self.store_addr})
            await self._wait_serving(["dispatcher"], started)
            peers = {
                "DAGWIRE_DISPATCHER_ADDR": self.dispatcher_addr,
                "DAGWIRE_STORE_ADDR": self.store_addr,
            }
            await self._spawn("orchestrator", "orchestrator", peers)
            await self._spawn(
                "toolbox",
                "adapters.toolbox",
                {**peers, "DAGWIRE_ADVERTISE_ADDR": self.toolbox_addr},
            )
            await self._wait_serving(["orchestrator", "toolbox"], started)
            await self._wait_registered(started)
        except BaseException:
            await self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    async def wait(self) -> None:
        """Return when a process exits on its own.

        Raises:
            ChildExitedError: always, naming the process, its exit code and its log tail
                (unless `stop()` was called, in which case this returns quietly).
        """
        waits = [c.exited for c in self._children if c.exited is not None]
        if not waits:
            return
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if self._stopping:
            return
        for child in self._children:
            if child.exited is not None and child.exited.done():
                raise self._exited_error(child)

    async def stop(self) -> None:
        """Stop every process: SIGTERM in dependency order, SIGKILL after `stop_grace` s.

        Safe to call more than once; returns when no process of the stack is left.
        """
        self._stopping = True
        by_name = {c.name: c for c in self._children}
        for stage in (["orchestrator"], ["toolbox"], ["dispatcher", "store"]):
            children = [by_name[n] for n in stage if n in by_name]
            await asyncio.gather(*(self._stop_child(c, self.stop_grace) for c in children))
        for child in self._children:
            if child.log_file is not None:
                child.log_file.close()
                child.log_file = None

    def kill(self) -> None:
        """SIGKILL every process that is still running (a second Ctrl-C)."""
        for child in self._children:
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()

    # ------------------------------------------------------------------ internals

    def _storage_settings(self) -> StorageSettings:
        given: dict[str, Any] = {
            name: self._env[f"DAGWIRE_{name.upper()}"]
            for name in StorageSettings.model_fields
            if f"DAGWIRE_{name.upper()}" in self._env and name != "data_dir"
        }
        try:
            settings = StorageSettings(**given, data_dir=self.data_dir)
            build_artifact_store(settings)  # no I/O: checks that the S3 keys are complete
        except SettingsError as exc:
            raise StackSettingsError(str(exc)) from None
        except ValidationError as exc:
            problems = [
                f"invalid DAGWIRE_{str(e['loc'][0]).upper() if e['loc'] else ''}: "
                f"{str(e['msg']).removeprefix('Value error, ')}"
                for e in exc.errors()
            ]
            raise StackSettingsError("; ".join(problems)) from None
        return settings

    def _check_ports(self) -> None:
        busy = [f"{self.address(name)} ({name})" for name in self.ports if not self._free(name)]
        if busy:
            raise PortBusyError(
                f"port{'s' if len(busy) > 1 else ''} already in use: {', '.join(busy)}; stop "
                "what listens there (another `dagwire up`?) or choose other ports with "
                "--port-base"
            )

    def _free(self, name: str) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.ports[name]))
            except OSError:
                return False
        return True

    async def _spawn(self, name: str, module: str, env: dict[str, str]) -> None:
        child_env = {
            **self._env,
            "DAGWIRE_LISTEN_ADDR": self.address(name),
            "PYTHONUNBUFFERED": "1",
            **env,
            **(self.secure.service_env(name) if self.secure is not None else {}),
        }
        if name != "toolbox":
            child_env.pop("DAGWIRE_ADVERTISE_ADDR", None)
        log_path = None if self.log_dir is None else self.log_dir / f"{name}.log"
        if log_path is not None:
            # Log files are readable text unless the user chose a format.
            child_env.setdefault("DAGWIRE_LOG_FORMAT", "text")
        child = _Child(name, f"dagwire_services.{module}", self.address(name), child_env, log_path)
        self._children.append(child)
        output: IO[bytes] | None = None
        if log_path is not None:
            output = child.log_file = _open_log(log_path, name)
            child.log_start = output.tell()
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            child.module,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output if output is not None else sys.stderr.fileno(),
            stderr=asyncio.subprocess.STDOUT,
            env=child_env,
            cwd=str(self.data_dir),
            start_new_session=True,
            preexec_fn=_parent_death_signal(),
        )
        child.exited = asyncio.ensure_future(child.process.wait())

    async def _wait_serving(self, names: Sequence[str], started: float) -> None:
        await asyncio.gather(*(self._wait_one_serving(n, started) for n in names))

    async def _wait_one_serving(self, name: str, started: float) -> None:
        child = next(c for c in self._children if c.name == name)
        async with client_channel(child.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                self._raise_if_exited()
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                self._raise_if_late(started, f"the {name} health check is not SERVING", child)
                await asyncio.sleep(0.05)

    async def _wait_registered(self, started: float) -> None:
        toolbox = next(c for c in self._children if c.name == "toolbox")
        async with client_channel(self.dispatcher_addr) as channel:
            dispatcher = dpb_grpc.DispatcherServiceStub(channel)
            while True:
                self._raise_if_exited()
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
                    reply = await dispatcher.ListAdapters(
                        dpb.ListAdaptersRequest(page_size=1000), timeout=2
                    )
                    routed = {
                        key
                        for adapter in reply.adapters
                        if adapter.address == self.toolbox_addr
                        and adapter.health == dpb.ADAPTER_HEALTH_HEALTHY
                        for key in adapter.agents
                    }
                    if routed >= TOOLBOX_AGENTS:
                        return
                self._raise_if_late(
                    started, "the toolbox is not registered with the dispatcher", toolbox
                )
                await asyncio.sleep(0.05)

    def _raise_if_exited(self) -> None:
        for child in self._children:
            if child.exited is not None and child.exited.done():
                raise self._exited_error(child)

    def _raise_if_late(self, started: float, what: str, child: _Child) -> None:
        if time.monotonic() - started > self.start_timeout:
            where = f"last lines of {child.log_path}" if child.log_path else "its log"
            raise StartTimeoutError(
                f"not ready after {self.start_timeout:g} s: {what}; {where}:\n{child.log_tail()}"
            )

    def _exited_error(self, child: _Child) -> ChildExitedError:
        assert child.exited is not None
        code = child.exited.result()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        where = f"last lines of {child.log_path}" if child.log_path else "its log is above"
        return ChildExitedError(f"the {child.name} process {how}; {where}:\n{child.log_tail()}")

    @staticmethod
    async def _stop_child(child: _Child, grace: float) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def _open_log(path: Path, name: str) -> IO[bytes]:
    """A service's log file, opened to append: a restart after a crash keeps the crash's lines.

    A log past `LOG_ROTATE_BYTES` is first renamed to ``<name>.log.1`` (replacing an older
    one), so logs stay bounded. Each start begins with one marker line.
    """
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    log = path.open("ab")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    log.write(f"--- dagwire up: {name} starting at {stamp} ---\n".encode())
    log.flush()
    return log


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook that makes the kernel SIGKILL the child if we die.

    Without it a supervisor killed with SIGKILL would leave its services running. SIGKILL, not
    SIGTERM: a service already draining after the supervisor's own SIGTERM ignores a second
    one and would go on alone for its whole grace period (the durable runs it drove are
    adopted when it is gone). The hook makes two system calls (no locks, no allocation),
    which is safe between fork and exec; if the supervisor died before the first, the child
    sees a new parent and exits at once.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    supervisor = os.getpid()

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != supervisor:
            os._exit(1)

    return set_pdeathsig
