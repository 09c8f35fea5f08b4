"""The store interfaces: `ArtifactStore` (task outputs) and `ExecutionStore` (attempts and runs)."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from dagwire.models import (
    Artifact,
    ExecutionRecord,
    RegistryEntry,
    RunEventRecord,
    RunRecord,
    RunStatus,
)

__all__ = [
    "ArtifactStore",
    "BatchArtifactStore",
    "ExecutionStore",
    "OutcomeRecorder",
    "PagedArtifactStore",
    "PagedExecutionStore",
    "RecordKey",
    "RunLedger",
    "ServiceRegistry",
    "StaleUploadSweeper",
    "record_key",
]

RecordKey = tuple[datetime, str, int]
"""Where an attempt sorts in `list_records`: (`started_at`, `node_id`, `attempt`)."""


def record_key(record: ExecutionRecord) -> RecordKey:
    """The `RecordKey` of `record` (the position after which the next page starts)."""
    return (record.started_at, record.node_id, record.attempt)


@runtime_checkable
class ArtifactStore(Protocol):
    """Where task outputs live: content-addressed bytes plus one metadata record per artifact.

    Every artifact stored gets its own `artifact_id` (time-ordered, unique), even when its
    bytes equal another's; the bytes underneath are kept once, keyed by sha256. A store is
    self-sufficient: a fresh instance on the same backing storage finds every artifact an
    earlier one accepted. Constructors do no I/O; `aclose()` releases connections and threads.
    """

    async def store(self, artifact: Artifact) -> Artifact:
        """Store an artifact whose `content` is in memory.

        Args:
            artifact: `content` must be set; `run_id`/`node_id`, `name`, `media_type` and
                `metadata` are kept as given. The value is not mutated.

        Returns:
            A new value (`dataclasses.replace`) with `artifact_id`, `sha256` (hex of the
            content), `size` and `created_at` filled in.

        Raises:
            ValueError: `content` is None, or a name, id, media type or metadata key contains
                NUL or is not valid UTF-8 (the message names the field).
        """
        ...

    async def store_stream(self, artifact: Artifact, chunks: AsyncIterable[bytes]) -> Artifact:
        """Store an artifact whose content arrives as a stream of chunks, never whole in memory.

        Args:
            artifact: as for `store()`, but `content` must be None.
            chunks: the content, in order. If iterating it raises, nothing becomes visible.

        Returns:
            A new value with `artifact_id`, `sha256`, `size`, `created_at` filled and
            `content=None`.

        Raises:
            ValueError: `content` is set, or a field is invalid (as for `store()`).
            Exception: whatever `chunks` raised.
        """
        ...

    async def load(self, artifact_id: str) -> Artifact:
        """The artifact with its `content`.

        Raises:
            NotFoundError: no artifact has this id (the message names it).
        """
        ...

    async def stat(self, artifact_id: str) -> Artifact:
        """The artifact's metadata, `content=None` (cheap: no bytes are read).

        Raises:
            NotFoundError: no artifact has this id.
        """
        ...

    def open(self, artifact_id: str) -> AsyncIterator[bytes]:
        """The artifact's content as an async iterator of chunks (at most 1 MiB each).

        The lookup happens on the first iteration, so an unknown id raises `NotFoundError`
        from the first `__anext__()`; call `stat()` first to fail before streaming starts.
        Close the iterator (`aclose()`) when abandoning it early.

        Raises:
            NotFoundError: no artifact has this id (on first iteration).
        """
        ...

    async def list(self, run_id: str) -> builtins.list[Artifact]:
        """Every artifact stored for `run_id`, in store order, each with `content=None`."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads."""
        ...


@runtime_checkable
class BatchArtifactStore(Protocol):
    """An optional capability of an artifact store: store several in-memory artifacts in one
    write (the store service uses it for the outputs of a `RecordOutcomes` batch)."""

    async def store_many(self, artifacts: Sequence[Artifact]) -> builtins.list[Artifact]:
        """`ArtifactStore.store` for each artifact, in one write where the backend allows.

        Returns:
            The filled copies, in the order given.

        Raises:
            ValueError: an artifact is invalid (the message names which); nothing was stored.
        """
        ...


@runtime_checkable
class PagedArtifactStore(Protocol):
    """An optional capability of an artifact store: one page of a run's artifacts, found by
    key (keyset paging), so that listing a run with many artifacts page by page is linear."""

    async def list_page(
        self, run_id: str, *, after: str | None = None, limit: int = 50
    ) -> builtins.list[Artifact]:
        """Up to `limit` artifacts of `run_id` that `list` returns after the artifact `after`.

        Args:
            run_id: the run.
            after: the `artifact_id` of the last artifact of the previous page; None for the
                first page.
            limit: most artifacts returned (at least 1).

        Returns:
            The artifacts in `list` order, `content=None`; fewer than `limit` at the end.

        Raises:
            NotFoundError: `after` is no artifact of this run (a store may instead start
                after where that id would sort).
            ValueError: `limit` is below 1.
        """
        ...


@runtime_checkable
class StaleUploadSweeper(Protocol):
    """An optional capability of an artifact store: remove what uploads cut off by a crash
    left behind (temp files); the store service calls it once at start-up."""

    async def sweep_stale_uploads(self) -> int:
        """Remove leftovers of uploads that can never finish; returns how many."""
        ...


@runtime_checkable
class PagedExecutionStore(Protocol):
    """An optional capability of an execution store: one page of a run's attempts, found by
    key (keyset paging) instead of reading the whole run for every page."""

    async def list_records_page(
        self, run_id: str, *, after: RecordKey | None = None, limit: int = 50
    ) -> builtins.list[ExecutionRecord]:
        """Up to `limit` attempts of `run_id` that sort after `after` in `list_records` order.

        Args:
            run_id: the run.
            after: the `record_key` of the last record of the previous page; None for the
                first page. It need not name a stored record.
            limit: most records returned (at least 1).

        Raises:
            ValueError: `limit` is below 1 or `after` is not a `RecordKey`.
        """
        ...


@runtime_checkable
class ExecutionStore(Protocol):
    """Where attempts (`ExecutionRecord`) and runs (`RunRecord`) are kept.

    Constructors do no I/O; `aclose()` flushes pending writes and releases resources.
    """

    async def record(self, record: ExecutionRecord) -> None:
        """Upsert one attempt, keyed by `(run_id, node_id, attempt)`; durable on return.

        A repeat never duplicates the record; a final status is never overwritten by
        `running` (a late `running` write is ignored), while a final status replaces
        `running`.

        Raises:
            ValueError: a field is invalid (e.g. a naive `datetime`, an unknown status).
        """
        ...

    async def record_many(self, records: Sequence[ExecutionRecord]) -> None:
        """`record()` for several attempts at once, in one write (same rules, in order)."""
        ...

    async def list_records(self, run_id: str) -> list[ExecutionRecord]:
        """Every attempt of `run_id`, ordered by `started_at`, then `node_id`, then `attempt`."""
        ...

    async def save_run(self, run: RunRecord) -> None:
        """Upsert a run record by `run_id`; durable on return."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run record, or None when no run has this id."""
        ...

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        limit: int = 50,
        after: str | None = None,
        details: bool = True,
        namespaces: Sequence[str] | None = None,
    ) -> list[RunRecord]:
        """Runs newest first (`created_at` descending, then `run_id` descending).

        Args:
            status: only runs with this status.
            limit: most runs returned (at least 1).
            after: the last `run_id` of the previous page (keyset pagination).
            details: False leaves out each run's `spec` and `nodes` (empty in the result).
            namespaces: only runs of these namespaces (None: every namespace).

        Raises:
            NotFoundError: `after` names no run.
            ValueError: `limit` is below 1 or `status` is not a run status.
        """
        ...

    async def aclose(self) -> None:
        """Flush pending writes and release connections and threads."""
        ...


@runtime_checkable
class OutcomeRecorder(Protocol):
    """An optional capability of an execution store: store an attempt's small outputs and
    record the attempt in one write (one round trip for a remote store).

    The orchestrator uses it, when `records_outputs_for` its artifact store, instead of
    `ArtifactStore.store` followed by `ExecutionStore.record`; the result is the same.
    """

    def records_outputs_for(self, artifact_store: object) -> bool:
        """Whether `record_outcome` stores outputs where `artifact_store` keeps them."""
        ...

    async def record_outcome(
        self, record: ExecutionRecord, outputs: Sequence[Artifact]
    ) -> builtins.list[Artifact]:
        """Store `outputs` (with content), append their ids to the record's
        `output_artifact_ids`, and record it; both durable on return.

        Returns:
            The stored outputs, filled as `ArtifactStore.store` fills them, content kept.

        Raises:
            ValueError: an output or the record is invalid; nothing of it was recorded.
        """
        ...


@runtime_checkable
class FencedStore(Protocol):
    """An optional capability of an execution store client: it sends the writer's lease epoch
    of a run with every write for it, and the store refuses a write whose epoch was
    superseded, raising `LeaseLostError` (the store service does: docs/durability.md)."""

    def fence(self, run_id: str, epoch: int) -> None:
        """Send lease epoch `epoch` with the writes for `run_id` from now on."""
        ...

    def unfence(self, run_id: str) -> None:
        """Send no lease epoch with the writes for `run_id` any more."""
        ...


@runtime_checkable
class RunLedger(Protocol):
    """An optional capability of an execution store: what replicated orchestrators share to
    own, resume, watch and cancel runs (docs/durability.md).

    Every write here is an insert of a document with a deterministic key, never a
    read-modify-write: MongoDB-wire servers without transactions (FerretDB 1.x) make an
    insert of an existing ``_id`` fail atomically, which is the only compare-and-set they
    offer. The run record itself is written only by its current owner.
    """

    async def create_run(self, run: RunRecord) -> bool:
        """Insert `run` unless a run with its `run_id` exists; durable on return.

        Returns:
            True when this call created the run; False when it already existed (nothing was
            written), so two replicas given one new request_id start exactly one run.
        """
        ...

    async def claim_run(self, run_id: str, epoch: int, owner: str) -> bool:
        """Claim lease epoch `epoch` (>= 2) of a run for `owner`: True for exactly one caller
        per (run, epoch), whoever asks first; every later claim of that epoch gets False."""
        ...

    async def lease_claimed(self, run_id: str, epoch: int) -> bool:
        """Whether someone claimed epoch `epoch` of the run (an owner of `epoch - 1` that
        sees True has lost the run and must stop writing for it)."""
        ...

    async def superseded(self, leases: Mapping[str, int]) -> builtins.set[str]:
        """The runs of `leases` (run id → a writer's lease epoch) whose next epoch was claimed:
        a write for them from that writer must be refused. Epochs below 1 are not fenced.

        Claims are consecutive (epoch e + 1 is claimed before e + 2), so one lookup per run
        tells."""
        ...

    async def truncate_events(self, run_id: str, after: int, below_epoch: int) -> int:
        """Delete the run's stored events numbered above `after` that epochs below
        `below_epoch` wrote; return how many.

        For an adopter: events after the gap-free prefix it resumes from were never
        published (an interrupted batch can leave a hole before them); its own numbering
        continues from the prefix and must not collide with them."""
        ...

    async def append_events(self, events: Sequence[RunEventRecord]) -> None:
        """Store run events, each keyed by (run_id, sequence); durable on return.

        Events of one run must be given in sequence order; a repeat of a stored key is
        ignored (a retried write is harmless).
        """
        ...

    async def list_events(
        self, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> builtins.list[RunEventRecord]:
        """The run's stored events numbered above `after`, in sequence order, at most `limit`."""
        ...

    async def request_cancel(self, run_id: str) -> None:
        """Record that the run's cancellation was asked for (whoever owns it acts on it)."""
        ...

    async def cancel_requests(self, run_ids: Sequence[str]) -> builtins.set[str]:
        """Which of `run_ids` have a recorded cancellation request."""
        ...


@runtime_checkable
class ServiceRegistry(Protocol):
    """An optional capability of an execution store: the registry that dispatcher replicas
    share (adapter registrations, and the replicas themselves; docs/registry.md).

    An entry has exactly one writer at a time: the dispatcher replica an adapter's current
    Register/Heartbeat call went through (an adapter makes one such call at a time), or the
    replica an entry describes. `put_entry` replaces the whole entry; nothing here is a
    read-modify-write (FerretDB 1.x offers no atomic compare-and-set on updates).
    """

    async def put_entry(self, entry: RegistryEntry) -> None:
        """Insert `entry`, or replace the entry of its (kind, key); durable on return.

        Raises:
            ValueError: an empty kind or key, a naive `expires_at`, or data that is not JSON.
        """
        ...

    async def delete_entry(self, kind: str, key: str) -> None:
        """Remove the entry of (kind, key); removing an unknown entry succeeds."""
        ...

    async def list_entries(
        self, kind: str, *, after: str = "", limit: int = 1000
    ) -> builtins.list[RegistryEntry]:
        """Entries of `kind` with a key above `after`, in key order, at most `limit` (keyset
        paging: ask again after the last key received). Expired entries are included (the
        reader decides by its own clock)."""
        ...

    async def prune_entries(self, kind: str, expired_before: datetime) -> int:
        """Remove the entries of `kind` that expired before `expired_before`.

        Returns:
            How many were removed.
        """
        ...
