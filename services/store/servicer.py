"""The store service's gRPC layer: decode each request, call the store, encode the reply."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import grpc.aio

from dagwire.auth import check_namespace
from dagwire.errors import LeaseLostError, NotFoundError, PermissionDeniedError
from dagwire.limits import ARTIFACT_CHUNK_BYTES
from dagwire.models import (
    DEFAULT_NAMESPACE,
    Artifact,
    RegistryEntry,
    RunEventRecord,
    without_details,
)
from dagwire.quotas import QuotaBook, Quotas
from dagwire.rpc.auth import current_principal
from dagwire.rpc.convert import (
    artifact_from_proto,
    artifact_to_proto,
    datetime_from_proto,
    datetime_to_proto,
    execution_record_from_proto,
    execution_record_to_proto,
    run_from_proto,
    run_status_from_proto,
    run_to_proto,
)
from dagwire.rpc.paging import decode_page_token, encode_page_token, fit_to_budget, page_size
from dagwire.rpc.serve import Service
from dagwire.rpc.status import InvalidArgumentError
from dagwire.rpc.uploads import (
    check_artifact_fields,
    check_declared_sha256,
    check_required,
    verified_chunks,
)
from dagwire.stores._validate import from_micros, to_micros
from dagwire.stores.base import (
    ArtifactStore,
    BatchArtifactStore,
    ExecutionStore,
    PagedArtifactStore,
    PagedExecutionStore,
    RecordKey,
    RunLedger,
    ServiceRegistry,
    record_key,
)
from dagwire.v1 import common_pb2, store_service_pb2, store_service_pb2_grpc
from dagwire.v1.store_service_pb2 import (
    AppendRunEventsRequest,
    AppendRunEventsResponse,
    BatchGetRunCancelRequestsRequest,
    BatchGetRunCancelRequestsResponse,
    ClaimRunLeaseRequest,
    ClaimRunLeaseResponse,
    CreateRunRecordRequest,
    CreateRunRecordResponse,
    DeleteRegistryEntryRequest,
    DeleteRegistryEntryResponse,
    GetArtifactRequest,
    GetArtifactResponse,
    GetRunLeaseClaimRequest,
    GetRunLeaseClaimResponse,
    GetRunRecordRequest,
    GetRunRecordResponse,
    ListArtifactsRequest,
    ListArtifactsResponse,
    ListExecutionRecordsRequest,
    ListExecutionRecordsResponse,
    ListRegistryEntriesRequest,
    ListRegistryEntriesResponse,
    ListRunRecordsRequest,
    ListRunRecordsResponse,
    OutcomeResult,
    PruneRegistryEntriesRequest,
    PruneRegistryEntriesResponse,
    PutArtifactRequest,
    PutArtifactResponse,
    PutRegistryEntryRequest,
    PutRegistryEntryResponse,
    ReadRunEventsRequest,
    ReadRunEventsResponse,
    RecordExecutionsRequest,
    RecordExecutionsResponse,
    RecordOutcomesRequest,
    RecordOutcomesResponse,
    RequestRunCancelRequest,
    RequestRunCancelResponse,
    SaveRunRecordRequest,
    SaveRunRecordResponse,
    StatArtifactRequest,
    StatArtifactResponse,
    StoredRunEvent,
    TruncateRunEventsRequest,
    TruncateRunEventsResponse,
)
from dagwire.v1.store_service_pb2 import RegistryEntry as RegistryEntryMessage
from dagwire_services.store.namespaces import NamespaceGuard

__all__ = ["ArtifactStoreServicer", "ExecutionStoreServicer", "store_services"]

#: Most content bytes per GetArtifact message: just under 1 MiB so that a message with its
#: protobuf and gRPC framing stays within 1 MiB (grpcio streams larger messages several times
#: slower on loopback; measured in bench/store_service.py). The stores yield chunks this size.
MAX_CHUNK_BYTES = ARTIFACT_CHUNK_BYTES
Context = grpc.aio.ServicerContext[Any, Any]


_MAX_EPOCH = 2**63 - 1
"""The largest lease epoch (int64 on the wire)."""


class ArtifactStoreServicer(store_service_pb2_grpc.ArtifactStoreServiceServicer):
    """`ArtifactStoreService` over any `ArtifactStore`; content streams through in chunks."""

    def __init__(
        self,
        store: ArtifactStore,
        guard: NamespaceGuard | None = None,
        quotas: QuotaBook | None = None,
    ) -> None:
        self._store = store
        self._guard = guard
        self._quotas = QuotaBook.from_env() if quotas is None else quotas

    async def _upload_quotas(self, header: Any) -> tuple[Quotas, str]:
        """The quotas of the namespace the upload's run belongs to (``default`` without one),
        after checking its metadata against them.

        Raises:
            InvalidArgumentError: the metadata or the declared size is over its quota.
        """
        namespace = DEFAULT_NAMESPACE
        if header.run_id and self._guard is not None:
            namespace = await self._guard.namespace_of(header.run_id) or DEFAULT_NAMESPACE
        quotas = self._quotas.of(namespace)
        metadata = sum(len(k.encode()) + len(v.encode()) for k, v in header.metadata.items())
        if metadata > quotas.metadata_bytes:
            raise InvalidArgumentError(
                f"header.metadata is {metadata} bytes, over the metadata_bytes quota of "
                f"{quotas.metadata_bytes} bytes of namespace {namespace!r}",
                field="header.metadata",
            )
        if header.HasField("size") and header.size > quotas.artifact_bytes:
            raise InvalidArgumentError(
                f"header.size is {header.size} bytes, over the artifact_bytes quota of "
                f"{quotas.artifact_bytes} bytes of namespace {namespace!r}",
                field="header.size",
            )
        return quotas, namespace

    async def _stat_visible(self, artifact_id: str) -> Artifact:
        """The artifact's metadata; NOT_FOUND, as for an unknown id, when its run is in a
        namespace the caller may not see."""
        meta = await self._store.stat(artifact_id)
        principal = current_principal()
        grant = principal.grant if principal is not None else None
        hidden = grant is not None and meta.run_id != grant.run_id
        if not hidden and self._guard is not None:
            hidden = not await self._guard.sees_run(meta.run_id or "")
        if hidden:
            raise NotFoundError(
                f"artifact {artifact_id!r} not found", kind="artifact", id=artifact_id
            )
        return meta

    async def PutArtifact(
        self, request_iterator: AsyncIterable[PutArtifactRequest], context: Context
    ) -> PutArtifactResponse:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgumentError(
                "PutArtifact: the first message of the stream must hold the header",
                field="header",
            )
        header = first.header
        _check_grant_for_upload(header)
        artifact = artifact_from_proto(
            common_pb2.Artifact(
                name=check_artifact_fields(header.name, header.metadata, "header."),
                media_type=header.media_type,
                metadata=header.metadata,
                run_id=header.run_id,
                node_id=header.node_id,
            )
        )
        quotas, namespace = await self._upload_quotas(header)  # after the store's limits
        chunks = verified_chunks(
            _within_quota(_chunks_of(requests), quotas.artifact_bytes, namespace),
            sha256=check_declared_sha256(header.sha256),
            size=header.size if header.HasField("size") else None,
        )
        stored = await self._store.store_stream(artifact, chunks)
        return PutArtifactResponse(artifact=artifact_to_proto(stored, with_content=False))

    async def GetArtifact(
        self, request: GetArtifactRequest, context: Context
    ) -> AsyncIterator[GetArtifactResponse]:
        artifact_id = check_required(request.artifact_id, "artifact_id")
        meta = await self._stat_visible(artifact_id)
        yield GetArtifactResponse(artifact=artifact_to_proto(meta, with_content=False))
        chunks = self._store.open(artifact_id)
        try:
            async for chunk in chunks:
                if len(chunk) <= MAX_CHUNK_BYTES:
                    yield GetArtifactResponse(chunk=chunk)
                    continue
                view = memoryview(chunk)
                for start in range(0, len(chunk), MAX_CHUNK_BYTES):
                    yield GetArtifactResponse(chunk=bytes(view[start : start + MAX_CHUNK_BYTES]))
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()

    async def StatArtifact(
        self, request: StatArtifactRequest, context: Context
    ) -> StatArtifactResponse:
        meta = await self._stat_visible(check_required(request.artifact_id, "artifact_id"))
        return StatArtifactResponse(artifact=artifact_to_proto(meta, with_content=False))

    async def ListArtifacts(
        self, request: ListArtifactsRequest, context: Context
    ) -> ListArtifactsResponse:
        run_id = check_required(request.run_id, "run_id")
        size = page_size(request.page_size)
        if self._guard is not None and not await self._guard.sees_run(run_id):
            return ListArtifactsResponse()  # as for a run that has no artifacts
        after: str | None = None
        if request.page_token:
            position = decode_page_token(request.page_token, "artifacts", run_id)
            if not isinstance(position, str) or not position:
                raise _bad_token()
            after = position
        store = self._store
        if isinstance(store, PagedArtifactStore):  # keyset: a page costs its own size
            try:
                artifacts = await store.list_page(run_id, after=after, limit=size + 1)
            except NotFoundError:
                raise _bad_token() from None
        else:  # a backend that cannot page: listed whole, cut after the token's artifact
            artifacts = _after(await store.list(run_id), after, lambda a: a.artifact_id or "")
            artifacts = artifacts[: size + 1]
        messages = [artifact_to_proto(a, with_content=False) for a in artifacts[:size]]
        count = fit_to_budget(messages)
        more = len(artifacts) > count
        last = artifacts[count - 1].artifact_id if more else None
        return ListArtifactsResponse(
            artifacts=messages[:count],
            next_page_token=encode_page_token("artifacts", run_id, last) if last else "",
        )


class ExecutionStoreServicer(store_service_pb2_grpc.ExecutionStoreServiceServicer):
    """`ExecutionStoreService` over any `ExecutionStore` (and the artifact store beside it,
    for `RecordOutcomes`)."""

    def __init__(
        self,
        store: ExecutionStore,
        artifacts: ArtifactStore | None = None,
        guard: NamespaceGuard | None = None,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._guard = guard or NamespaceGuard(store)

    async def _superseded(self, leases: Mapping[str, int]) -> set[str]:
        """The runs among `leases` (run id → the writer's lease epoch) whose writer was
        fenced off: another orchestrator claimed the next epoch (docs/durability.md).

        The last int64 epoch has no next one to claim, so it is never superseded (and is not
        looked up: its successor fits no store's integer).
        """
        fenced = {run_id: epoch for run_id, epoch in leases.items() if 1 <= epoch < _MAX_EPOCH}
        if not fenced or not isinstance(self._store, RunLedger):
            return set()
        return await self._store.superseded(fenced)

    async def RecordExecutions(
        self, request: RecordExecutionsRequest, context: Context
    ) -> RecordExecutionsResponse:
        records = [execution_record_from_proto(r) for r in request.records]
        superseded = await self._superseded(request.lease_epochs)
        if superseded:
            records = [r for r in records if r.run_id not in superseded]
        if records:
            await self._store.record_many(records)
        return RecordExecutionsResponse(superseded_run_ids=sorted(superseded))

    async def RecordOutcomes(
        self, request: RecordOutcomesRequest, context: Context
    ) -> RecordOutcomesResponse:
        # the fence check (a database read) overlaps the outputs' upload: an output stored for
        # a writer that turns out fenced off is an orphan, as after any failed record write
        fence = asyncio.ensure_future(self._superseded(request.lease_epochs))
        try:
            uploaded = await self._store_all_outputs([o.outputs for o in request.outcomes])
        except BaseException:
            fence.cancel()
            fence.add_done_callback(_ignore_outcome)
            raise
        superseded = await fence
        outcomes: list[Any] = []
        stored: list[list[Artifact] | str] = []
        for outcome, outputs in zip(request.outcomes, uploaded, strict=True):
            if outcome.record.run_id not in superseded:
                outcomes.append(outcome)
                stored.append(outputs)
        records = [execution_record_from_proto(o.record) for o in outcomes]
        results: list[OutcomeResult] = []
        durable = []
        for record, outputs in zip(records, stored, strict=True):
            if isinstance(outputs, str):
                results.append(OutcomeResult(error=outputs))
                continue
            ids = [a.artifact_id or "" for a in outputs]
            durable.append(
                dataclasses.replace(record, output_artifact_ids=[*record.output_artifact_ids, *ids])
            )
            results.append(
                OutcomeResult(outputs=[artifact_to_proto(a, with_content=False) for a in outputs])
            )
        if durable:
            await self._store.record_many(durable)
        if superseded:  # one result per outcome in request order: the fenced ones empty
            kept = iter(results)
            results = [
                OutcomeResult() if o.record.run_id in superseded else next(kept)
                for o in request.outcomes
            ]
        return RecordOutcomesResponse(results=results, superseded_run_ids=sorted(superseded))

    async def _store_all_outputs(self, batches: list[Any]) -> list[list[Artifact] | str]:
        """Store the outputs of every outcome: in one write when the artifact store can
        (`BatchArtifactStore`), else outcome by outcome. An outcome with an invalid output gets
        that output's message instead of its stored outputs."""
        store = self._artifacts
        # the cheap test first: a runtime protocol check costs microseconds per call
        if sum(map(len, batches)) > 1 and isinstance(store, BatchArtifactStore):
            decoded: list[list[Artifact] | str] = []
            for outputs in batches:
                try:
                    decoded.append(_decode_outputs(outputs))
                except ValueError as exc:
                    decoded.append(str(exc))
            flat = [a for artifacts in decoded if not isinstance(artifacts, str) for a in artifacts]
            try:
                stored = await store.store_many(flat)
            except ValueError:
                pass  # an output the store refuses: outcome by outcome, so only its outcome fails
            else:
                results: list[list[Artifact] | str] = []
                start = 0
                for artifacts in decoded:
                    if isinstance(artifacts, str):
                        results.append(artifacts)
                        continue
                    results.append(stored[start : start + len(artifacts)])
                    start += len(artifacts)
                return results
        return list(await asyncio.gather(*(self._store_outputs(o) for o in batches)))

    async def _store_outputs(self, outputs: Any) -> list[Artifact] | str:
        """Store one outcome's outputs; the message of the first invalid one instead."""
        if not outputs:
            return []
        if self._artifacts is None:
            raise InvalidArgumentError(
                "RecordOutcomes: this store service has no artifact store", field="outcomes"
            )
        try:
            artifacts = _decode_outputs(outputs)
            store = self._artifacts.store
            if len(artifacts) == 1:
                return [await store(artifacts[0])]
            return list(await asyncio.gather(*(store(a) for a in artifacts)))
        except ValueError as exc:
            return str(exc)

    async def ListExecutionRecords(
        self, request: ListExecutionRecordsRequest, context: Context
    ) -> ListExecutionRecordsResponse:
        run_id = check_required(request.run_id, "run_id")
        size = page_size(request.page_size)
        if not await self._guard.sees_run(run_id):
            return ListExecutionRecordsResponse()  # as for a run with no records
        after = _record_key_of(request.page_token, run_id) if request.page_token else None
        store = self._store
        if isinstance(store, PagedExecutionStore):  # keyset: a page costs its own size
            records = await store.list_records_page(run_id, after=after, limit=size + 1)
        else:  # a backend that cannot page: listed whole, cut after the token's position
            listed = await store.list_records(run_id)
            if after is not None:
                listed = [r for r in listed if record_key(r) > after]
            records = listed[: size + 1]
        messages = [execution_record_to_proto(r) for r in records[:size]]
        count = fit_to_budget(messages)
        token = ""
        if len(records) > count:
            started, node_id, attempt = record_key(records[count - 1])
            position = [to_micros(started, "started_at"), node_id, attempt]
            token = encode_page_token("records", run_id, position)
        return ListExecutionRecordsResponse(records=messages[:count], next_page_token=token)

    async def SaveRunRecord(
        self, request: SaveRunRecordRequest, context: Context
    ) -> SaveRunRecordResponse:
        if not request.HasField("run"):
            raise InvalidArgumentError("run is required", field="run")
        run_id = check_required(request.run.run_id, "run.run_id")
        epoch = request.run.lease_epoch
        if await self._superseded({run_id: epoch}):
            raise LeaseLostError(run_id, epoch)
        await self._store.save_run(run_from_proto(request.run))
        return SaveRunRecordResponse()

    async def GetRunRecord(
        self, request: GetRunRecordRequest, context: Context
    ) -> GetRunRecordResponse:
        run_id = check_required(request.run_id, "run_id")
        run = await self._store.get_run(run_id)
        if run is None or not await self._guard.sees_run(run_id):
            raise NotFoundError(f"run {run_id!r} not found", kind="run", id=run_id)
        return GetRunRecordResponse(run=run_to_proto(run))

    async def ListRunRecords(
        self, request: ListRunRecordsRequest, context: Context
    ) -> ListRunRecordsResponse:
        size = page_size(request.page_size)
        status = None if request.status == 0 else run_status_from_proto(request.status)
        namespaces = _listed_namespaces(request.namespaces, self._guard.scope())
        scope = str(status or "") + "/" + ",".join(namespaces or ("*",))
        if request.page_token and request.after_run_id:
            raise InvalidArgumentError(
                "give page_token or after_run_id, not both", field="after_run_id"
            )
        after = request.after_run_id or None
        if request.page_token:
            after = str(decode_page_token(request.page_token, "runs", scope))
        listed = await self._store.list_runs(
            status=status, limit=size + 1, after=after, namespaces=namespaces
        )
        runs = [without_details(r) for r in listed] if request.without_details else listed
        messages = [run_to_proto(r) for r in runs[:size]]
        count = fit_to_budget(messages)  # a page stays under the message limit: docs/limits.md
        more = len(runs) > count
        token = encode_page_token("runs", scope, runs[count - 1].run_id) if more else ""
        return ListRunRecordsResponse(runs=messages[:count], next_page_token=token)

    # ------------------------------------------------------------------ run ledger

    def _ledger(self) -> RunLedger:
        if not isinstance(self._store, RunLedger):
            raise InvalidArgumentError(
                "this store service's execution store keeps no run ledger", field="store"
            )
        return self._store

    async def CreateRunRecord(
        self, request: CreateRunRecordRequest, context: Context
    ) -> CreateRunRecordResponse:
        if not request.HasField("run"):
            raise InvalidArgumentError("run is required", field="run")
        check_required(request.run.run_id, "run.run_id")
        created = await self._ledger().create_run(run_from_proto(request.run))
        return CreateRunRecordResponse(created=created)

    async def ClaimRunLease(
        self, request: ClaimRunLeaseRequest, context: Context
    ) -> ClaimRunLeaseResponse:
        run_id = check_required(request.run_id, "run_id")
        owner = check_required(request.owner, "owner")
        if request.epoch < 2:
            raise InvalidArgumentError(
                "epoch must be at least 2 (1 is the creator's)", field="epoch"
            )
        claimed = await self._ledger().claim_run(run_id, request.epoch, owner)
        return ClaimRunLeaseResponse(claimed=claimed)

    async def GetRunLeaseClaim(
        self, request: GetRunLeaseClaimRequest, context: Context
    ) -> GetRunLeaseClaimResponse:
        run_id = check_required(request.run_id, "run_id")
        claimed = await self._ledger().lease_claimed(run_id, request.epoch)
        return GetRunLeaseClaimResponse(claimed=claimed)

    async def AppendRunEvents(
        self, request: AppendRunEventsRequest, context: Context
    ) -> AppendRunEventsResponse:
        events = []
        for index, event in enumerate(request.events):
            check_required(event.run_id, f"events[{index}].run_id")
            if event.sequence < 1:
                raise InvalidArgumentError(
                    f"events[{index}].sequence must be at least 1", field="events"
                )
            try:
                data = json.loads(event.data_json)
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(
                    f"events[{index}].data_json is not JSON: {exc}", field="events"
                ) from None
            if not isinstance(data, dict):
                raise InvalidArgumentError(
                    f"events[{index}].data_json must be a JSON object", field="events"
                )
            # the validated text goes on as it came: the store need not encode `data` again
            events.append(
                RunEventRecord(event.run_id, event.sequence, event.epoch, data, event.data_json)
            )
        if not events:
            return AppendRunEventsResponse()
        ledger = self._ledger()
        leases: dict[str, int] = {}
        for e in events:  # a batch's events of one run share the writer's epoch
            leases[e.run_id] = max(leases.get(e.run_id, 0), e.epoch)
        superseded = await self._superseded(leases)
        if superseded:
            events = [e for e in events if e.run_id not in superseded]
        if events:
            await ledger.append_events(events)
        return AppendRunEventsResponse(superseded_run_ids=sorted(superseded))

    async def TruncateRunEvents(
        self, request: TruncateRunEventsRequest, context: Context
    ) -> TruncateRunEventsResponse:
        run_id = check_required(request.run_id, "run_id")
        if request.epoch < 2:
            raise InvalidArgumentError(
                "epoch must be at least 2 (only an adopter truncates)", field="epoch"
            )
        if request.after_sequence < 0:
            raise InvalidArgumentError(
                "after_sequence must not be negative", field="after_sequence"
            )
        ledger = self._ledger()
        if await self._superseded({run_id: request.epoch}):
            raise LeaseLostError(run_id, request.epoch)
        deleted = await ledger.truncate_events(run_id, request.after_sequence, request.epoch)
        return TruncateRunEventsResponse(deleted_count=deleted)

    async def ReadRunEvents(
        self, request: ReadRunEventsRequest, context: Context
    ) -> ReadRunEventsResponse:
        run_id = check_required(request.run_id, "run_id")
        if request.page_size < 0:
            raise InvalidArgumentError("page_size must not be negative", field="page_size")
        size = min(request.page_size or 1000, 1000)
        if not await self._guard.sees_run(run_id):
            return ReadRunEventsResponse()  # as for a run with no events
        events = await self._ledger().list_events(
            run_id, after=max(request.after_sequence, 0), limit=size
        )
        return ReadRunEventsResponse(
            events=[
                StoredRunEvent(
                    run_id=e.run_id,
                    sequence=e.sequence,
                    epoch=e.epoch,
                    data_json=json.dumps(e.data, ensure_ascii=False),
                )
                for e in events
            ]
        )

    async def RequestRunCancel(
        self, request: RequestRunCancelRequest, context: Context
    ) -> RequestRunCancelResponse:
        await self._ledger().request_cancel(check_required(request.run_id, "run_id"))
        return RequestRunCancelResponse()

    async def BatchGetRunCancelRequests(
        self, request: BatchGetRunCancelRequestsRequest, context: Context
    ) -> BatchGetRunCancelRequestsResponse:
        if len(request.run_ids) > 1000:
            raise InvalidArgumentError("at most 1000 run_ids per call", field="run_ids")
        found = await self._ledger().cancel_requests(list(request.run_ids))
        return BatchGetRunCancelRequestsResponse(run_ids=sorted(found))

    # ------------------------------------------------------------------ service registry

    def _registry(self) -> ServiceRegistry:
        if not isinstance(self._store, ServiceRegistry):
            raise InvalidArgumentError(
                "this store service's execution store keeps no service registry", field="store"
            )
        return self._store

    async def PutRegistryEntry(
        self, request: PutRegistryEntryRequest, context: Context
    ) -> PutRegistryEntryResponse:
        if not request.HasField("entry"):
            raise InvalidArgumentError("entry is required", field="entry")
        await self._registry().put_entry(registry_entry_from_proto(request.entry))
        return PutRegistryEntryResponse()

    async def DeleteRegistryEntry(
        self, request: DeleteRegistryEntryRequest, context: Context
    ) -> DeleteRegistryEntryResponse:
        kind = check_required(request.kind, "kind")
        await self._registry().delete_entry(kind, check_required(request.key, "key"))
        return DeleteRegistryEntryResponse()

    async def ListRegistryEntries(
        self, request: ListRegistryEntriesRequest, context: Context
    ) -> ListRegistryEntriesResponse:
        kind = check_required(request.kind, "kind")
        if request.page_size < 0:
            raise InvalidArgumentError("page_size must not be negative", field="page_size")
        size = min(request.page_size or 1000, 1000)
        if request.page_token and request.after_key:
            raise InvalidArgumentError("give page_token or after_key, not both", field="after_key")
        after = (
            decode_page_token(request.page_token, "registry", kind)
            if request.page_token
            else request.after_key
        )
        if not isinstance(after, str):
            raise InvalidArgumentError("page_token is not valid", field="page_token")
        entries = await self._registry().list_entries(kind, after=after, limit=size + 1)
        page = entries[:size]
        token = encode_page_token("registry", kind, page[-1].key) if len(entries) > size else ""
        return ListRegistryEntriesResponse(
            entries=[registry_entry_to_proto(e) for e in page], next_page_token=token
        )

    async def PruneRegistryEntries(
        self, request: PruneRegistryEntriesRequest, context: Context
    ) -> PruneRegistryEntriesResponse:
        kind = check_required(request.kind, "kind")
        if not request.HasField("expired_before"):
            raise InvalidArgumentError("expired_before is required", field="expired_before")
        removed = await self._registry().prune_entries(
            kind, datetime_from_proto(request.expired_before, "expired_before")
        )
        return PruneRegistryEntriesResponse(removed=removed)


def registry_entry_to_proto(entry: RegistryEntry) -> RegistryEntryMessage:
    """The wire form of a registry entry."""
    return RegistryEntryMessage(
        kind=entry.kind,
        key=entry.key,
        expire_time=datetime_to_proto(entry.expires_at, "expire_time"),
        data_json=json.dumps(entry.data, ensure_ascii=False),
    )


def registry_entry_from_proto(message: RegistryEntryMessage) -> RegistryEntry:
    """A registry entry from its wire form.

    Raises:
        InvalidArgumentError: no kind, key or expire_time, or data_json is not a JSON object.
    """
    kind = check_required(message.kind, "entry.kind")
    key = check_required(message.key, "entry.key")
    if not message.HasField("expire_time"):
        raise InvalidArgumentError("entry.expire_time is required", field="entry.expire_time")
    try:
        data = json.loads(message.data_json or "{}")
    except ValueError as exc:
        raise InvalidArgumentError(
            f"entry.data_json is not JSON: {exc}", field="entry.data_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidArgumentError("entry.data_json must be a JSON object", field="entry.data_json")
    return RegistryEntry(
        kind, key, datetime_from_proto(message.expire_time, "entry.expire_time"), data
    )


async def _within_quota(
    chunks: AsyncIterator[bytes], limit: int, namespace: str
) -> AsyncIterator[bytes]:
    """`chunks`, failing as soon as they exceed the artifact_bytes quota (the store then
    discards the upload: nothing is stored)."""
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise InvalidArgumentError(
                f"the artifact is over the artifact_bytes quota of {limit} bytes of namespace "
                f"{namespace!r}",
                field="chunk",
            )
        yield chunk


def _check_grant_for_upload(header: Any) -> None:
    """With an attempt's store grant, an upload is an output of that attempt: its run and
    task are the grant's (filled in when the header leaves them empty).

    Raises:
        PermissionDeniedError: the header names another run or task.
    """
    principal = current_principal()
    grant = principal.grant if principal is not None else None
    if grant is None:
        return
    if header.run_id in ("", grant.run_id) and header.node_id in ("", grant.node_id):
        header.run_id, header.node_id = grant.run_id, grant.node_id
        return
    raise PermissionDeniedError(
        f"the store grant of {grant.name} may store outputs of that attempt only, not of "
        f"run {header.run_id!r} task {header.node_id!r}"
    )


def _listed_namespaces(
    requested: Sequence[str], allowed: tuple[str, ...] | None
) -> tuple[str, ...] | None:
    """The namespaces a run listing covers: those requested (all when none), within those
    the caller may see (None: every namespace)."""
    for namespace in requested:
        check_namespace(namespace, where="namespaces:")
    if allowed is None:
        return tuple(requested) or None
    if not requested:
        return allowed
    return tuple(n for n in requested if n in allowed)


def _decode_outputs(outputs: Any) -> list[Artifact]:
    """One outcome's outputs as artifacts (each must carry its content inline).

    Raises:
        InvalidArgumentError: an output has no name or no inline content (the message says
            which).
    """
    artifacts = []
    for i, message in enumerate(outputs):
        check_artifact_fields(message.name, message.metadata, f"outputs[{i}].")
        if message.WhichOneof("body") != "content":
            raise InvalidArgumentError(
                f"outputs[{i}] ({message.name!r}) has no inline content: upload it "
                "with PutArtifact",
                field=f"outputs[{i}].content",
            )
        artifacts.append(artifact_from_proto(message))
    return artifacts


async def _chunks_of(requests: AsyncIterator[PutArtifactRequest]) -> AsyncIterator[bytes]:
    async for request in requests:
        if request.WhichOneof("part") != "chunk":
            raise InvalidArgumentError(
                "PutArtifact: only the first message may hold a header; nothing was stored",
                field="header",
            )
        yield request.chunk


def _bad_token() -> InvalidArgumentError:
    return InvalidArgumentError(
        "page_token is not a token this server issued; pass back next_page_token unchanged",
        field="page_token",
    )


def _record_key_of(token: str, run_id: str) -> RecordKey:
    """The (started_at, node_id, attempt) after which a ListExecutionRecords page starts."""
    position = decode_page_token(token, "records", run_id)
    if (
        not isinstance(position, list)
        or len(position) != 3
        or not all(isinstance(p, t) for p, t in zip(position, (int, str, int), strict=True))
        or any(isinstance(p, bool) for p in position)
    ):
        raise _bad_token()
    try:
        started = from_micros(position[0])
    except OverflowError:
        raise _bad_token() from None
    return (started, position[1], position[2])


T = TypeVar("T")


def _after(items: list[T], after: str | None, key: Callable[[T], str]) -> list[T]:
    """`items` after the one whose key is `after` (all of them for None)."""
    if after is None:
        return items
    for i, item in enumerate(items):
        if key(item) == after:
            return items[i + 1 :]
    raise _bad_token()


def store_services(artifacts: ArtifactStore, executions: ExecutionStore) -> list[Service]:
    """The store service's two gRPC services over the given backends.

    Args:
        artifacts: the artifact store backend.
        executions: the execution store backend.

    Returns:
        Services for `dagwire.rpc.serve.create_server`/`start_server`/`run_server`.
    """
    names = store_service_pb2.DESCRIPTOR.services_by_name
    guard = NamespaceGuard(executions)
    return [
        Service(
            names["ArtifactStoreService"].full_name,
            partial(
                store_service_pb2_grpc.add_ArtifactStoreServiceServicer_to_server,
                ArtifactStoreServicer(artifacts, guard),
            ),
        ),
        Service(
            names["ExecutionStoreService"].full_name,
            partial(
                store_service_pb2_grpc.add_ExecutionStoreServiceServicer_to_server,
                ExecutionStoreServicer(executions, artifacts, guard),
            ),
        ),
    ]


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned task's result as seen (its caller failed first and reports that)."""
    if not task.cancelled():
        task.exception()
