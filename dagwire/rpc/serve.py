"""The one server foundation: a `grpc.aio` server with health, reflection, limits and shutdown.

With ``DAGWIRE_TLS_CERT``/``DAGWIRE_TLS_KEY`` set a server serves TLS only (mTLS with
``DAGWIRE_TLS_CLIENT_CA``), and with ``DAGWIRE_HEALTH_ADDR`` it also serves its health alone on
that plaintext address, for probes that cannot speak TLS (`dagwire.rpc.tls`, docs/security.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dagwire.auth import AUTH_FILE_ENV, AuthFile, token_from_env
from dagwire.errors import DagwireError
from dagwire.grants import GrantKey
from dagwire.quotas import QuotaBook
from dagwire.rpc.auth import AuthInterceptor
from dagwire.rpc.channels import KEEPALIVE_OPTIONS, channel_options, client_channel
from dagwire.rpc.status import StatusInterceptor
from dagwire.rpc.tls import TlsConfig
from dagwire.settings import DEFAULT_MAX_MESSAGE_BYTES, CommonSettings, SettingsError, redact

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "ListenError",
    "RunningServer",
    "Service",
    "channel_options",
    "create_server",
    "insecure_channel",
    "run_server",
    "serve_main",
    "server_options",
    "start_server",
]

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 10.0

_KEEPALIVE_OPTIONS = KEEPALIVE_OPTIONS


class ListenError(DagwireError):
    """The server cannot listen on its address (busy, or not an address of this host)."""


class Closeable(Protocol):
    """Anything with an async `aclose()` (stores, clients) that a server closes on shutdown."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Service:
    """One gRPC service to serve: its full name (from the descriptor) and how to register it.

    Attributes:
        name: the full service name, e.g. ``dagwire.v1.ArtifactStoreService``.
        register: adds the servicer to a server (a generated ``add_XServicer_to_server``
            bound to the servicer, e.g. ``functools.partial(add_fn, servicer)``).
    """

    name: str
    register: Callable[[grpc.aio.Server], None]


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Channel arguments every dagwire server uses: message limits, keepalive, no port sharing.

    Args:
        max_message_bytes: send and receive limit per message.

    Returns:
        Options for `grpc.aio.server(options=...)`.
    """
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on a busy port must fail, not share it
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),  # accept client pings
        *_KEEPALIVE_OPTIONS,
    ]


def insecure_channel(
    address: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> grpc.aio.Channel:
    """A long-lived channel to a dagwire service: `dagwire.rpc.channels.client_channel`
    (plaintext unless the ``DAGWIRE_TLS_*`` settings ask for TLS).

    Args:
        address: a gRPC target of the service (``host:port``, ``dns:///name:port``, ``ipv4:...``).
        max_message_bytes: send and receive limit per message.

    Returns:
        The channel; close it with ``await channel.close()``.
    """
    return client_channel(address, max_message_bytes=max_message_bytes)


def create_server(
    address: str,
    services: Sequence[Service],
    *,
    health_servicer: health.aio.HealthServicer | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    tls: TlsConfig | None = None,
    auth: AuthFile | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Build a server bound to `address` with health, reflection and the status interceptor:
    plaintext, or TLS only when `tls` has a server certificate.

    The server is not started. Health reports NOT_SERVING for ``""`` and every service until
    the caller sets SERVING after start (`start_server` does).

    Args:
        address: ``host:port`` to bind; port 0 picks a free port (tests bind 127.0.0.1:0).
        services: the services to serve.
        health_servicer: the health servicer to register (a fresh one when None).
        max_message_bytes: send and receive limit per message.
        interceptors: more interceptors, run after the status interceptor.
        tls: the TLS settings (default: the environment's, `TlsConfig.from_env`).
        auth: the principals every call is checked against (default: ``DAGWIRE_AUTH_FILE``'s,
            `AuthFile.from_env`; auth is off when that is unset). Health stays open.

    Returns:
        ``(server, port)``: the port actually bound.

    Raises:
        ListenError: the address is busy or cannot be bound (the message names it).
        SettingsError: a TLS setting or the auth file is invalid (a missing, unreadable or
            invalid file).
    """
    tls = TlsConfig.from_env() if tls is None else tls
    auth = AuthFile.from_env() if auth is None else auth
    credentials = tls.server_credentials() if tls.serves_tls else None
    _check_bindable(address)
    checks = [AuthInterceptor(auth, GrantKey.from_env())] if auth is not None else []
    server = grpc.aio.server(
        interceptors=[StatusInterceptor(), *checks, *interceptors],
        options=server_options(max_message_bytes),
    )
    for service in services:
        service.register(server)
    health_pb2_grpc.add_HealthServicer_to_server(
        health_servicer or health.aio.HealthServicer(), server
    )
    names = [s.name for s in services]
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise ListenError(
            f"cannot listen on {address}: the address is in use or not available on this "
            "host (choose another with --listen-addr or DAGWIRE_LISTEN_ADDR)"
        ) from exc
    if port == 0:  # older gRPC versions report a failed bind this way
        raise ListenError(f"cannot listen on {address}: the address is in use or not available")
    return server, port


def _health_server(
    address: str, servicer: health.aio.HealthServicer
) -> tuple[grpc.aio.Server, int]:
    """A plaintext server of `servicer` alone on `address` (``DAGWIRE_HEALTH_ADDR``)."""
    _check_bindable(address, setting="DAGWIRE_HEALTH_ADDR")
    server = grpc.aio.server(options=server_options())
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise ListenError(f"cannot listen on DAGWIRE_HEALTH_ADDR={address}: not available")
    return server, port


def _check_bindable(address: str, *, setting: str = "") -> None:
    """Fail with a one-line `ListenError` before gRPC tries (and logs its own error lines)."""
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit() or int(port_text) == 0 or address.startswith("unix:"):
        return
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ListenError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    problems = []
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
                return
            except OSError as exc:
                problems.append(exc.strerror or str(exc))
    reason = problems[0].lower() if problems else "no address to bind"
    hint = setting or "--listen-addr or DAGWIRE_LISTEN_ADDR"
    raise ListenError(f"cannot listen on {address}: {reason} (choose another address with {hint})")


@dataclass
class RunningServer:
    """A started server: its port, its health servicer, and a graceful `stop()`.

    ``health_server``/``health_port``: the plaintext health-only server on
    ``DAGWIRE_HEALTH_ADDR``, when set.
    """

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    tls: bool = False
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    _stopped: bool = field(default=False, repr=False)

    async def stop(self, grace: float | None = DEFAULT_GRACE_SECONDS) -> None:
        """Turn health NOT_SERVING, refuse new calls, drain in-flight ones within `grace` s.

        Args:
            grace: seconds in-flight calls get to finish (None: cancel them at once).
        """
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:  # probes see NOT_SERVING until the end
            await self.health_server.stop(None)


async def start_server(
    address: str,
    services: Sequence[Service],
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    tls: TlsConfig | None = None,
    auth: AuthFile | None = None,
) -> RunningServer:
    """Create and start a server (and its plaintext health server when ``DAGWIRE_HEALTH_ADDR``
    is set), then report SERVING for ``""`` and every service.

    Args:
        address: ``host:port`` to bind (port 0 picks a free one).
        services: the services to serve.
        max_message_bytes: send and receive limit per message.
        interceptors: more server interceptors.
        tls: the TLS settings (default: the environment's, `TlsConfig.from_env`).
        auth: the principals calls are checked against (default: ``DAGWIRE_AUTH_FILE``'s).

    Returns:
        The running server.

    Raises:
        ListenError: the address (or the health address) cannot be bound.
        SettingsError: a TLS setting is invalid.
    """
    tls = TlsConfig.from_env() if tls is None else tls
    health_servicer = health.aio.HealthServicer()
    names = tuple(s.name for s in services)
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    server, port = create_server(
        address,
        services,
        health_servicer=health_servicer,
        max_message_bytes=max_message_bytes,
        interceptors=interceptors,
        tls=tls,
        auth=auth,
    )
    health_server, health_port = None, None
    if tls.health_addr is not None:
        health_server, health_port = _health_server(tls.health_addr, health_servicer)
    await server.start()
    if health_server is not None:
        await health_server.start()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(
        server, port, health_servicer, names, tls.serves_tls, health_server, health_port
    )


async def run_server(
    settings: CommonSettings,
    services: Sequence[Service],
    *,
    process: str,
    address: str,
    resources: Sequence[Closeable] = (),
    grace: float = DEFAULT_GRACE_SECONDS,
    extra_log: dict[str, Any] | None = None,
    on_started: Callable[[RunningServer], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain within `grace` seconds and close resources.

    Args:
        settings: the process settings (logged once, without secrets).
        services: the services to serve.
        process: the process name used in log lines (e.g. ``"store"``).
        address: the listen address.
        resources: closed (``aclose()``) after the server stopped, in order.
        grace: seconds in-flight calls get to finish after a stop signal.
        extra_log: more fields for the start-up log line (e.g. the chosen backends).
        on_started: awaited once the server is SERVING (e.g. to register with a peer).

    Raises:
        ListenError: the address cannot be bound.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running: RunningServer | None = None
    try:
        running = await start_server(
            address, services, max_message_bytes=settings.max_message_bytes
        )
        bound = address.rsplit(":", 1)[0] + f":{running.port}"
        log.info(
            "%s serving on %s",
            process,
            bound,
            extra={
                "settings": settings.safe_dict(),
                "services": list(running.service_names),
                "tls": running.tls,
                "auth": os.environ.get(AUTH_FILE_ENV, "") or None,
                "health_port": running.health_port,
            }
            | (extra_log or {}),
        )
        if on_started is not None:
            await on_started(running)
        await stop.wait()
        log.info("%s stopping: draining in-flight calls for up to %g s", process, grace)
        await running.stop(grace)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if running is not None:
            await running.stop(None)
        for resource in resources:
            try:
                await resource.aclose()
            except Exception:
                log.exception("closing %r failed", resource)
        log.info("%s stopped", process)


def serve_main(prog: str, main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run a server's async main: exit 0 when stopped, 2 with one line for a setup error
    (invalid settings, TLS files included, or a busy address).

    Args:
        prog: program name for error lines (e.g. ``"dagwire-store"``).
        main: the coroutine function to run.

    Returns:
        The exit status: 0 after a clean stop, 2 for invalid settings or a busy address, 1
        when it failed otherwise (logged, credentials masked).
    """
    try:
        TlsConfig.from_env().check()  # before anything waits on a peer
        AuthFile.from_env()
        GrantKey.from_env()
        QuotaBook.from_env()
        token_from_env()
        asyncio.run(main())
    except (SettingsError, ListenError) as exc:
        sys.stderr.write(f"{prog}: error: {redact(str(exc))}\n")
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C while draining
        return 130
    except Exception:  # logged (redacted: a driver's error may quote its URI), not printed raw
        log.critical("%s failed", prog, exc_info=True)
        return 1
    return 0
