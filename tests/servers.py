"""Start and stop dagwire's real development servers for tests.

The servers are built by ``scripts/devservers.sh`` (FerretDB v1.24.0 and MinIO,
pinned in ``devservers/go.mod``) and PostgreSQL 15 from Debian's package, as
described in docs/contracts.md §7. Each server runs on a free loopback port with a
throwaway directory under ``/tmp`` that holds its data and its log file; the
log is only shown (its tail) when the server fails to start.

Typical use::

    with PostgresServer() as pg, FerretDBServer(postgresql_url=pg.url) as fdb:
        client = AsyncMongoClient(fdb.uri)

Set ``DAGWIRE_KEEP_SERVER_DATA=1`` to keep the directories (and logs) after
the servers stop, and ``DAGWIRE_DEVSERVERS_BIN`` to use already-built
binaries instead of running ``scripts/devservers.sh``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVSERVERS_SCRIPT = REPO_ROOT / "scripts" / "devservers.sh"
POSTGRES_BIN_DIRS = (Path("/usr/lib/postgresql/15/bin"),)
LOOPBACK = "127.0.0.1"

DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 40
DEFAULT_BUCKET_PREFIX = "dagwire-test"


class ServerStartError(RuntimeError):
    """A development server did not become ready in time (message has its log tail)."""


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class S3Endpoint:
    """Where the S3-compatible store is and how to log in to it."""

    endpoint: str  # "host:port" or "http(s)://host:port", as configured
    access_key: str
    secret_key: str
    bucket_prefix: str = DEFAULT_BUCKET_PREFIX

    @property
    def host(self) -> str:
        """``host:port`` without a scheme (what the minio SDK accepts)."""
        if "://" in self.endpoint:
            return urlsplit(self.endpoint).netloc
        return self.endpoint

    @property
    def secure(self) -> bool:
        """True only for an ``https://`` endpoint."""
        return self.endpoint.startswith("https://")


#: Ports this test process handed out: a port is free until its server binds it, so two
#: servers started together could otherwise be given the same one.
_HANDED_OUT: set[int] = set()


def find_free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now and not handed out before by this
    process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def tcp_port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def keep_server_data() -> bool:
    return os.environ.get("DAGWIRE_KEEP_SERVER_DATA", "") not in ("", "0")


@functools.cache
def devservers_bin_dir() -> Path:
    """Directory with the ``ferretdb`` and ``minio`` binaries (built once per process).

    Runs ``scripts/devservers.sh``, which builds into a cache outside the
    checkout (a no-op when already built) and installs PostgreSQL if needed.
    """
    override = os.environ.get("DAGWIRE_DEVSERVERS_BIN")
    if override:
        return Path(override)
    proc = subprocess.run(
        ["bash", str(DEVSERVERS_SCRIPT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{DEVSERVERS_SCRIPT} failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{DEVSERVERS_SCRIPT} printed no bin dir:\n{proc.stderr[-4000:]}")
    return Path(lines[-1])


def postgres_program(name: str) -> str:
    """Path of a PostgreSQL program (``initdb``, ``pg_ctl``, ``createdb``)."""
    for directory in POSTGRES_BIN_DIRS:
        candidate = directory / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"PostgreSQL program {name!r} not found in {[str(d) for d in POSTGRES_BIN_DIRS]} "
            "or PATH; run scripts/devservers.sh (it installs Debian's 'postgresql' package)"
        )
    return found


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    log_path: Path,
    process: subprocess.Popen[bytes] | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``ready`` until it returns True; raise ServerStartError with the log tail."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if process is not None and process.poll() is not None:
            raise ServerStartError(
                f"{what} exited with code {process.returncode} before it was ready; "
                f"last lines of {log_path}:\n{log_tail(log_path)}"
            )
        try:
            if ready():
                return
        except Exception as exc:  # readiness probes raise until the server answers
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last probe error: {last_error!r})" if last_error else ""
            raise ServerStartError(
                f"{what} not ready after {timeout:.0f} s{detail}; "
                f"last lines of {log_path}:\n{log_tail(log_path)}"
            )
        time.sleep(interval)


def stop_process(process: subprocess.Popen[bytes], timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
    """SIGTERM the process (its own session/group), wait, then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


class _Server:
    """Common lifecycle: a throwaway directory, start/stop, context manager."""

    name = "server"

    def __init__(self, *, start_timeout: float = DEFAULT_START_TIMEOUT) -> None:
        self.start_timeout = start_timeout
        self.host = LOOPBACK
        self.port = 0
        self.base_dir: Path | None = None
        self.startup_seconds: float | None = None

    @property
    def log_path(self) -> Path:
        return self._dir / f"{self.name}.log"

    @property
    def _dir(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.base_dir

    def _make_dir(self) -> Path:
        # Under /tmp, not pytest's tmp root: that one is private to root, and
        # PostgreSQL runs as the postgres user.
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"dagwire-{self.name}-", dir="/tmp"))
        return self.base_dir

    def start(self) -> Self:
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        try:
            self._stop()
        finally:
            if self.base_dir is not None and not keep_server_data():
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = None

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _ProcessServer(_Server):
    """A server that we run in the foreground as a child process."""

    def __init__(self, *, start_timeout: float = DEFAULT_START_TIMEOUT) -> None:
        super().__init__(start_timeout=start_timeout)
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def _spawn(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=self._dir,
            start_new_session=True,  # own process group: signals from the terminal don't reach it
        )

    def _stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# --------------------------------------------------------------------------- PostgreSQL


class PostgresServer(_Server):
    """A throwaway PostgreSQL 15 cluster on a free loopback port (trust auth).

    As root, ``initdb`` and the server run as the ``postgres`` OS user, in a
    directory under ``/tmp`` owned by it. ``durable=False`` (the default)
    turns fsync off: the cluster is thrown away, so crash safety buys nothing.
    """

    name = "postgres"

    def __init__(
        self,
        *,
        database: str = "dagwire",
        user: str = "postgres",
        durable: bool = False,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(start_timeout=start_timeout)
        self.database = database
        self.durable = durable  # False: fsync off, for speed (the cluster is thrown away)
        self.user = user
        self._as_root = os.geteuid() == 0
        self._running = False

    #: Whether a commit waits for its WAL write: "off" acknowledges commits that a kill -9 of
    #: the server then loses (fine for a throwaway cluster nobody kills).
    synchronous_commit = "off"

    def server_options(self, socket_dir: Path) -> str:
        """The ``postgres`` options this cluster runs with."""
        options = f"-p {self.port} -k {socket_dir} -c listen_addresses={self.host}"
        if not self.durable:  # fsync and full pages only matter when the OS itself crashes
            options += " -c fsync=off -c full_page_writes=off"
            options += f" -c synchronous_commit={self.synchronous_commit}"
        return options

    @property
    def data_dir(self) -> Path:
        return self._dir / "data"

    @property
    def url(self) -> str:
        return f"postgres://{self.user}@{self.host}:{self.port}/{self.database}"

    def _run(self, argv: Sequence[str], *, timeout: float) -> None:
        """Run a PostgreSQL program, as the postgres OS user when we are root."""
        # initdb and postgres refuse to run as root: switch to the postgres user.
        os_user = "postgres" if self._as_root else None
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                timeout=timeout,
                check=False,
                user=os_user,
                group=os_user,
                extra_groups=[] if os_user else None,
            )
        if proc.returncode != 0:
            raise ServerStartError(
                f"{argv[0]} failed with exit code {proc.returncode}; "
                f"last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )

    def _start(self) -> None:
        base = self._make_dir()
        self.log_path.touch()
        if self._as_root:
            for path in (base, self.log_path):
                shutil.chown(path, user="postgres", group="postgres")
        self._run(
            [
                postgres_program("initdb"),
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-U",
                self.user,
                "--no-sync",  # a throwaway cluster: no need to flush it to disk
            ],
            timeout=self.start_timeout,
        )
        self.port = find_free_port()
        options = self.server_options(base)
        self._running = True  # from here on, stop() must run pg_ctl stop
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
            what="PostgreSQL",
            timeout=self.start_timeout,
            log_path=self.log_path,
        )
        self._run(
            [
                postgres_program("createdb"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                self.database,
            ],
            timeout=self.start_timeout,
        )

    def _stop(self) -> None:
        if not self._running:
            return
        self._running = False
        try:
            self._run(
                [
                    postgres_program("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(DEFAULT_STOP_TIMEOUT)),
                    "stop",
                ],
                timeout=DEFAULT_STOP_TIMEOUT + 10,
            )
        except (ServerStartError, subprocess.TimeoutExpired):
            self._kill_postmaster()

    def _kill_postmaster(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError, ProcessLookupError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- FerretDB


class FerretDBServer(_ProcessServer):
    """FerretDB v1.24 (our ``devservers/cmd/ferretdb``) over a PostgreSQL database."""

    name = "ferretdb"

    def __init__(
        self,
        *,
        postgresql_url: str,
        bin_dir: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(start_timeout=start_timeout)
        self.postgresql_url = postgresql_url
        self.bin_dir = bin_dir

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    def _start(self) -> None:
        binary = (self.bin_dir or devservers_bin_dir()) / "ferretdb"
        self._make_dir()
        self.port = find_free_port()
        self._spawn(
            [
                str(binary),
                "--listen-addr",
                f"{self.host}:{self.port}",
                "--postgresql-url",
                self.postgresql_url,
            ]
        )
        wait_until(
            self._ping,
            what="FerretDB",
            timeout=self.start_timeout,
            log_path=self.log_path,
            process=self.process,
        )

    def _ping(self) -> bool:
        if not tcp_port_open(self.host, self.port):
            return False
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000
        )
        try:
            reply = client.admin.command("ping")
        finally:
            client.close()
        return bool(reply.get("ok"))


# --------------------------------------------------------------------------- MinIO


class MinioServer(_ProcessServer):
    """A single-drive MinIO server with its own root credentials."""

    name = "minio"

    def __init__(
        self,
        *,
        access_key: str = "dagwire-minio",
        secret_key: str = "dagwire-minio-secret",
        bin_dir: Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(start_timeout=start_timeout)
        if len(access_key) < 3 or len(secret_key) < 8:
            raise ValueError("MinIO needs an access key of 3+ and a secret key of 8+ characters")
        self.access_key = access_key
        self.secret_key = secret_key
        self.bin_dir = bin_dir
        self.console_port = 0

    @property
    def endpoint(self) -> str:
        """``host:port``, as the minio SDK wants it (with ``secure=False``)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def _start(self) -> None:
        binary = (self.bin_dir or devservers_bin_dir()) / "minio"
        base = self._make_dir()
        data = base / "data"
        data.mkdir()
        self.port = find_free_port()
        self.console_port = find_free_port()
        self._spawn(
            [
                str(binary),
                "server",
                str(data),
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
            what="MinIO",
            timeout=self.start_timeout,
            log_path=self.log_path,
            process=self.process,
        )

    def _healthy(self) -> bool:
        if not tcp_port_open(self.host, self.port):
            return False
        # "live" answers once the process serves HTTP; "ready" once it can serve S3.
        for probe in ("live", "ready"):
            try:
                with urllib.request.urlopen(f"{self.url}/minio/health/{probe}", timeout=1) as resp:
                    if resp.status != 200:
                        return False
            except urllib.error.URLError:
                return False
        return True
