"""Serving adapters: `AdapterServer` (async, for tests and embedding) and `serve` (a process)."""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Self

from dagwire.rpc.dispatcher_client import RemoteDispatcher
from dagwire.rpc.logs import setup_logging
from dagwire.rpc.serve import (
    DEFAULT_GRACE_SECONDS,
    RunningServer,
    Service,
    serve_main,
    start_server,
)
from dagwire.sdk.artifacts import Agent
from dagwire.sdk.registration import Registration, advertised_address
from dagwire.sdk.servicer import INLINE_LIMIT, AgentAdapterServicer
from dagwire.settings import AdapterSettings, process_settings
from dagwire.v1 import adapter_service_pb2, adapter_service_pb2_grpc

__all__ = ["DEFAULT_CAPACITY", "INLINE_LIMIT", "AdapterServer", "serve"]

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 100
_SERVICE_NAME = adapter_service_pb2.DESCRIPTOR.services_by_name["AgentAdapterService"].full_name


class AdapterServer:
    """An adapter server in the current event loop: health, reflection, registration.

    Example (a test)::

        async with AdapterServer({"echo": EchoAgent()}, register=False) as server:
            address = f"127.0.0.1:{server.port}"

    The constructor does no I/O; `start()` binds, serves and (with `register`) keeps the
    instance registered with the dispatcher; `stop()` deregisters, then drains.
    """

    def __init__(
        self,
        agents: Mapping[str, Agent],
        *,
        settings: AdapterSettings | None = None,
        capacity: int = DEFAULT_CAPACITY,
        register: bool = True,
        version: str = "",
        instance_id: str | None = None,
        inline_limit: int = INLINE_LIMIT,
    ) -> None:
        """Describe the server; does no I/O.

        Args:
            agents: agent key -> agent (any `AgentAdapter`, or an agent returning
                `StreamedArtifact`s).
            settings: addresses and limits (default: ``DAGWIRE_*`` variables, listening on
                ``127.0.0.1:0``).
            capacity: how many calls the adapter takes at once (declared to the dispatcher).
            register: register with the dispatcher at `settings.dispatcher_addr`.
            version: free-form version shown by Describe.
            instance_id: the registration id (default: a fresh UUID).
            inline_limit: outputs with more bytes than this go to the store by reference.

        Raises:
            ValueError: no agents, an empty key, or capacity below 1.
        """
        self.settings = settings or AdapterSettings(listen_addr="127.0.0.1:0")
        self.servicer = AgentAdapterServicer(
            agents,
            capacity=capacity,
            store_addr=self.settings.store_addr,
            version=version,
            inline_limit=inline_limit,
            max_message_bytes=self.settings.max_message_bytes,
        )
        self.instance_id = instance_id or str(uuid.uuid4())
        self._register = register
        self._running: RunningServer | None = None
        self._dispatcher: RemoteDispatcher | None = None
        self.registration: Registration | None = None

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            RuntimeError: the server is not started.
        """
        if self._running is None:
            raise RuntimeError("the adapter server is not started")
        return self._running.port

    @property
    def address(self) -> str:
        """The advertised address (what the dispatcher dials)."""
        return advertised_address(
            self.settings.listen_addr, self.port, self.settings.advertise_addr
        )

    async def start(self) -> None:
        """Bind and serve; then register with the dispatcher in the background.

        Raises:
            ListenError: the listen address cannot be bound.
        """
        if self._running is not None:
            return
        service = Service(
            _SERVICE_NAME,
            partial(
                adapter_service_pb2_grpc.add_AgentAdapterServiceServicer_to_server, self.servicer
            ),
        )
        self._running = await start_server(
            self.settings.listen_addr, [service], max_message_bytes=self.settings.max_message_bytes
        )
        if self._register:
            self._dispatcher = RemoteDispatcher(
                self.settings.dispatcher_addr, max_message_bytes=self.settings.max_message_bytes
            )
            self.registration = Registration(
                self._dispatcher,
                instance_id=self.instance_id,
                address=self.address,
                agents=sorted(self.servicer.agents),
                capacity=self.servicer.capacity,
            )
            self.registration.start()

    async def stop(self, grace: float | None = DEFAULT_GRACE_SECONDS) -> None:
        """Deregister, turn health NOT_SERVING, drain in-flight calls within `grace` seconds.

        Args:
            grace: seconds in-flight calls get to finish (None: cancel them at once).
        """
        if self.registration is not None:
            await self.registration.aclose(deregister=True)
            self.registration = None
        if self._dispatcher is not None:
            await self._dispatcher.aclose()
            self._dispatcher = None
        if self._running is not None:
            await self._running.stop(grace)
        await self.servicer.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(None)


def serve(
    agents: Mapping[str, Agent],
    *,
    settings: AdapterSettings | None = None,
    capacity: int = DEFAULT_CAPACITY,
    version: str = "",
    argv: Sequence[str] | None = None,
    prog: str = "dagwire-adapter",
    service: str = "adapter",
    grace: float = DEFAULT_GRACE_SECONDS,
) -> int:
    """Run an adapter process until SIGTERM/SIGINT (for ``python -m`` mains).

    Settings come from `settings`, else from flags (`argv`, default ``sys.argv[1:]``) over
    ``DAGWIRE_*`` variables. The process logs to stderr, serves with health and reflection,
    registers with the dispatcher and heartbeats; on SIGTERM it deregisters, then drains.

    Args:
        agents: agent key -> agent.
        settings: the adapter settings (default: parsed from `argv` and the environment).
        capacity: how many calls the adapter takes at once.
        version: free-form version shown by Describe.
        argv: command-line arguments without the program name.
        prog: program name for ``--help`` and error lines.
        service: the process name in log lines.
        grace: seconds in-flight calls get to finish after a stop signal.

    Returns:
        The exit status: 0 after a clean stop, 2 for invalid settings or a busy address.
    """
    if settings is None:
        description = f"dagwire adapter serving: {', '.join(sorted(agents))}"
        settings = process_settings(AdapterSettings, argv, prog=prog, description=description)
        if settings is None:
            return 2
    setup_logging(service, level=settings.log_level, log_format=settings.log_format)
    chosen = settings
    return serve_main(
        prog, lambda: _serve(agents, chosen, capacity=capacity, version=version, grace=grace)
    )


async def _serve(
    agents: Mapping[str, Agent],
    settings: AdapterSettings,
    *,
    capacity: int,
    version: str,
    grace: float,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = AdapterServer(agents, settings=settings, capacity=capacity, version=version)
    try:
        await server.start()
        log.info(
            "adapter serving %s on %s (advertised as %s), capacity %d",
            ", ".join(sorted(server.servicer.agents)),
            settings.listen_addr.rpartition(":")[0] + f":{server.port}",
            server.address,
            capacity,
            extra={"settings": settings.safe_dict(), "instance_id": server.instance_id},
        )
        await stop.wait()
        log.info("adapter stopping: deregistering, draining for up to %g s", grace)
        await server.stop(grace)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop(None)
        log.info("adapter stopped")
