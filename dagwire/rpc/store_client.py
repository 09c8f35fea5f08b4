"""Typed clients of the store service: `ArtifactStore` and `ExecutionStore` over gRPC.

`RemoteArtifactStore` and `RemoteExecutionStore` implement the store protocols of
`dagwire.stores.base`, so code written against a local store works unchanged against the
store service. Each holds one long-lived channel (opened lazily on first use); content moves
in chunks of at most 1 MiB; a store service that cannot be reached is `StoreUnavailableError`.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import json
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import datetime
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from dagwire.errors import DagwireError, LeaseLostError, NotFoundError, StoreUnavailableError
from dagwire.limits import (
    ARTIFACT_CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    OUTCOME_INLINE_BYTES,
    WIRE_BATCH_BYTES,
)
from dagwire.models import (
    Artifact,
    ExecutionRecord,
    RegistryEntry,
    RunEventRecord,
    RunRecord,
    RunStatus,
)
from dagwire.rpc.channels import client_channel
from dagwire.rpc.convert import (
    artifact_from_proto,
    artifact_to_proto,
    datetime_from_proto,
    datetime_to_proto,
    execution_record_from_proto,
    execution_record_to_proto,
    run_from_proto,
    run_status_to_proto,
    run_to_proto,
)
from dagwire.rpc.paging import MAX_PAGE_SIZE
from dagwire.rpc.status import InvalidArgumentError, error_from_rpc
from dagwire.stores._validate import check_registry_entry
from dagwire.v1 import common_pb2
from dagwire.v1 import store_service_pb2 as pb
from dagwire.v1 import store_service_pb2_grpc as pb_grpc

__all__ = ["CHUNK_BYTES", "OUTCOME_INLINE_BYTES", "RemoteArtifactStore", "RemoteExecutionStore"]

#: Upload chunk size: just under 1 MiB, so that a chunk with its protobuf and gRPC framing is
#: one message of at most 1 MiB (grpcio streams larger messages several times slower).
CHUNK_BYTES = ARTIFACT_CHUNK_BYTES
_HASH_IN_THREAD_BYTES = 1 << 20
#: Most items one coalesced call carries.
_BATCH_ITEMS = 500

T = TypeVar("T")
_I = TypeVar("_I")
_R = TypeVar("_R")


class _Coalescer(Generic[_I, _R]):
    """Joins the calls made within one event-loop tick, or while earlier batches are in
    flight, into one batch call.

    Every `submit` of the current tick is queued; at the end of the tick (`call_soon`) the
    queue goes out as batches of at most `max_items` items and `max_bytes` bytes, each through
    `send`, which returns one result per item in order (an exception in place of a result
    fails that caller only). While batches are in flight, new calls queue up and go out
    together as soon as the last of them returns. A failed batch fails each of its callers
    with the same exception. A lone call costs one extra loop iteration, nothing else; under
    load (many tasks finishing one after the other, as a wide fan-out's do) one RPC serves all
    that finished during the previous one.
    """

    def __init__(
        self,
        send: Callable[[builtins.list[_I]], Awaitable[builtins.list[_R | Exception]]],
        *,
        max_items: int = _BATCH_ITEMS,
        max_bytes: int = WIRE_BATCH_BYTES,
    ) -> None:
        self._send = send
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._queue: builtins.list[tuple[_I, int, asyncio.Future[_R]]] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def submit(self, item: _I, size: int = 0) -> _R:
        return await self.enqueue(item, size)

    def enqueue(self, item: _I, size: int = 0) -> asyncio.Future[_R]:
        """Queue `item` for this tick's batch and return the future of its result (what
        `submit` awaits; queuing many items this way costs no task per item)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_R] = loop.create_future()
        if not self._queue and not self._flushing:
            loop.call_soon(self._flush)
        self._queue.append((item, size, future))
        return future

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        batch: builtins.list[tuple[_I, int, asyncio.Future[_R]]] = []
        size = 0
        for entry in queue:
            if batch and (len(batch) >= self._max_items or size + entry[1] > self._max_bytes):
                self._start(batch)
                batch, size = [], 0
            batch.append(entry)
            size += entry[1]
        if batch:
            self._start(batch)

    def _start(self, batch: builtins.list[tuple[_I, int, asyncio.Future[_R]]]) -> None:
        task = asyncio.ensure_future(self._deliver(batch))
        self._flushing.add(task)
        task.add_done_callback(self._delivered)

    def _delivered(self, task: asyncio.Task[None]) -> None:
        self._flushing.discard(task)
        if not self._flushing and self._queue:  # what queued meanwhile goes out now
            self._flush()

    async def _deliver(self, batch: builtins.list[tuple[_I, int, asyncio.Future[_R]]]) -> None:
        try:
            results = await self._send([item for item, _, _ in batch])
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


class _Connection:
    """One lazily opened channel (owned, or borrowed from the caller) and the error mapping."""

    def __init__(
        self, address: str, channel: grpc.aio.Channel | None, max_message_bytes: int
    ) -> None:
        self.address = address
        self._channel = channel
        self._owned = channel is None
        self._max_message_bytes = max_message_bytes

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = client_channel(self.address, max_message_bytes=self._max_message_bytes)
        return self._channel

    def error(self, exc: grpc.RpcError) -> DagwireError:
        return error_from_rpc(
            exc, unavailable=StoreUnavailableError, target=f"store service at {self.address}"
        )

    async def aclose(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and self._owned:
            await channel.close()


class RemoteArtifactStore:
    """An `ArtifactStore` served by a store service (``ArtifactStoreService``).

    The constructor does no I/O; the channel opens on first use and `aclose()` closes it
    (a channel passed in is borrowed and left open).
    """

    def __init__(
        self,
        address: str,
        *,
        channel: grpc.aio.Channel | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        """Describe the client; does no I/O.

        Args:
            address: a gRPC target of the store service (``host:port``, ``dns:///name:port``,
                ``ipv4:A:P,B:P``; see docs/targets.md).
            channel: an existing channel to use instead of opening one.
            max_message_bytes: the channel's message size limit (when it opens one).
            chunk_bytes: upload chunk size (at most the message limit minus headroom).
        """
        self._conn = _Connection(address, channel, max_message_bytes)
        self._chunk_bytes = max(1, min(chunk_bytes, max_message_bytes - 4096))
        self._stub: Any = None

    @property
    def address(self) -> str:
        """``host:port`` of the store service."""
        return self._conn.address

    @property
    def _api(self) -> pb_grpc.ArtifactStoreServiceAsyncStub:
        if self._stub is None:
            self._stub = pb_grpc.ArtifactStoreServiceStub(self._conn.channel)
        stub: pb_grpc.ArtifactStoreServiceAsyncStub = self._stub
        return stub

    async def store(self, artifact: Artifact) -> Artifact:
        """Upload an artifact whose `content` is in memory (its sha256 and size declared).

        Args:
            artifact: `content` must be set; the value is not mutated.

        Returns:
            A filled copy (`artifact_id`, `sha256`, `size`, `created_at`), content kept.

        Raises:
            ValueError: `content` is None, or a field is invalid (the message names it).
            StoreUnavailableError: the store service (or its backend) cannot be reached.
        """
        content = artifact.content
        if content is None:
            raise ValueError(
                "artifact content is None: store() needs the bytes (use store_stream())"
            )
        data = bytes(content)
        if len(data) > _HASH_IN_THREAD_BYTES:
            sha256 = await asyncio.to_thread(_sha256_hex, data)
        else:
            sha256 = _sha256_hex(data)
        stored = await self._put(artifact, _split(data, self._chunk_bytes), sha256, len(data))
        return dataclasses.replace(stored, content=content)

    async def store_stream(self, artifact: Artifact, chunks: AsyncIterable[bytes]) -> Artifact:
        """Upload an artifact from a stream of chunks, never holding it whole.

        Args:
            artifact: metadata; `content` must be None.
            chunks: the content, in order. If iterating it raises, the upload is cancelled,
                nothing becomes visible, and the same exception is raised here.

        Returns:
            A filled copy with `content=None`.

        Raises:
            ValueError: `content` is set or a field is invalid.
            StoreUnavailableError: the store service (or its backend) cannot be reached.
            Exception: whatever `chunks` raised.
        """
        if artifact.content is not None:
            raise ValueError("artifact content must be None for store_stream(); pass chunks")
        return await self._put(artifact, _rechunk(chunks, self._chunk_bytes), None, None)

    async def _put(
        self,
        artifact: Artifact,
        chunks: AsyncIterator[bytes],
        sha256: str | None,
        size: int | None,
    ) -> Artifact:
        header = _header(artifact, sha256, size)
        failure: list[BaseException] = []
        call: Any = None

        async def requests() -> AsyncIterator[pb.PutArtifactRequest]:
            yield pb.PutArtifactRequest(header=header)
            while True:
                # Only an error from the caller's `chunks` is the caller's failure: gRPC closing
                # this generator (GeneratorExit) or cancelling its task once the call ended
                # must leave the call's own status to be raised.
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except Exception as exc:  # the caller's stream broke: abandon the upload
                    failure.append(exc)
                    if call is not None:
                        call.cancel()
                    return
                yield pb.PutArtifactRequest(chunk=chunk)

        call = self._api.PutArtifact(requests())
        try:
            response = await call
        except asyncio.CancelledError:
            if failure:
                raise failure[0] from None
            raise
        except grpc.aio.AioRpcError as exc:
            if failure:
                raise failure[0] from None
            raise self._conn.error(exc) from None
        if failure:  # the server answered before it noticed the cancellation
            raise failure[0]
        return artifact_from_proto(response.artifact)

    async def load(self, artifact_id: str) -> Artifact:
        """The artifact with its `content`, downloaded in chunks.

        Raises:
            NotFoundError: no artifact has this id.
            StoreUnavailableError: the store service (or its backend) cannot be reached.
        """
        meta: Artifact | None = None
        content = bytearray()
        try:
            async for response in self._api.GetArtifact(
                pb.GetArtifactRequest(artifact_id=artifact_id)
            ):
                if response.WhichOneof("part") == "artifact":
                    meta = artifact_from_proto(response.artifact)
                else:
                    content += response.chunk
        except grpc.aio.AioRpcError as exc:
            raise self._conn.error(exc) from None
        if meta is None:
            raise StoreUnavailableError(
                f"store service at {self._conn.address} ended GetArtifact for {artifact_id!r} "
                "without the artifact's metadata"
            )
        return dataclasses.replace(meta, content=bytes(content))

    async def stat(self, artifact_id: str) -> Artifact:
        """The artifact's metadata, `content=None`.

        Raises:
            NotFoundError: no artifact has this id.
            StoreUnavailableError: the store service (or its backend) cannot be reached.
        """
        request = pb.StatArtifactRequest(artifact_id=artifact_id)
        response = await self._unary(self._api.StatArtifact(request))
        return artifact_from_proto(response.artifact)

    async def open(self, artifact_id: str) -> AsyncIterator[bytes]:
        """The artifact's content in chunks of at most 1 MiB, streamed from the service.

        The call starts on the first iteration, so an unknown id raises `NotFoundError` from
        the first `__anext__()`.

        Raises:
            NotFoundError: no artifact has this id.
            StoreUnavailableError: the store service (or its backend) cannot be reached.
        """
        call = self._api.GetArtifact(pb.GetArtifactRequest(artifact_id=artifact_id))
        try:
            async for response in call:
                if response.WhichOneof("part") == "chunk":
                    yield response.chunk
        except grpc.aio.AioRpcError as exc:
            raise self._conn.error(exc) from None
        finally:
            call.cancel()  # no-op once the stream ended; stops it when abandoned early

    async def list(self, run_id: str) -> builtins.list[Artifact]:
        """Every artifact of `run_id`, in store order, `content=None` (all pages).

        Raises:
            StoreUnavailableError: the store service (or its backend) cannot be reached.
        """
        out: builtins.list[Artifact] = []
        token = ""
        while True:
            request = pb.ListArtifactsRequest(
                run_id=run_id, page_size=MAX_PAGE_SIZE, page_token=token
            )
            response = await self._unary(self._api.ListArtifacts(request))
            out += [artifact_from_proto(a) for a in response.artifacts]
            token = response.next_page_token
            if not token:
                return out

    async def aclose(self) -> None:
        """Close the channel (when this client opened it)."""
        self._stub = None
        await self._conn.aclose()

    async def _unary(self, call: Any) -> Any:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise self._conn.error(exc) from None


class RemoteExecutionStore:
    """An `ExecutionStore` served by a store service (``ExecutionStoreService``).

    The constructor does no I/O; the channel opens on first use and `aclose()` closes it
    (a channel passed in is borrowed and left open).
    """

    def __init__(
        self,
        address: str,
        *,
        channel: grpc.aio.Channel | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        """Describe the client; does no I/O.

        Args:
            address: a gRPC target of the store service (``host:port``, ``dns:///name:port``,
                ``ipv4:A:P,B:P``; see docs/targets.md).
            channel: an existing channel to use instead of opening one.
            max_message_bytes: the channel's message size limit (when it opens one).
        """
        self._conn = _Connection(address, channel, max_message_bytes)
        self._stub: Any = None
        #: Lease epoch this client writes each run under (`fence`): sent with its writes.
        self._leases: dict[str, int] = {}
        self._records: _Coalescer[common_pb2.ExecutionRecord, None] = _Coalescer(
            self._send_records, max_bytes=max_message_bytes // 2
        )
        self._outcomes: _Coalescer[pb.AttemptOutcome, pb.OutcomeResult] = _Coalescer(
            self._send_outcomes, max_bytes=max_message_bytes // 2
        )
        self._events: _Coalescer[pb.StoredRunEvent, None] = _Coalescer(
            self._send_events, max_bytes=max_message_bytes // 2
        )

    @property
    def address(self) -> str:
        """``host:port`` of the store service."""
        return self._conn.address

    def fence(self, run_id: str, epoch: int) -> None:
        """Send lease epoch `epoch` with every write for `run_id` from now on: the store
        service refuses them (`LeaseLostError`) once another orchestrator claims the next
        epoch (docs/durability.md, fencing)."""
        self._leases[run_id] = epoch

    def unfence(self, run_id: str) -> None:
        """Stop sending a lease epoch with the writes for `run_id` (the run ended here)."""
        self._leases.pop(run_id, None)

    def _lease_epochs(self, run_ids: Iterable[str]) -> dict[str, int]:
        leases = self._leases
        return {r: leases[r] for r in run_ids if r in leases}

    def records_outputs_for(self, artifact_store: object) -> bool:
        """Whether `record_outcome` stores outputs where `artifact_store` keeps them: it is a
        `RemoteArtifactStore` of the same store service."""
        return (
            isinstance(artifact_store, RemoteArtifactStore)
            and artifact_store.address == self._conn.address
        )

    async def record_outcome(
        self, record: ExecutionRecord, outputs: Sequence[Artifact]
    ) -> builtins.list[Artifact]:
        """Store an attempt's small outputs and record the attempt, in one round trip.

        Concurrent calls (tasks finishing together) share one ``RecordOutcomes`` call. The
        outputs' ids are appended to the record's `output_artifact_ids`; both are durable on
        return.

        Args:
            record: the attempt's final record.
            outputs: artifacts with `content` (at most a few hundred KiB in all).

        Returns:
            The stored outputs, filled (`artifact_id`, `sha256`, `size`, `created_at`), with
            their content.

        Raises:
            ValueError: an output or a record field is invalid; nothing of this attempt was
                recorded.
            StoreUnavailableError: the store service (or its backend) cannot be reached.
        """
        wire: builtins.list[common_pb2.Artifact] = []
        size = 0
        for artifact in outputs:
            if artifact.content is None:
                raise ValueError(
                    f"output {artifact.name!r} has no content: store it with the artifact store"
                )
            for name in ("name", "media_type", "run_id", "node_id"):
                _check_utf8(getattr(artifact, name), name)
            wire.append(artifact_to_proto(artifact))
            size += len(artifact.content)
        outcome = pb.AttemptOutcome(record=execution_record_to_proto(record), outputs=wire)
        result = await self._outcomes.submit(outcome, size + 512)
        if result.error:
            raise InvalidArgumentError(result.error, field="outputs")
        return [
            dataclasses.replace(artifact_from_proto(stored), content=given.content)
            for stored, given in zip(result.outputs, outputs, strict=True)
        ]

    async def _send_outcomes(
        self, outcomes: builtins.list[pb.AttemptOutcome]
    ) -> builtins.list[pb.OutcomeResult | Exception]:
        request = pb.RecordOutcomesRequest(
            outcomes=outcomes, lease_epochs=self._lease_epochs(o.record.run_id for o in outcomes)
        )
        response = await self._unary(self._api.RecordOutcomes(request))
        results: builtins.list[pb.OutcomeResult] = list(response.results)
        if len(results) != len(outcomes):
            raise StoreUnavailableError(
                f"store service at {self._conn.address} answered RecordOutcomes with "
                f"{len(results)} results for {len(outcomes)} outcomes"
            )
        return _fenced(
            [o.record.run_id for o in outcomes], results, response.superseded_run_ids, self._leases
        )

    async def _send_records(
        self, records: builtins.list[common_pb2.ExecutionRecord]
    ) -> list[Exception | None]:
        request = pb.RecordExecutionsRequest(
            records=records, lease_epochs=self._lease_epochs(r.run_id for r in records)
        )
        response = await self._unary(self._api.RecordExecutions(request))
        return _fenced(
            [r.run_id for r in records],
            [None] * len(records),
            response.superseded_run_ids,
            self._leases,
        )

    @property
    def _api(self) -> pb_grpc.ExecutionStoreServiceAsyncStub:
        if self._stub is None:
            self._stub = pb_grpc.ExecutionStoreServiceStub(self._conn.channel)
        stub: pb_grpc.ExecutionStoreServiceAsyncStub = self._stub
        return stub

    async def record(self, record: ExecutionRecord) -> None:
        """Upsert one attempt; durable on return (see `ExecutionStore.record`).

        Concurrent calls (tasks finishing together) share one ``RecordExecutions`` call.

        Raises:
            ValueError: a field is invalid.
            StoreUnavailableError: the store service (or its backend) cannot be reached.
        """
        await self._records.submit(execution_record_to_proto(record), 512)

    async def record_many(self, records: Sequence[ExecutionRecord]) -> None:
        """Upsert several attempts in one call; durable on return.

        Raises:
            ValueError: a field is invalid.
            StoreUnavailableError: the store service (or its backend) cannot be reached.
        """
        if not records:
            return
        request = pb.RecordExecutionsRequest(
            records=[execution_record_to_proto(r) for r in records],
            lease_epochs=self._lease_epochs(r.run_id for r in records),
        )
        response = await self._unary(self._api.RecordExecutions(request))
        if response.superseded_run_ids:
            run_id = response.superseded_run_ids[0]
            raise LeaseLostError(run_id, self._leases.get(run_id, 0))

    async def list_records(self, run_id: str) -> list[ExecutionRecord]:
        """Every attempt of `run_id`, ordered by start time (all pages).

        Raises:
            StoreUnavailableError: the store service (or its backend) cannot be reached.
        """
        out: list[ExecutionRecord] = []
        token = ""
        while True:
            request = pb.ListExecutionRecordsRequest(
                run_id=run_id, page_size=MAX_PAGE_SIZE, page_token=token
            )
            response = await self._unary(self._api.ListExecutionRecords(request))
            out += [execution_record_from_proto(r) for r in response.records]
            token = response.next_page_token
            if not token:
                return out

    async def save_run(self, run: RunRecord) -> None:
        """Upsert a run record by `run_id`; durable on return.

        Raises:
            ValueError: a field is invalid.
            StoreUnavailableError: the store service (or its backend) cannot be reached.
        """
        await self._unary(self._api.SaveRunRecord(pb.SaveRunRecordRequest(run=run_to_proto(run))))

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run record, or None when no run has this id.

        Raises:
            StoreUnavailableError: the store service (or its backend) cannot be reached.
        """
        try:
            response = await self._unary(
                self._api.GetRunRecord(pb.GetRunRecordRequest(run_id=run_id))
            )
        except NotFoundError:
            return None
        return run_from_proto(response.run)

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        limit: int = 50,
        after: str | None = None,
        details: bool = True,
        namespaces: Sequence[str] | None = None,
    ) -> list[RunRecord]:
        """Runs newest first (see `ExecutionStore.list_runs`).

        Pages come from the store service, each under its byte budget (docs/limits.md); this
        follows them until `limit` runs or the end.

        Args:
            status: only runs with this status.
            limit: most runs returned (at least 1).
            after: the last `run_id` of the previous page.
            details: False leaves out each run's `spec` and `nodes` (the service does not
                send them).
            namespaces: only runs of these namespaces (None: every namespace the caller may
                see).

        Raises:
            NotFoundError: `after` names no run.
            ValueError: `limit` is below 1 or `status` is not a run status.
            StoreUnavailableError: the store service (or its backend) cannot be reached.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        wanted = None if status is None else RunStatus(status)
        token = ""
        out: list[RunRecord] = []
        while len(out) < limit:
            request = pb.ListRunRecordsRequest(
                page_size=min(limit - len(out), MAX_PAGE_SIZE),
                page_token=token,
                status=(
                    common_pb2.RUN_STATUS_UNSPECIFIED
                    if wanted is None
                    else run_status_to_proto(wanted)
                ),
                without_details=not details,
                after_run_id=(after or "") if not token else "",
                namespaces=list(namespaces or ()),
            )
            response = await self._unary(self._api.ListRunRecords(request))
            out += [run_from_proto(r) for r in response.runs]
            token = response.next_page_token
            if not token:
                break
        return out

    # ------------------------------------------------------------------ RunLedger

    async def create_run(self, run: RunRecord) -> bool:
        """Insert `run` unless its `run_id` exists; True when this call created it."""
        request = pb.CreateRunRecordRequest(run=run_to_proto(run))
        response = await self._unary(self._api.CreateRunRecord(request))
        return bool(response.created)

    async def claim_run(self, run_id: str, epoch: int, owner: str) -> bool:
        """Claim lease epoch `epoch` of a run; True for exactly one caller per epoch."""
        request = pb.ClaimRunLeaseRequest(run_id=run_id, epoch=epoch, owner=owner)
        return bool((await self._unary(self._api.ClaimRunLease(request))).claimed)

    async def lease_claimed(self, run_id: str, epoch: int) -> bool:
        """Whether epoch `epoch` of the run was claimed."""
        request = pb.GetRunLeaseClaimRequest(run_id=run_id, epoch=epoch)
        return bool((await self._unary(self._api.GetRunLeaseClaim(request))).claimed)

    async def append_events(self, events: Sequence[RunEventRecord]) -> None:
        """Store run events; concurrent calls share one ``AppendRunEvents`` call."""
        pending = []
        for event in events:
            data = json.dumps(event.data, ensure_ascii=False)
            wire = pb.StoredRunEvent(
                run_id=event.run_id, sequence=event.sequence, epoch=event.epoch, data_json=data
            )
            pending.append(self._events.enqueue(wire, len(data) + 64))
        if len(pending) == 1:
            await pending[0]
        elif pending:
            await asyncio.gather(*pending)

    async def _send_events(
        self, events: builtins.list[pb.StoredRunEvent]
    ) -> list[Exception | None]:
        request = pb.AppendRunEventsRequest(events=events)
        response = await self._unary(self._api.AppendRunEvents(request))
        epochs = {e.run_id: int(e.epoch) for e in events}
        return _fenced(
            [e.run_id for e in events], [None] * len(events), response.superseded_run_ids, epochs
        )

    async def superseded(self, leases: Mapping[str, int]) -> builtins.set[str]:
        """The runs of `leases` whose lease epoch after the given one was claimed."""
        wanted = [(r, e) for r, e in leases.items() if e >= 1]
        claimed = await asyncio.gather(*(self.lease_claimed(r, e + 1) for r, e in wanted))
        return {r for (r, _), hit in zip(wanted, claimed, strict=True) if hit}

    async def truncate_events(self, run_id: str, after: int, below_epoch: int) -> int:
        """Delete the run's events above `after` written by epochs below `below_epoch`.

        Raises:
            LeaseLostError: epoch `below_epoch` of the run is superseded.
        """
        request = pb.TruncateRunEventsRequest(
            run_id=run_id, after_sequence=after, epoch=below_epoch
        )
        return int((await self._unary(self._api.TruncateRunEvents(request))).deleted_count)

    async def list_events(
        self, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> builtins.list[RunEventRecord]:
        """The run's events numbered above `after`, in order, at most `limit`."""
        request = pb.ReadRunEventsRequest(
            run_id=run_id, after_sequence=after, page_size=min(max(limit, 1), 1000)
        )
        response = await self._unary(self._api.ReadRunEvents(request))
        return [
            RunEventRecord(e.run_id, e.sequence, e.epoch, json.loads(e.data_json))
            for e in response.events
        ]

    async def request_cancel(self, run_id: str) -> None:
        """Record a cancellation request for the run."""
        await self._unary(self._api.RequestRunCancel(pb.RequestRunCancelRequest(run_id=run_id)))

    async def cancel_requests(self, run_ids: Sequence[str]) -> builtins.set[str]:
        """Which of `run_ids` have a cancellation request."""
        found: set[str] = set()
        ids = list(run_ids)
        for start in range(0, len(ids), 1000):
            request = pb.BatchGetRunCancelRequestsRequest(run_ids=ids[start : start + 1000])
            found.update((await self._unary(self._api.BatchGetRunCancelRequests(request))).run_ids)
        return found

    # ------------------------------------------------------------------ ServiceRegistry

    async def put_entry(self, entry: RegistryEntry) -> None:
        """Insert or replace the registry entry of (kind, key)."""
        check_registry_entry(entry.kind, entry.key)
        try:
            data = json.dumps(entry.data, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"registry entry {entry.kind}/{entry.key}: data is not JSON: {exc}"
            ) from exc
        message = pb.RegistryEntry(
            kind=entry.kind,
            key=entry.key,
            expire_time=datetime_to_proto(entry.expires_at, "expires_at"),
            data_json=data,
        )
        await self._unary(self._api.PutRegistryEntry(pb.PutRegistryEntryRequest(entry=message)))

    async def delete_entry(self, kind: str, key: str) -> None:
        """Remove the registry entry of (kind, key), if any."""
        check_registry_entry(kind, key)
        request = pb.DeleteRegistryEntryRequest(kind=kind, key=key)
        await self._unary(self._api.DeleteRegistryEntry(request))

    async def list_entries(
        self, kind: str, *, after: str = "", limit: int = 1000
    ) -> builtins.list[RegistryEntry]:
        """Registry entries of `kind` above key `after`, in key order, at most `limit`."""
        check_registry_entry(kind)
        out: list[RegistryEntry] = []
        wanted = max(limit, 1)
        token = ""
        while len(out) < wanted:
            request = pb.ListRegistryEntriesRequest(
                kind=kind,
                page_token=token,
                after_key=after if not token else "",
                page_size=min(wanted - len(out), 1000),
            )
            response = await self._unary(self._api.ListRegistryEntries(request))
            out += [
                RegistryEntry(
                    e.kind, e.key, datetime_from_proto(e.expire_time), json.loads(e.data_json)
                )
                for e in response.entries
            ]
            token = response.next_page_token
            if not token:
                break
        return out

    async def prune_entries(self, kind: str, expired_before: datetime) -> int:
        """Remove the entries of `kind` that expired before `expired_before`."""
        check_registry_entry(kind)
        request = pb.PruneRegistryEntriesRequest(
            kind=kind, expired_before=datetime_to_proto(expired_before, "expired_before")
        )
        return int((await self._unary(self._api.PruneRegistryEntries(request))).removed)

    async def aclose(self) -> None:
        """Close the channel (when this client opened it)."""
        self._stub = None
        await self._conn.aclose()

    async def _unary(self, call: Any) -> Any:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise self._conn.error(exc) from None


def _fenced(
    run_ids: Sequence[str],
    results: Sequence[T],
    superseded: Sequence[str],
    epochs: Mapping[str, int],
) -> list[T | Exception]:
    """`results`, with a `LeaseLostError` in place of each item of a superseded run."""
    if not superseded:
        return list(results)
    lost = set(superseded)
    return [
        LeaseLostError(run_id, epochs.get(run_id, 0)) if run_id in lost else result
        for run_id, result in zip(run_ids, results, strict=True)
    ]


def _header(artifact: Artifact, sha256: str | None, size: int | None) -> pb.ArtifactHeader:
    for field in ("name", "media_type", "run_id", "node_id"):
        _check_utf8(getattr(artifact, field), field)
    for key, value in artifact.metadata.items():
        _check_utf8(key, "metadata key")
        _check_utf8(value, f"metadata[{key!r}]")
    wire = artifact_to_proto(artifact, with_content=False)
    header = pb.ArtifactHeader(
        name=wire.name,
        media_type=wire.media_type,
        metadata=wire.metadata,
        run_id=wire.run_id,
        node_id=wire.node_id,
        sha256=sha256 or "",
    )
    if size is not None:
        header.size = size
    return header


def _check_utf8(value: object, field: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{field} is not valid UTF-8 (it contains a lone surrogate): {value!r}"
            ) from None


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _split(data: bytes, size: int) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


async def _rechunk(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """`chunks` re-cut into pieces of exactly `size` bytes (the last one may be shorter).

    Whatever sizes the caller yields, the wire carries full messages (a 1 MiB chunk is not
    sent as a nearly 1 MiB message plus a 4 KiB one); at most `size` bytes wait here.
    """
    pending = bytearray()
    async for chunk in chunks:
        view = memoryview(chunk).cast("B")
        if pending:
            take = min(size - len(pending), len(view))
            pending += view[:take]
            view = view[take:]
            if len(pending) < size:
                continue
            yield bytes(pending)
            pending.clear()
        while len(view) >= size:
            yield bytes(view[:size])
            view = view[size:]
        pending += view
    if pending:
        yield bytes(pending)
