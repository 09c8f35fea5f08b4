"""Entry point of the orchestrator service: the core `Orchestrator` over store and dispatcher."""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import logging
import signal
from collections.abc import Sequence

from dagwire.errors import StoreUnavailableError
from dagwire.models import RunRecord
from dagwire.rpc.channels import client_channel
from dagwire.rpc.logs import bind, setup_logging
from dagwire.rpc.serve import RunningServer, serve_main, start_server
from dagwire.rpc.store_client import RemoteArtifactStore, RemoteExecutionStore
from dagwire.runtime.dispatcher import TaskDispatcher
from dagwire.runtime.orchestrator import Orchestrator
from dagwire.settings import OrchestratorSettings, process_settings
from dagwire_services.orchestrator.servicer import orchestrator_services

__all__ = ["OrchestratorService", "main", "serve"]

log = logging.getLogger("dagwire.orchestrator.service")

PROG = "dagwire-orchestrator"
DESCRIPTION = (
    "dagwire orchestrator service: runs workflows (OrchestratorService), recording them in the "
    "store service (DAGWIRE_STORE_ADDR) and dispatching tasks through the dispatcher service "
    "(DAGWIRE_DISPATCHER_ADDR)."
)

#: After the grace period, cancelled runs get this long to record their end and tell watchers.
_CANCEL_TAIL_SECONDS = 10.0


class OrchestratorService:
    """One orchestrator service: the core `Orchestrator` over remote stores, served over gRPC.

    The constructor does no I/O. `recover()` fails the runs orphaned by dead orchestrators,
    `start()` serves, `stop()` drains gracefully, `aclose()` releases everything.

    Args:
        settings: the process settings.
        dispatcher: routes tasks to adapters; default a `RemoteDispatcher` of the dispatcher
            service at ``settings.dispatcher_addr`` (tests inject an in-process one).
    """

    def __init__(
        self, settings: OrchestratorSettings, *, dispatcher: TaskDispatcher | None = None
    ) -> None:
        self.settings = settings
        self._store_channel = client_channel(
            settings.store_addr, max_message_bytes=settings.max_message_bytes
        )
        self._artifacts = RemoteArtifactStore(
            settings.store_addr,
            channel=self._store_channel,
            max_message_bytes=settings.max_message_bytes,
        )
        self._executions = RemoteExecutionStore(
            settings.store_addr,
            channel=self._store_channel,
            max_message_bytes=settings.max_message_bytes,
        )
        self._owned_dispatcher = dispatcher is None
        self._dispatcher = dispatcher if dispatcher is not None else _remote_dispatcher(settings)
        self.orchestrator = Orchestrator(
            self._artifacts,
            self._executions,
            dispatcher=self._dispatcher,
            instance_id=settings.instance_id,
            lease_seconds=settings.lease_seconds,
            store_retry_seconds=settings.store_retry_seconds,
            on_run_start=_bind_run,
            secrets_dir=settings.secrets_dir,
        )
        self.running: RunningServer | None = None
        self._closed = False

    @property
    def instance_id(self) -> str:
        """This orchestrator's identity as the owner of its runs."""
        return self.orchestrator.instance_id

    @property
    def port(self) -> int:
        """The port the server is bound to (after `start()`)."""
        if self.running is None:
            raise RuntimeError("the orchestrator service is not started")
        return self.running.port

    async def recover(self, *, retry_interval: float = 1.0) -> list[str]:
        """Adopt the runs left `running` by orchestrators whose lease lapsed, and keep looking
        for such runs in the background; log how many.

        Waits (retrying every `retry_interval` seconds) while the store service is unavailable.

        Returns:
            The ids of the runs adopted by the first scan.
        """
        tries = 0
        while True:
            try:
                recovered = await self.orchestrator.recover_orphans()
                break
            except StoreUnavailableError as exc:
                if tries % 10 == 0:
                    log.warning("waiting for the store service to recover orphaned runs: %s", exc)
                tries += 1
                await asyncio.sleep(retry_interval)
            except Exception:  # the lease keeper scans again every third of a lease
                log.exception("looking for orphaned runs failed; retrying in the background")
                return []
        log.info(
            "adopted %d orphaned run(s) (their owner's lease lapsed); looking for more every %g s",
            len(recovered),
            self.settings.lease_seconds / 3,
            extra={"instance_id": self.instance_id, "run_ids": recovered[:20]},
        )
        return recovered

    async def start(self, address: str | None = None) -> RunningServer:
        """Start serving on `address` (default: the settings' listen address).

        Raises:
            ListenError: the address cannot be bound.
        """
        self.running = await start_server(
            address or self.settings.listen_addr,
            orchestrator_services(self.orchestrator),
            max_message_bytes=self.settings.max_message_bytes,
        )
        return self.running

    async def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: health NOT_SERVING, refuse new calls, let running workflows finish
        within `grace` seconds, cancel the rest (recorded as cancelled) or hand them over to
        the other replicas (`on_stop`), then close.

        Args:
            grace: seconds the running workflows get (default: the `grace_seconds` setting).
        """
        grace = self.settings.grace_seconds if grace is None else grace
        stopping: asyncio.Task[None] | None = None
        if self.running is not None:
            # streams of runs still going stay open until their run ends (or the tail expires)
            stopping = asyncio.create_task(self.running.stop(grace + _CANCEL_TAIL_SECONDS))
        active = self.orchestrator.active_run_ids
        if active:
            log.info("waiting up to %g s for %d running workflow(s)", grace, len(active))
            waits = [asyncio.ensure_future(self.orchestrator.wait_run(r)) for r in active]
            _, pending = await asyncio.wait(waits, timeout=grace)
            for wait in pending:
                wait.cancel()
            if pending and self.settings.on_stop == "hand-over":
                handed = await self.orchestrator.hand_over()
                log.warning(
                    "handed %d workflow(s) still running over to the other replicas", len(handed)
                )
            elif pending:
                log.warning("cancelling %d workflow(s) still running", len(pending))
        await self.orchestrator.aclose()
        if stopping is not None:
            await stopping
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel what still runs, stop the server at once, and close the clients."""
        if self._closed:
            return
        self._closed = True
        await self.orchestrator.aclose()
        if self.running is not None:
            await self.running.stop(None)
        if self._owned_dispatcher:
            close = getattr(self._dispatcher, "aclose", None)
            if close is not None:
                await close()
        await self._artifacts.aclose()
        await self._executions.aclose()
        await self._store_channel.close()


def _bind_run(run: RunRecord) -> None:
    """Bind the run's ids into the logging context of its task (and so of its dispatches): every
    log line of the run carries them, and `RemoteDispatcher` sends the run id with each task."""
    bind(run_id=run.run_id, trace_id=run.trace_id)


def _remote_dispatcher(settings: OrchestratorSettings) -> TaskDispatcher:
    """A `RemoteDispatcher` of the dispatcher service (imported only when needed)."""
    from dagwire.rpc.dispatcher_client import RemoteDispatcher

    return RemoteDispatcher(settings.dispatcher_addr, max_message_bytes=settings.max_message_bytes)


async def serve(
    settings: OrchestratorSettings, *, dispatcher: TaskDispatcher | None = None
) -> None:
    """Recover orphaned runs, then serve until SIGTERM/SIGINT, then stop gracefully.

    Args:
        settings: the process settings.
        dispatcher: an in-process dispatcher instead of the dispatcher service.

    Raises:
        ListenError: the listen address cannot be bound.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    service = OrchestratorService(settings, dispatcher=dispatcher)
    try:
        log.info(
            "orchestrator instance %s starting",
            service.instance_id,
            extra={"instance_id": service.instance_id, "settings": settings.safe_dict()},
        )
        recovering = asyncio.create_task(service.recover())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({recovering, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not recovering.done():
            recovering.cancel()
            return
        running = await service.start()
        log.info(
            "orchestrator serving on %s",
            settings.listen_addr.rsplit(":", 1)[0] + f":{running.port}",
            extra={"instance_id": service.instance_id, "services": list(running.service_names)},
        )
        await stop.wait()
        log.info("orchestrator stopping: running workflows get up to %g s", settings.grace_seconds)
        await service.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await service.aclose()
        log.info("orchestrator stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the orchestrator service (``python -m dagwire_services.orchestrator``).

    Args:
        argv: command-line arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 after a clean stop, 2 for invalid settings or a busy address.
    """
    settings = process_settings(OrchestratorSettings, argv, prog=PROG, description=DESCRIPTION)
    if settings is None:
        return 2
    setup_logging("orchestrator", level=settings.log_level, log_format=settings.log_format)
    profile = cProfile.Profile() if settings.profile_file is not None else None
    with contextlib.ExitStack() as cleanup:
        if profile is not None and settings.profile_file is not None:
            profile.enable()
            cleanup.callback(profile.dump_stats, str(settings.profile_file))
            cleanup.callback(profile.disable)
        return serve_main(PROG, lambda: serve(settings))
