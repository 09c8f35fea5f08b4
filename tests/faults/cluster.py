"""The replicated stack the fault suite breaks: PostgreSQL, FerretDB and MinIO that can be killed
with SIGKILL and restarted on the same port and data, two store replicas, two orchestrator
replicas, the dispatcher and two toolbox adapters, all real processes on loopback ports.

See docs/faults.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dagwire.rpc.orchestrator_client import OrchestratorClient
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from tests.servers import (
    FerretDBServer,
    MinioServer,
    PostgresServer,
    devservers_bin_dir,
    postgres_program,
    tcp_port_open,
    wait_until,
)
from tests.stack import (
    Proc,
    dispatcher_proc,
    free_address,
    orchestrator_proc,
    toolbox_proc,
    wait_adapters,
)

__all__ = [
    "DISPATCHER_REPLICAS",
    "Cluster",
    "KillableFerretDB",
    "KillableMinio",
    "KillablePostgres",
]

#: Dispatcher replicas: they share the adapter registry through the store (docs/registry.md).
DISPATCHER_REPLICAS = 2
ORCHESTRATOR_REPLICAS = 2
STORE_REPLICAS = 2
ADAPTERS = 2

#: Orchestrator lease: short, so a killed orchestrator's runs are adopted within seconds.
LEASE_SECONDS = 2.0
#: Adapter registration lease: short, so adapters re-register quickly with a restarted dispatcher.
ADAPTER_LEASE_SECONDS = 3.0
#: How long an orchestrator waits out a store outage before failing a run (far above any outage
#: the suite makes: a run that fails for an outage is a violation).
STORE_RETRY_SECONDS = 120.0
SERVE_WITHIN = 60.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _wait_dead(pid: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"process {pid} still alive {within} s after SIGKILL")
        time.sleep(0.02)


class KillablePostgres(PostgresServer):
    """A PostgreSQL cluster that can be killed with SIGKILL (postmaster and every backend, which
    share its process group: pg_ctl starts it in a session of its own) and started again on the
    same port and data directory (it recovers from its WAL)."""

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        pid = self.postmaster_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        _wait_dead(pid)
        # The postmaster was reparented when pg_ctl exited; where nothing reaps orphans (PID 1
        # of a container) it stays a zombie, and its live-looking pid in the lock file makes
        # the next start refuse. It is dead: remove its lock files as a crash would leave them.
        for lock in (self.data_dir / "postmaster.pid", self._dir / f".s.PGSQL.{self.port}.lock"):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    #: A commit is acknowledged once its WAL is written (to the OS, which a kill -9 of the
    #: server does not lose): a database that forgets acknowledged writes when it is killed
    #: is not one any runtime can be durable on (docs/faults.md).
    synchronous_commit = "on"

    def restart(self) -> None:
        options = self.server_options(self._dir)
        self._run(
            [
                postgres_program("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-w",
                "-t",
                str(int(self.start_timeout)),
                "start",
            ],
            timeout=self.start_timeout + 10,
        )
        wait_until(
            lambda: tcp_port_open(self.host, self.port),
            what="PostgreSQL (restarted)",
            timeout=self.start_timeout,
            log_path=self.log_path,
        )


class KillableFerretDB(FerretDBServer):
    """FerretDB that can be killed with SIGKILL and started again on the same port."""

    def kill(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> None:
        binary = (self.bin_dir or devservers_bin_dir()) / "ferretdb"
        argv = [str(binary), "--listen-addr", f"{self.host}:{self.port}"]
        self._spawn([*argv, "--postgresql-url", self.postgresql_url])
        wait_until(
            self._ping,
            what="FerretDB (restarted)",
            timeout=self.start_timeout,
            log_path=self.log_path,
            process=self.process,
        )


class KillableMinio(MinioServer):
    """MinIO that can be killed with SIGKILL and started again on the same port and data."""

    def kill(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self) -> None:
        binary = (self.bin_dir or devservers_bin_dir()) / "minio"
        self._spawn(
            [
                str(binary),
                "server",
                str(self._dir / "data"),
                "--address",
                self.endpoint,
                "--console-address",
                f"{self.host}:{self.console_port}",
                "--quiet",
            ],
            env={
                "MINIO_ROOT_USER": self.access_key,
                "MINIO_ROOT_PASSWORD": self.secret_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
            },
        )
        wait_until(
            self._healthy,
            what="MinIO (restarted)",
            timeout=self.start_timeout,
            log_path=self.log_path,
            process=self.process,
        )


@dataclass
class Cluster:
    """Every process of the replicated stack, and which of them is down right now."""

    tmp: Path
    postgres: KillablePostgres
    ferretdb: KillableFerretDB
    minio: KillableMinio
    stores: list[Proc]
    dispatchers: list[Proc]
    adapters: list[Proc]
    orchestrators: list[Proc]
    down: set[str] = field(default_factory=set)
    clients: dict[str, OrchestratorClient] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)
    closed: bool = False

    @property
    def services(self) -> list[Proc]:
        return [*self.stores, *self.dispatchers, *self.adapters, *self.orchestrators]

    @property
    def ports(self) -> set[int]:
        """Every TCP port the cluster listens on."""
        ports = {int(p.address.rsplit(":", 1)[1]) for p in self.services}
        ports |= {self.postgres.port, self.ferretdb.port, self.minio.port, self.minio.console_port}
        return ports

    @classmethod
    async def start(cls, tmp: Path) -> Cluster:
        pg = KillablePostgres(database="ferretdb")
        pg.start()
        fdb = KillableFerretDB(postgresql_url=pg.url)
        minio = KillableMinio()
        try:
            fdb.start()
            minio.start()
        except BaseException:
            fdb.stop()
            pg.stop()
            raise
        storage = [
            "--mongodb-uri",
            f"{fdb.uri}dagwire_faults",
            "--s3-endpoint",
            minio.endpoint,
            "--s3-access-key",
            minio.access_key,
            "--s3-bucket",
            "dagwire-faults",
        ]
        stores = []
        for i in range(STORE_REPLICAS):
            address = free_address()
            proc = Proc(
                f"store-{i}",
                [
                    "dagwire_services.store",
                    "--listen-addr",
                    address,
                    "--data-dir",
                    str(tmp / f"store-{i}-data"),
                    *storage,
                ],
                address,
                tmp / f"store-{i}.log",
                env={"DAGWIRE_S3_SECRET_KEY": minio.secret_key},
            )
            stores.append(proc)
        dispatchers = [
            dispatcher_proc(tmp, name=f"dispatcher-{i}") for i in range(DISPATCHER_REPLICAS)
        ]
        every_store = _target(stores)
        every_dispatcher = _target(dispatchers)
        for proc in dispatchers:
            proc.env["DAGWIRE_LEASE_SECONDS"] = str(ADAPTER_LEASE_SECONDS)
            proc.args += ["--store-addr", every_store]
        adapters = []
        for i in range(ADAPTERS):
            proc = toolbox_proc(
                tmp,
                every_dispatcher,
                every_store,
                name=f"adapter-{i}",
                debug=True,
            )
            proc.env["DAGWIRE_LEASE_SECONDS"] = str(ADAPTER_LEASE_SECONDS)
            adapters.append(proc)
        orchestrators = [
            orchestrator_proc(
                tmp,
                every_store,
                every_dispatcher,
                "--lease-seconds",
                str(LEASE_SECONDS),
                "--store-retry-seconds",
                str(STORE_RETRY_SECONDS),
                name=f"orchestrator-{i}",
            )
            for i in range(ORCHESTRATOR_REPLICAS)
        ]
        cluster = cls(tmp, pg, fdb, minio, stores, dispatchers, adapters, orchestrators)
        try:
            for proc in cluster.services:
                proc.start()
                assert proc.popen is not None
                cluster.pids.add(proc.popen.pid)
            await asyncio.gather(*(p.wait_serving(SERVE_WITHIN) for p in cluster.services))
            await cluster.wait_adapters()
        except BaseException:
            await cluster.close()
            raise
        for pid in (pg.postmaster_pid(), fdb.process and fdb.process.pid):
            if pid:
                cluster.pids.add(pid)
        if minio.process is not None:
            cluster.pids.add(minio.process.pid)
        return cluster

    async def wait_adapters(self) -> None:
        for dispatcher in self.dispatchers:
            await wait_adapters(dispatcher.address, {a.address for a in self.adapters}, 30.0)

    # ------------------------------------------------------------------ clients

    def live_orchestrators(self) -> Iterator[OrchestratorClient]:
        """Clients of the orchestrator replicas that are up (a client picks a live replica
        itself until targets balance over replicas)."""
        for proc in self.orchestrators:
            if proc.name not in self.down:
                yield self.client(proc)

    def client(self, proc: Proc) -> OrchestratorClient:
        if proc.name not in self.clients:
            self.clients[proc.name] = OrchestratorClient(
                proc.address, reconnect_seconds=5, call_timeout=15
            )
        return self.clients[proc.name]

    def executions(self) -> RemoteExecutionStore:
        return RemoteExecutionStore(self.stores[0].address)

    def artifacts(self) -> RemoteArtifactStore:
        return RemoteArtifactStore(self.stores[0].address)

    # ------------------------------------------------------------------ faults

    async def kill_service(self, proc: Proc) -> None:
        """SIGKILL a service process."""
        self.down.add(proc.name)
        proc.stop(signal.SIGKILL)

    async def restart_service(self, proc: Proc) -> None:
        """Start a killed service again on its address (same flags, log appended)."""
        proc.start()
        assert proc.popen is not None
        self.pids.add(proc.popen.pid)
        await proc.wait_serving(SERVE_WITHIN)
        if proc in self.dispatchers or proc in self.adapters:
            await self.wait_adapters()
        self.down.discard(proc.name)

    async def kill_server(self, name: str) -> None:
        self.down.add(name)
        await asyncio.to_thread(self._server(name).kill)

    async def restart_server(self, name: str) -> None:
        server = self._server(name)
        await asyncio.to_thread(server.restart)
        if name == "postgres":
            pid = self.postgres.postmaster_pid()
        elif name == "ferretdb":
            pid = self.ferretdb.process.pid if self.ferretdb.process else None
        else:
            pid = self.minio.process.pid if self.minio.process else None
        if pid:
            self.pids.add(pid)
        self.down.discard(name)

    def _server(self, name: str) -> KillablePostgres | KillableFerretDB | KillableMinio:
        return {"postgres": self.postgres, "ferretdb": self.ferretdb, "minio": self.minio}[name]

    # ------------------------------------------------------------------ teardown

    async def close(self) -> None:
        """Stop every process (services first, then MinIO, FerretDB, PostgreSQL)."""
        if self.closed:
            return
        self.closed = True
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()
        self.clients.clear()
        for proc in reversed(self.services):
            proc.stop()
        for server in (self.minio, self.ferretdb, self.postgres):
            with contextlib.suppress(Exception):
                server.stop()

    def leaks(self) -> list[str]:
        """What is still alive or listening after `close`: one line per leak."""
        out = []
        for pid in sorted(self.pids):
            if _pid_alive(pid):
                out.append(f"process {pid} still alive")
        for port in sorted(self.ports):
            if port and tcp_port_open("127.0.0.1", port, timeout=0.2):
                out.append(f"port {port} still accepts connections")
        addresses = {p.address for p in self.services}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if any(a in cmdline for a in addresses) and _pid_alive(int(entry.name)):
                out.append(f"process {entry.name} still runs: {cmdline[:160]}")
        return out


def _target(procs: list[Proc]) -> str:
    """A gRPC target balanced over every replica (docs/targets.md)."""
    return "ipv4:" + ",".join(p.address for p in procs)
