"""Entry point of the dispatcher service: settings, logging, registry, then serve until stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from dagwire.errors import DagwireError
from dagwire.rpc.logs import setup_logging
from dagwire.rpc.serve import Closeable, run_server, serve_main
from dagwire.rpc.store_client import RemoteExecutionStore
from dagwire.runtime.routing import AdapterRegistry
from dagwire.runtime.shared_registry import SharedRegistry
from dagwire.settings import DispatcherSettings, process_settings
from dagwire_services.dispatcher.pool import AdapterPool
from dagwire_services.dispatcher.servicer import dispatcher_services

__all__ = ["build_pool", "main", "serve"]

log = logging.getLogger("dagwire.dispatcher")

PROG = "dagwire-dispatcher"
#: How long start-up waits for the first read of the shared adapter registry.
_FIRST_REFRESH_SECONDS = 5.0
DESCRIPTION = (
    "dagwire dispatcher service: keeps the registry of adapter instances (registered with a "
    "lease, or static from DAGWIRE_STATIC_ADAPTERS) and routes each task to one of them."
)


def build_pool(settings: DispatcherSettings) -> AdapterPool:
    """The registry and adapter pool `settings` describe, static adapters registered.

    Args:
        settings: the dispatcher settings.

    Returns:
        The pool (call `start()` to probe static adapters, `aclose()` to release it).
    """
    registry = AdapterRegistry(lease_seconds=settings.lease_seconds)
    pool = AdapterPool(registry, max_message_bytes=settings.max_message_bytes)
    pool.add_static(settings.static_adapters)
    return pool


async def serve(settings: DispatcherSettings) -> None:
    """Serve the dispatcher until SIGTERM/SIGINT.

    Args:
        settings: the dispatcher settings.

    Raises:
        ListenError: the listen address cannot be bound.
    """
    pool = build_pool(settings)
    shared: SharedRegistry | None = None
    resources: list[Closeable] = [pool]
    if settings.store_addr:
        store = RemoteExecutionStore(
            settings.store_addr, max_message_bytes=settings.max_message_bytes
        )
        shared = SharedRegistry(
            pool.registry, store, refresh_seconds=settings.registry_refresh_seconds
        )
        resources = [shared, pool, store]
    await pool.start()
    if shared is not None:
        # know every registered adapter before serving: a replica started after another died
        # routes at once instead of answering "no adapter" until its first background round
        try:
            await asyncio.wait_for(shared.refresh(), _FIRST_REFRESH_SECONDS)
        except (DagwireError, OSError, TimeoutError) as exc:
            log.warning("serving before the adapter registry could be read from the store: %s", exc)
        shared.start()
    await run_server(
        settings,
        dispatcher_services(pool, shared),
        process="dispatcher",
        address=settings.listen_addr,
        resources=resources,
        extra_log={
            "static_adapters": len(settings.static_adapters),
            "shared_registry": bool(shared),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the dispatcher service (``python -m dagwire_services.dispatcher``).

    Args:
        argv: command-line arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 after a clean stop, 2 for invalid settings or a busy address.
    """
    settings = process_settings(DispatcherSettings, argv, prog=PROG, description=DESCRIPTION)
    if settings is None:
        return 2
    setup_logging("dispatcher", level=settings.log_level, log_format=settings.log_format)
    return serve_main(PROG, lambda: serve(settings))
