"""The adapter registry shared by dispatcher replicas through the store (docs/registry.md).

Every dispatcher replica keeps its own in-memory `AdapterRegistry` (routing stays a dictionary
lookup); `SharedRegistry` keeps it in step with the store:

- RegisterAdapter / Heartbeat / DeregisterAdapter through any replica write the adapter's
  entry (kind ``adapter``, key = instance id) before answering. An adapter makes one such call
  at a time, so each entry has one writer at a time.
- Every `refresh_seconds` each replica writes its own entry (kind ``dispatcher``, key = its
  replica id: the members it has seen and its calls in flight per adapter), then reads both
  kinds and adopts every live adapter entry, whichever replica wrote it.
- Capacity: each instance's capacity is split over the live replicas (`capacity_shares`). A
  replica uses its share only once every other live replica's entry lists the same members;
  calls another replica has in flight above its own share are taken off this replica's share.
  Together these keep the calls in flight on an instance, summed over the replicas, within
  its capacity (docs/registry.md gives the argument and the edge cases).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from dagwire.errors import DagwireError
from dagwire.models import RegistryEntry, parse_iso, utc_now
from dagwire.runtime.routing import AdapterInstance, AdapterRegistry
from dagwire.stores.base import ServiceRegistry

__all__ = ["ADAPTER", "DISPATCHER", "SharedRegistry", "capacity_shares"]

log = logging.getLogger(__name__)

ADAPTER = "adapter"
DISPATCHER = "dispatcher"
#: Entries expired for longer than this are removed from the store.
PRUNE_AFTER = timedelta(minutes=5)
_PRUNE_EVERY = 60.0


def capacity_shares(
    instance_id: str, capacity: int, replicas: Iterable[str], turn: int = 0
) -> dict[str, int]:
    """Each replica's share of an instance's capacity: an even split, the remainder going to
    the replicas next in a rotation that starts at a place fixed by the instance id (so small
    instances do not all favour the same replica) and moves on by one per `turn`. The shares
    add up to `capacity`.

    Args:
        instance_id: the adapter instance.
        capacity: its declared capacity.
        replicas: the live dispatcher replica ids (at least one).
        turn: the replicas' agreed turn (docs/registry.md).

    Returns:
        Replica id -> share.
    """
    ordered = sorted(set(replicas))
    count = len(ordered)
    base, extra = divmod(capacity, count)
    start = (zlib.crc32(instance_id.encode()) + turn) % count
    return {r: base + (1 if (i - start) % count < extra else 0) for i, r in enumerate(ordered)}


class SharedRegistry:
    """Keeps an `AdapterRegistry` in step with the store's registry, and sets this replica's
    share of each registered instance's capacity.

    Args:
        registry: this replica's in-memory registry (shared with the pool).
        store: the store keeping the registry.
        replica_id: this replica's id (default: a fresh one).
        refresh_seconds: how often the view is refreshed from the store.
        wall: the wall clock (entries expire by it; injectable for tests).
    """

    def __init__(
        self,
        registry: AdapterRegistry,
        store: ServiceRegistry,
        *,
        replica_id: str | None = None,
        refresh_seconds: float = 0.5,
        wall: Callable[[], datetime] = utc_now,
    ) -> None:
        if refresh_seconds <= 0:
            raise ValueError(f"refresh_seconds must be positive, got {refresh_seconds}")
        self.registry = registry
        self.replica_id = replica_id or uuid.uuid4().hex
        self.refresh_seconds = refresh_seconds
        #: A replica whose entry is older than this is taken for dead.
        self.replica_ttl = 4 * refresh_seconds
        self._store = store
        self._wall = wall
        self._members: tuple[str, ...] = ()
        self._others: dict[str, RegistryEntry] = {}
        self._last_write = float("-inf")
        self._touched: dict[str, float] = {}
        self._outage = False
        self._warned: set[str] = set()
        self._turn = 0
        self._last_prune = float("-inf")
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ adapter calls

    async def register(
        self,
        instance_id: str,
        address: str,
        agents: Sequence[str],
        capacity: int,
        *,
        owner: str = "",
    ) -> AdapterInstance:
        """Write the registration to the store, then route to it (its share comes with the
        next refresh).

        Raises:
            StoreUnavailableError: the store cannot be reached (nothing was registered).
        """
        await self._put_adapter(instance_id, address, agents, capacity, owner)
        known = self.registry.is_registered(instance_id)
        instance = self.registry.register(instance_id, address, agents, capacity, owner=owner)
        if not known:
            instance.limit = 0
        self._touched[instance_id] = time.monotonic()
        return instance

    async def owner_of(self, instance_id: str) -> str | None:
        """The principal that registered the instance, through any replica; None if unknown
        (the view is refreshed first when this replica does not know the instance yet)."""
        if not self.registry.is_registered(instance_id):
            await self.refresh()
        return self.registry.owner_of(instance_id)

    async def heartbeat(self, instance_id: str) -> AdapterInstance | None:
        """Renew a registration (made through any replica); None when no live replica knows it.

        Raises:
            StoreUnavailableError: the store cannot be reached.
        """
        if not self.registry.is_registered(instance_id):
            await self.refresh()  # registered through another replica since the last refresh
        instance = self.registry.heartbeat(instance_id)
        if instance is None:
            return None
        await self._put_adapter(
            instance_id,
            instance.address,
            sorted(instance.agent_keys),
            instance.capacity,
            instance.owner,
        )
        self._touched[instance_id] = time.monotonic()
        return instance

    async def deregister(self, instance_id: str) -> None:
        """Remove a registration from the store and from routing."""
        await self._store.delete_entry(ADAPTER, instance_id)
        self._touched[instance_id] = time.monotonic()
        self.registry.deregister(instance_id)

    def reported_in_flight(self, instance_id: str) -> int:
        """Calls the other live replicas reported in flight on the instance."""
        return sum(
            int(e.data.get("in_flight", {}).get(instance_id, 0)) for e in self._others.values()
        )

    # ------------------------------------------------------------------ refresh

    def start(self) -> None:
        """Refresh now (announcing this replica) and every `refresh_seconds`, in the
        background; a store that cannot be reached is retried at that pace (one log line)."""
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_forever(), name="registry-refresh")

    async def aclose(self) -> None:
        """Stop refreshing and withdraw this replica's entry (its shares go to the others)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self._store.delete_entry(DISPATCHER, self.replica_id)
        except (DagwireError, OSError) as exc:
            log.warning("could not withdraw dispatcher replica %s: %s", self.replica_id, exc)

    async def refresh(self) -> None:
        """One round: write this replica's entry, read every entry, adopt the adapters and set
        this replica's shares.

        Raises:
            StoreUnavailableError: the store cannot be reached (the shares are fenced to 0
                once this replica's entry may have expired for the others).
        """
        async with self._lock:
            try:
                await self._round()
            except (DagwireError, OSError):
                if time.monotonic() - self._last_write > self.replica_ttl / 2:
                    self._fence()
                raise

    async def _refresh_forever(self) -> None:
        first = True
        while True:
            if not first:
                await asyncio.sleep(self.refresh_seconds)
            first = False
            try:
                await self.refresh()
            except (DagwireError, OSError) as exc:
                if not self._outage:
                    log.warning("cannot refresh the adapter registry from the store: %s", exc)
                self._outage = True
                continue
            except Exception:
                log.exception("refreshing the adapter registry failed")
                continue
            if self._outage:
                log.info("the adapter registry is refreshed from the store again")
            self._outage = False

    async def _round(self) -> None:
        started = time.monotonic()
        await self._store.put_entry(self._own_entry())
        self._last_write = started
        adapters = await self._list(ADAPTER)
        replicas = await self._list(DISPATCHER)
        now = self._wall()
        self._adopt({e.key: e for e in adapters if e.expires_at > now}, now, started)
        live = {e.key: e for e in replicas if e.expires_at > now and e.key != self.replica_id}
        self._others = live
        members = tuple(sorted({self.replica_id, *live}))
        agreed = all(tuple(sorted(e.data.get("members", ()))) == members for e in live.values())
        turns = [int(e.data.get("turn", 0)) for e in live.values()]
        # the turn moves the remainder of uneven splits; it is agreed like the members
        turn_agreed = agreed and all(t == self._turn for t in turns)
        self._turn = max([self._turn, *turns])
        self._members = members
        limits: dict[str, int] = {}
        own_shares: dict[str, int] = {}
        for instance in self.registry.instances():
            if instance.static:
                continue
            uneven = instance.capacity % len(members) != 0
            if not agreed or (uneven and not turn_agreed):
                limits[instance.instance_id] = 0
                continue
            shares = capacity_shares(
                instance.instance_id, instance.capacity, members, self._turn if uneven else 0
            )
            excess = sum(
                max(0, int(e.data.get("in_flight", {}).get(instance.instance_id, 0)) - shares[r])
                for r, e in live.items()
            )
            limits[instance.instance_id] = max(0, shares[self.replica_id] - excess)
            own_shares[instance.instance_id] = shares[self.replica_id]
            if shares[self.replica_id] == 0 and instance.instance_id not in self._warned:
                self._warned.add(instance.instance_id)
                log.warning(
                    "adapter instance %s has capacity %d, below the %d dispatcher replicas: "
                    "this replica has no share of it (docs/registry.md)",
                    instance.instance_id,
                    instance.capacity,
                    len(members),
                )
        self.registry.set_limits(limits)
        if turn_agreed and self._starved(own_shares):
            # calls wait here for a key with no share anywhere: ask for the next turn, and
            # start nothing more on uneven splits until every replica has taken it up
            self._turn += 1
            self.registry.set_limits(
                {
                    i.instance_id: 0
                    for i in self.registry.instances()
                    if not i.static and i.capacity % len(members) != 0
                }
            )
        if started - self._last_prune > _PRUNE_EVERY:
            self._last_prune = started
            for kind in (ADAPTER, DISPATCHER):
                await self._store.prune_entries(kind, now - PRUNE_AFTER)

    def _adopt(self, live: dict[str, RegistryEntry], now: datetime, started: float) -> None:
        for key, entry in live.items():
            if self._touched.get(key, float("-inf")) >= started:
                continue  # registered or removed here while the listing was read
            data = entry.data
            beat = data.get("heartbeat_at")
            self.registry.sync(
                key,
                str(data["address"]),
                [str(a) for a in data["agents"]],
                int(data["capacity"]),
                lease_remaining=(entry.expires_at - now).total_seconds(),
                last_heartbeat=parse_iso(beat) if isinstance(beat, str) else None,
                owner=str(data.get("owner", "")),
            )
        for instance in self.registry.instances():
            key = instance.instance_id
            if instance.static or key in live:
                continue
            if self._touched.get(key, float("-inf")) >= started:
                continue
            self.registry.deregister(key)  # deregistered or expired, through any replica
        cutoff = started - 10 * self.refresh_seconds
        self._touched = {k: t for k, t in self._touched.items() if t >= cutoff}

    def _starved(self, own_shares: dict[str, int]) -> bool:
        """Whether calls wait here for a key of which this replica has no share at all."""
        for key in self.registry.waiting_keys():
            instances = [i for i in self.registry.instances(key) if not i.static]
            if instances and all(own_shares.get(i.instance_id, 0) == 0 for i in instances):
                return True
        return False

    def _fence(self) -> None:
        """Out of touch with the store: the others may take this replica for dead and split
        its shares among themselves, so it starts no new call on a shared instance."""
        self.registry.set_limits(
            {i.instance_id: 0 for i in self.registry.instances() if not i.static}
        )

    def _own_entry(self) -> RegistryEntry:
        in_flight = {
            i.instance_id: i.in_flight
            for i in self.registry.instances()
            if not i.static and i.in_flight
        }
        return RegistryEntry(
            DISPATCHER,
            self.replica_id,
            self._wall() + timedelta(seconds=self.replica_ttl),
            {"members": list(self._members), "turn": self._turn, "in_flight": in_flight},
        )

    async def _put_adapter(
        self, instance_id: str, address: str, agents: Sequence[str], capacity: int, owner: str
    ) -> None:
        now = self._wall()
        entry = RegistryEntry(
            ADAPTER,
            instance_id,
            now + timedelta(seconds=self.registry.lease_seconds),
            {
                "address": address,
                "agents": sorted(agents),
                "capacity": capacity,
                "owner": owner,
                "via": self.replica_id,
                "heartbeat_at": now.isoformat(),
            },
        )
        await self._store.put_entry(entry)

    async def _list(self, kind: str) -> list[RegistryEntry]:
        out: list[RegistryEntry] = []
        after = ""
        while True:
            page = await self._store.list_entries(kind, after=after, limit=1000)
            out += page
            if len(page) < 1000:
                return out
            after = page[-1].key
