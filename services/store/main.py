"""Entry point of the store service: settings, logging, backends, then serve until stopped."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dagwire.rpc.logs import setup_logging
from dagwire.rpc.serve import run_server, serve_main
from dagwire.settings import StoreSettings, process_settings
from dagwire.stores.base import StaleUploadSweeper
from dagwire.stores.factory import build_artifact_store, build_execution_store, describe_storage
from dagwire_services.store.memory import tune_allocator
from dagwire_services.store.servicer import store_services

__all__ = ["main", "serve"]

_log = logging.getLogger("dagwire.store")

PROG = "dagwire-store"
DESCRIPTION = (
    "dagwire store service: ArtifactStoreService and ExecutionStoreService over embedded "
    "storage (default), MongoDB (DAGWIRE_MONGODB_URI) and S3/MinIO (DAGWIRE_S3_ENDPOINT)."
)


async def serve(settings: StoreSettings) -> None:
    """Serve the store service with the backends `settings` select, until SIGTERM/SIGINT.

    Args:
        settings: the store service settings.

    Raises:
        SettingsError: the backend settings are incomplete.
        ListenError: the listen address cannot be bound.
    """
    artifacts = build_artifact_store(settings)
    executions = build_execution_store(settings)
    if isinstance(artifacts, StaleUploadSweeper):
        # uploads cut off when this store last crashed can never finish: docs/limits.md
        removed = await artifacts.sweep_stale_uploads()
        if removed:
            _log.info("removed stale upload temp files", extra={"removed": removed})
    await run_server(
        settings,
        store_services(artifacts, executions),
        process="store",
        address=settings.listen_addr,
        resources=[artifacts, executions],
        extra_log=describe_storage(settings),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the store service (``python -m dagwire_services.store``).

    Args:
        argv: command-line arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 after a clean stop, 2 for invalid settings or a busy address.
    """
    settings = process_settings(StoreSettings, argv, prog=PROG, description=DESCRIPTION)
    if settings is None:
        return 2
    setup_logging("store", level=settings.log_level, log_format=settings.log_format)
    tune_allocator()  # before any thread starts: see memory.py
    return serve_main(PROG, lambda: serve(settings))
