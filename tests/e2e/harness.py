"""Run the `dagwire` CLI as a user would: `dagwire up` as a subprocess, commands against it.

Every stack gets a port base of its own (four free ports at N, N+1, N+2, N+9) and a throwaway
data directory, so test runs never collide; inherited ``DAGWIRE_*`` variables are dropped so
the embedded storage and the stack's own addresses are what every command sees.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagwire_cli.stack import PORT_OFFSETS, stack_ports

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
LOOPBACK = "127.0.0.1"
#: Safety nets only (a hung command fails the test instead of hanging it); never asserted on.
COMMAND_TIMEOUT = 120.0
UP_TIMEOUT = 120.0
READY = re.compile(r"dagwire up: ready")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def dagwire_executable() -> list[str]:
    """The installed ``dagwire`` console script next to this interpreter."""
    script = Path(sys.executable).with_name("dagwire")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "dagwire_cli.main"]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without any ``DAGWIRE_*`` variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGWIRE_")}
    env.pop("COLUMNS", None)
    return {**env, **(extra or {})}


def port_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_listening(port: int, host: str = LOOPBACK) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def free_port_base() -> int:
    """A port base whose four stack ports are free right now (below the ephemeral range)."""
    span = max(PORT_OFFSETS.values()) + 1
    for _ in range(200):
        base = random.randrange(20000, 32000 - span, span)
        if all(port_free(p) for p in stack_ports(base).values()):
            return base
    raise RuntimeError("no free port base found between 20000 and 32000")


@dataclass
class Result:
    """What a finished command left: its status and both streams."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\n-> exit {self.returncode}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


def run_cli(
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> Result:
    """Run one ``dagwire`` command to its end (stdin closed, not a terminal)."""
    argv = [*dagwire_executable(), *map(str, args)]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Result(argv, proc.returncode, proc.stdout, proc.stderr)


@dataclass
class UpProcess:
    """A running ``dagwire up``: its process, its ports, and what it wrote to stderr."""

    process: subprocess.Popen[str]
    ports: dict[str, int]
    data_dir: Path
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The ``DAGWIRE_*_ADDR`` variables that point a command at this stack."""
        return {
            "DAGWIRE_ORCHESTRATOR_ADDR": f"{LOOPBACK}:{self.ports['orchestrator']}",
            "DAGWIRE_DISPATCHER_ADDR": f"{LOOPBACK}:{self.ports['dispatcher']}",
            "DAGWIRE_STORE_ADDR": f"{LOOPBACK}:{self.ports['store']}",
        }

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def child_pids(self) -> list[int]:
        """The pids of the processes this `dagwire up` started (its direct children)."""
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            return [c.pid for c in psutil.Process(self.process.pid).children()]
        return []

    def read_until(self, pattern: re.Pattern[str], timeout: float = UP_TIMEOUT) -> str:
        """Read stderr lines until one matches `pattern` (or the process exits)."""
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stderr, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=0.5):
                    continue
                line = self.process.stderr.readline()
                if not line:
                    break
                self.stderr_lines.append(line)
                if pattern.search(line):
                    return line
        raise AssertionError(
            f"`dagwire up` never printed {pattern.pattern!r} (exit {self.process.poll()}):\n"
            f"{self.stderr}\n{self.log_tails()}"
        )

    def wait_exit(self, timeout: float = UP_TIMEOUT) -> int:
        """Wait for the process to exit on its own, collecting stderr; its exit status."""
        _, err = self.process.communicate(timeout=timeout)
        self.stderr_lines.append(err or "")
        return self.process.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = UP_TIMEOUT) -> int:
        """Send `sig` and wait for a clean exit; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        self.stderr_lines.append(err or "")
        return self.process.returncode

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log}\n" + "\n".join(tail))
        return "\n".join(out)


def start_up(
    data_dir: Path,
    *,
    port_base: int | None,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> UpProcess:
    """Start ``dagwire up`` (not waiting for it to be ready)."""
    base_args = ["--port-base", str(port_base)] if port_base is not None else []
    argv = [*dagwire_executable(), "up", "--data-dir", str(data_dir), *base_args, *args]
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(env),
        cwd=data_dir.parent,
    )
    return UpProcess(process, stack_ports(port_base) if port_base else stack_ports(), data_dir)


@contextlib.contextmanager
def running_up(
    data_dir: Path, *, port_base: int | None, env: Mapping[str, str] | None = None
) -> Iterator[UpProcess]:
    """``dagwire up`` started and ready; stopped with SIGTERM afterwards."""
    up = start_up(data_dir, port_base=port_base, env=env)
    try:
        up.read_until(READY)
        yield up
    finally:
        up.stop()


def write_spec(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def blob_sha256(size: int, seed: int) -> str:
    """docs/contracts.md §8's `blob` recomputed: sha256 over the digests of "seed:0", "seed:1",
    ..."""
    total = hashlib.sha256()
    written = 0
    index = 0
    batch = 4096
    while written < size:
        block = b"".join(
            hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(index, index + batch)
        )
        index += batch
        block = block[: size - written]
        total.update(block)
        written += len(block)
    return total.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def strip_ansi(text: str) -> str:
    """`text` without terminal control sequences (colours, cursor moves)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r", "", text)
