"""`dagwire up` (the local stack as separate processes) and `dagwire health` (one gRPC probe)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import grpc
import grpc.aio
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dagwire.rpc.channels import client_channel
from dagwire.rpc.tls import explain_connect_failure
from dagwire.settings import SettingsError, redact
from dagwire_cli.secure import prepare_secure
from dagwire_cli.stack import (
    DEFAULT_PORT_BASE,
    LOOPBACK,
    PORT_OFFSETS,
    LocalStack,
    PortBusyError,
    StackError,
    StackSettingsError,
    stack_ports,
)
from dagwire_cli.terminal import terminal_text

__all__ = ["register"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_UNREACHABLE = 3

_UP_HELP = """\
Start store, dispatcher, orchestrator and the toolbox adapter, each as its own process.

Every process listens on loopback on the default ports (orchestrator 50051, dispatcher
50052, store 50053, toolbox 50060), so the other commands find them with no flags. Storage is
embedded under --data-dir (SQLite records and artifact files) unless DAGWIRE_MONGODB_URI or
DAGWIRE_S3_ENDPOINT (with DAGWIRE_S3_ACCESS_KEY / DAGWIRE_S3_SECRET_KEY) are set. Every
process gets this environment, so DAGWIRE_SECRETS_DIR gives the orchestrator its secrets
(${secret.NAME}). One line on stderr says when everything is ready; Ctrl-C or SIGTERM stops
every process.

Examples:

  dagwire up                                  # then, in another terminal:
  dagwire run examples/hello.yaml

  dagwire up --data-dir /tmp/dw --verbose     # service logs on stderr, not in files

  dagwire up --port-base 47000                # 47000, 47001, 47002 and 47009; then:
  DAGWIRE_ORCHESTRATOR_ADDR=127.0.0.1:47000 dagwire run examples/hello.yaml

  dagwire up --secure                         # TLS, mTLS, tokens; then, elsewhere:
  source .dagwire/secure/client.env && dagwire run examples/hello.yaml

Exit status: 0 after a clean stop, 2 when a port is busy or a setting is invalid, 1 when a
process failed (its name and the tail of its log are shown).
"""

_HEALTH_HELP = """\
Ask a dagwire server (or any gRPC server) whether it is SERVING, via grpc.health.v1.

Used by container health checks; prints the status on stdout.

Examples:

  dagwire health                              # the orchestrator at DAGWIRE_ORCHESTRATOR_ADDR
  dagwire health 127.0.0.1:50053              # the store
  dagwire health toolbox:50060 --timeout 2

Exit status: 0 SERVING, 1 answering but not SERVING, 3 unreachable.
"""


def register(app: typer.Typer) -> None:
    """Add the `up` and `health` commands to the CLI."""

    @app.command("up", help=_UP_HELP, no_args_is_help=False)
    def up(
        data_dir: Annotated[
            Path,
            typer.Option(
                "--data-dir",
                envvar="DAGWIRE_DATA_DIR",
                help="Embedded storage directory; service logs go to DIR/logs.",
                metavar="DIR",
            ),
        ] = Path(".dagwire"),
        port_base: Annotated[
            int,
            typer.Option(
                "--port-base",
                help="Orchestrator port; dispatcher +1, store +2, toolbox +9.",
                min=1,
                max=65535 - max(PORT_OFFSETS.values()),
                metavar="N",
            ),
        ] = DEFAULT_PORT_BASE,
        verbose: Annotated[
            bool,
            typer.Option("--verbose", "-v", help="Service logs on stderr instead of files."),
        ] = False,
        secure: Annotated[
            bool,
            typer.Option(
                "--secure",
                help="TLS, mTLS and tokens on every process: a development CA, certificates "
                "and principals in DIR/secure/ (reused), and DIR/secure/client.env to source.",
            ),
        ] = False,
    ) -> None:
        setup = None
        if secure:
            ports = stack_ports(port_base)
            addresses = {
                f"DAGWIRE_{name.upper()}_ADDR": f"{LOOPBACK}:{ports[name]}"
                for name in ("orchestrator", "dispatcher", "store")
            }
            try:
                setup = prepare_secure(data_dir.absolute(), host=LOOPBACK, addresses=addresses)
            except (OSError, SettingsError) as exc:
                _say(f"dagwire up: error: cannot prepare {data_dir / 'secure'}: {exc}")
                raise typer.Exit(EXIT_INVALID) from None
            # this process's own probes dial as the admin
            os.environ.update(setup.client_env("admin"))
        stack = LocalStack(data_dir, port_base=port_base, verbose=verbose, secure=setup)
        raise typer.Exit(asyncio.run(_up(stack)))

    @app.command("health", help=_HEALTH_HELP)
    def health(
        address: Annotated[
            str,
            typer.Argument(
                envvar="DAGWIRE_ORCHESTRATOR_ADDR",
                help="The server: host:port (or dns:///name:port, ipv4:A:P,B:P: one of them).",
                show_default=True,
            ),
        ] = f"127.0.0.1:{DEFAULT_PORT_BASE}",
        service: Annotated[
            str,
            typer.Option("--service", help='Service name to ask about ("" = the whole server).'),
        ] = "",
        timeout: Annotated[
            float, typer.Option("--timeout", min=0.1, help="Seconds to wait for an answer.")
        ] = 3.0,
    ) -> None:
        raise typer.Exit(asyncio.run(_health(address, service, timeout)))


def _say(text: str) -> None:
    """`text` on stderr: its lines (a dying service's log tail) each escaped, credentials
    masked."""
    sys.stderr.write("".join(terminal_text(redact(line)) + "\n" for line in text.split("\n")))
    sys.stderr.flush()


async def _up(stack: LocalStack) -> int:
    """Run the stack until a signal or a process failure; returns the exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for the grace period
            _say("dagwire up: killing the remaining processes")
            stack.kill()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        _say(f"dagwire up: starting the stack (data in {stack.data_dir})")
        starting = asyncio.ensure_future(stack.start())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, StackError):
                await starting
            _say("dagwire up: stopped before the stack was ready")
            return EXIT_OK
        try:
            starting.result()
        except (PortBusyError, StackSettingsError) as exc:
            _say(f"dagwire up: error: {exc}")
            return EXIT_INVALID
        except StackError as exc:
            _say(f"dagwire up: error: {exc}")
            return EXIT_FAILED
        _say(stack.ready_line())
        watching = asyncio.ensure_future(stack.wait())
        await asyncio.wait({watching, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if watching.done() and not stop.is_set():
            try:
                watching.result()
            except StackError as exc:
                _say(f"dagwire up: error: {exc}")
            _say("dagwire up: stopping the other processes")
            await stack.stop()
            return EXIT_FAILED
        watching.cancel()
        _say("dagwire up: stopping (Ctrl-C again to kill at once)")
        await stack.stop()
        _say("dagwire up: stopped")
        return EXIT_OK
    finally:
        await stack.stop()
        stopping.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _health(address: str, service: str, deadline: float) -> int:
    """Probe one server's health; returns the exit status."""
    try:
        channel = client_channel(address)
    except SettingsError as exc:
        _say(f"dagwire health: error: {exc}")
        return EXIT_INVALID
    except ValueError as exc:
        _say(f"dagwire health: error: invalid address: {exc}")
        return EXIT_INVALID
    async with channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=deadline
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                _say(f"dagwire health: {address} does not know the service {service!r}")
                return EXIT_INVALID
            why = explain_connect_failure(exc.details() or "") or exc.code().name.lower()
            _say(f"dagwire health: {address} is unreachable ({why})")
            return EXIT_UNREACHABLE
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    typer.echo(status)
    return EXIT_OK if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_FAILED
