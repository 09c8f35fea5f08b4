"""Keeping an adapter registered with the dispatcher: register, heartbeat, re-register."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Sequence

from dagwire.errors import DagwireError, NotFoundError
from dagwire.rpc.dispatcher_client import RemoteDispatcher

__all__ = ["Registration", "advertised_address"]

log = logging.getLogger(__name__)

_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})
_MIN_BACKOFF = 0.2
_MAX_BACKOFF = 5.0


def advertised_address(listen_addr: str, port: int, advertise_addr: str | None = None) -> str:
    """The address to register: `advertise_addr` when given, else the listen host with the
    bound port (a wildcard host becomes this host's address, never 0.0.0.0).

    Args:
        listen_addr: the listen address (its port may be 0).
        port: the port actually bound.
        advertise_addr: ``DAGWIRE_ADVERTISE_ADDR``, when set.

    Returns:
        A dialable ``host:port``.
    """
    if advertise_addr:
        return advertise_addr
    host = listen_addr.rpartition(":")[0]
    if host in _WILDCARD_HOSTS:
        host = _this_host()
        log.warning(
            "listening on %s: registering as %s:%d (set DAGWIRE_ADVERTISE_ADDR to choose)",
            listen_addr,
            host,
            port,
        )
    return f"{host}:{port}"


def _this_host() -> str:
    try:
        name = socket.gethostname()
        for *_, sockaddr in socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM):
            address = str(sockaddr[0])
            if not address.startswith("127."):
                return address
    except OSError:
        pass
    return "127.0.0.1"


class Registration:
    """Registers an adapter instance, heartbeats at a third of the lease, re-registers when the
    dispatcher forgot it (NOT_FOUND), retries with backoff while it is down, never raises.

    Args:
        dispatcher: the dispatcher client (borrowed).
        instance_id: the instance's id.
        address: the advertised address.
        agents: the agent keys served.
        capacity: calls taken at once.
    """

    def __init__(
        self,
        dispatcher: RemoteDispatcher,
        *,
        instance_id: str,
        address: str,
        agents: Sequence[str],
        capacity: int,
    ) -> None:
        self._dispatcher = dispatcher
        self.instance_id = instance_id
        self.address = address
        self.agents = tuple(sorted(agents))
        self.capacity = capacity
        self.registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the registration loop in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"register-{self.instance_id}")

    async def _run(self) -> None:
        backoff = _MIN_BACKOFF
        failing = False
        while True:
            try:
                if self.registered.is_set():
                    lease = await self._dispatcher.heartbeat(self.instance_id)
                else:
                    lease = await self._dispatcher.register_adapter(
                        self.instance_id, self.address, self.agents, self.capacity
                    )
                    self.registered.set()
                    log.info(
                        "registered with the dispatcher at %s as %s (%s), lease %g s",
                        self._dispatcher.address,
                        self.address,
                        ", ".join(self.agents),
                        lease.seconds,
                    )
                failing, backoff = False, _MIN_BACKOFF
                delay = max(lease.seconds / 3, 0.05)
            except NotFoundError:
                log.warning("the dispatcher dropped this instance (lease expired): registering")
                self.registered.clear()
                delay = 0.0
            except (DagwireError, OSError) as exc:
                if not failing:
                    log.warning(
                        "cannot reach the dispatcher at %s: %s (retrying)",
                        self._dispatcher.address,
                        exc,
                    )
                failing = True
                self.registered.clear()
                delay = backoff * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            except Exception:
                log.exception("registration failed unexpectedly (retrying)")
                delay = _MAX_BACKOFF
            await asyncio.sleep(delay)

    async def aclose(self, *, deregister: bool = True, time_limit: float = 2.0) -> None:
        """Stop heartbeating and (by default) deregister, giving up after `time_limit` s.

        Args:
            deregister: remove the instance from the dispatcher now.
            time_limit: seconds to wait for the dispatcher.
        """
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if deregister:
            try:
                async with asyncio.timeout(time_limit):
                    await self._dispatcher.deregister_adapter(self.instance_id)
            except (DagwireError, OSError, TimeoutError) as exc:
                log.warning("could not deregister from the dispatcher: %s", exc)
            else:
                log.info("deregistered from the dispatcher")
        self.registered.clear()
