"""Fuzzing every RPC of every running service with messages generated from the descriptors.

One stack (store, dispatcher, toolbox, orchestrator) runs with an auth file, as in
test_auth.py. For each method of each service (the dagwire services, the toolbox's
AgentAdapterService and the health service), hypothesis builds request messages from the
method's descriptor: random values of each field's type (huge, unicode and NUL strings,
extreme and negative numbers, unknown enum numbers, nested messages, many repeated items,
maps) or the field left out, and sends each with no token and with a client's, an adapter's
and an admin's token (docs/security.md, "Fuzzing"). Properties:

- no status is UNKNOWN or INTERNAL (but for a status an adapter sent that the dispatcher
  passed on, known by its ErrorInfo naming the adapter's ``Execute``);
- an INVALID_ARGUMENT names its field (ErrorInfo ``field``, or the field in the message);
- when every call of an example was rejected, nothing stored changed (runs, adapters,
  artifacts and records of a known run, registry entries);
- afterwards every server answers SERVING and its process is alive.

`make test` runs a small derandomized sample; `make fuzz` runs ``DAGWIRE_FUZZ_EXAMPLES``
examples per method with a random seed, printed on failure (replay: `make fuzz SEED=N`).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pbd
from google.protobuf import message as pbm
from google.protobuf import message_factory, text_format, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from dagwire.auth import add_principal
from dagwire.v1 import (
    adapter_service_pb2,
    dispatcher_service_pb2,
    orchestrator_service_pb2,
    store_service_pb2,
)
from tests.stack import HELLO, Proc, free_address, orchestrator_proc, start_all, toolbox_proc

_LONG = "DAGWIRE_FUZZ_EXAMPLES" in os.environ
_EXAMPLES = int(os.environ.get("DAGWIRE_FUZZ_EXAMPLES", "8"))
_SEED = int(os.environ.get("DAGWIRE_FUZZ_SEED") or (random.randrange(2**32) if _LONG else 0))
_DEADLINE = 5.0
_WAIT_DEADLINE = 1.0  # for the calls that may wait by design (below): a watch, a sleeping agent
_LAPSE = 3.0  # an example takes far less; adapter leases last 10 s (see _snapshot)
_TOKENS = (None, "client", "adapter", "admin")

# Statuses a server may answer with to an unauthenticated, forbidden or invalid call; a
# DEADLINE_EXCEEDED is the client's own deadline on a call that legitimately waits (an agent
# that sleeps, a watch), never a server bug.
_BUG_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
_WAITING = {"Dispatch", "Execute", "RunWorkflow", "WatchRun", "Watch", "GetArtifact"}


@dataclass
class FuzzStack:
    tokens: dict[str, str]
    procs: dict[str, Proc]
    run_id: str
    artifact_ids: list[str]


def _bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    tmp = tmp_path_factory.mktemp("fuzz-stack")
    auth_file = tmp / "auth.yaml"
    tokens = {
        "client": add_principal(auth_file, name="ci", roles=["client"]),
        "adapter": add_principal(auth_file, name="rogue", roles=["adapter"], agents=["echo"]),
        "admin": add_principal(auth_file, name="ops", roles=["admin"]),
        "orchestrator": add_principal(auth_file, name="orchestrator", roles=["service"]),
        "dispatcher": add_principal(auth_file, name="dispatcher", roles=["service"]),
        "toolbox": add_principal(auth_file, name="toolbox", roles=["adapter"], agents=["*"]),
    }
    grant_key = tmp / "grant.key"
    grant_key.write_bytes(os.urandom(48).hex().encode())
    base = {"DAGWIRE_AUTH_FILE": str(auth_file)}
    granting = base | {"DAGWIRE_GRANT_KEY_FILE": str(grant_key)}
    store_addr, dispatcher_addr = free_address(), free_address()
    store = Proc(
        "store",
        ["dagwire_services.store", "--listen-addr", store_addr, "--data-dir", str(tmp / "d")],
        store_addr,
        tmp / "store.log",
        env=granting,
    )
    dispatcher = Proc(
        "dispatcher",
        ["dagwire_services.dispatcher", "--listen-addr", dispatcher_addr],
        dispatcher_addr,
        tmp / "dispatcher.log",
        env=granting | {"DAGWIRE_TOKEN": tokens["dispatcher"]},
    )
    toolbox = toolbox_proc(tmp, dispatcher_addr, store_addr)
    toolbox.env = base | {"DAGWIRE_TOKEN": tokens["toolbox"]}
    orchestrator = orchestrator_proc(tmp, store_addr, dispatcher_addr)
    orchestrator.env = base | {"DAGWIRE_TOKEN": tokens["orchestrator"]}
    procs = {"store": store, "dispatcher": dispatcher, "toolbox": toolbox}

    async def start() -> None:
        await start_all(store, dispatcher, toolbox)
        await start_all(orchestrator)

    try:
        asyncio.run(start())
        procs["orchestrator"] = orchestrator
        run_id = _known_run(orchestrator.address, tokens["client"])
        yield FuzzStack(tokens, procs, run_id, _artifact_ids(store_addr, run_id, tokens["admin"]))
    finally:
        for proc in reversed([store, dispatcher, toolbox, orchestrator]):
            proc.stop()


def _known_run(address: str, token: str) -> str:
    """Run HELLO to its end (retrying while the toolbox registers): records and artifacts."""
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(address) as chan:
        call = chan.unary_unary(
            "/dagwire.v1.OrchestratorService/RunWorkflow",
            request_serializer=orchestrator_service_pb2.RunWorkflowRequest.SerializeToString,
            response_deserializer=orchestrator_service_pb2.RunWorkflowResponse.FromString,
        )
        while True:
            try:
                reply = call(
                    orchestrator_service_pb2.RunWorkflowRequest(spec=HELLO),
                    metadata=_bearer(token),
                    timeout=30,
                )
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            if reply.run.status == 2 or time.monotonic() > deadline:  # RUN_STATUS_SUCCEEDED
                return str(reply.run.run_id)
            time.sleep(0.2)


def _artifact_ids(address: str, run_id: str, token: str) -> list[str]:
    """The known run's artifacts: ids the fuzzer mixes in, so calls reach past lookups."""
    with grpc.insecure_channel(address) as chan:
        reply = chan.unary_unary(
            "/dagwire.v1.ArtifactStoreService/ListArtifacts",
            request_serializer=store_service_pb2.ListArtifactsRequest.SerializeToString,
            response_deserializer=store_service_pb2.ListArtifactsResponse.FromString,
        )(store_service_pb2.ListArtifactsRequest(run_id=run_id), metadata=_bearer(token), timeout=5)
    ids = [a.artifact_id for a in reply.artifacts]
    assert ids, "the known run stored no artifacts"
    return ids


# ------------------------------------------------------------------------ the methods fuzzed

_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
_SERVICES: dict[str, list[pbd.ServiceDescriptor]] = {
    "store": [
        store_service_pb2.DESCRIPTOR.services_by_name["ArtifactStoreService"],
        store_service_pb2.DESCRIPTOR.services_by_name["ExecutionStoreService"],
        _HEALTH,
    ],
    "dispatcher": [
        dispatcher_service_pb2.DESCRIPTOR.services_by_name["DispatcherService"],
        _HEALTH,
    ],
    "toolbox": [adapter_service_pb2.DESCRIPTOR.services_by_name["AgentAdapterService"], _HEALTH],
    "orchestrator": [
        orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"],
        _HEALTH,
    ],
}
_METHODS = [
    (server, method)
    for server, services in _SERVICES.items()
    for service in services
    for method in service.methods
]


def _cls(desc: pbd.Descriptor) -> type[pbm.Message]:
    return message_factory.GetMessageClass(desc)


# ------------------------------------------------------------------- values from descriptors

_INT_BOUNDS = {
    pbd.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    pbd.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    pbd.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    pbd.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    pbd.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    pbd.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    pbd.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    pbd.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    pbd.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    pbd.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_REGISTRY_KINDS = ["adapter_instance", "orchestrator", "fuzz"]
_FAMILIAR = [
    *_REGISTRY_KINDS,
    "echo",
    "upper",
    "sleep",
    "fail",
    "blob",
    "default",
    "team-b",
    "greet",
    "run",
    "127.0.0.1:1",
]


def _strings(known: list[str], big: bool) -> st.SearchStrategy[str]:
    small = st.one_of(
        st.text(max_size=20),
        st.sampled_from(["", "\x00", "a\x00b", "\u202e", "日本", "\U0001f600", "../../etc", "*"]),
        st.sampled_from(known + _FAMILIAR),
    )
    if not big:
        return small
    return st.one_of(
        small,
        st.integers(1, 3).map(lambda n: "x" * (70_000 * n)),  # over every name and id limit
        st.just("é" * 600_000),  # oversized: over a MiB of UTF-8
    )


def _scalar(field: pbd.FieldDescriptor, known: list[str], big: bool) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_BOUNDS:
        low, high = _INT_BOUNDS[kind]
        return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, 1, -1 % high]))
    if kind in (pbd.FieldDescriptor.TYPE_DOUBLE, pbd.FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if kind == pbd.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == pbd.FieldDescriptor.TYPE_STRING:
        return _strings(known, big)
    if kind == pbd.FieldDescriptor.TYPE_BYTES:
        small = st.one_of(st.binary(max_size=64), st.sampled_from([s.encode() for s in known]))
        return st.one_of(small, st.just(b"\x00" * (2 << 20))) if big else small
    if kind == pbd.FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-5, 1000))  # unknown numbers too
    raise AssertionError(f"no strategy for field type {kind}")


def _is_map(field: pbd.FieldDescriptor) -> bool:
    return bool(field.message_type is not None and field.message_type.GetOptions().map_entry)


def _fill(
    draw: st.DrawFn, message: pbm.Message, depth: int, known: list[str], *, missing: float
) -> None:
    """Set random values on `message`'s fields (each left out with probability `missing`).

    Oversized values and many items only at the top level (`depth` 3), so a message stays
    within a few MiB.
    """
    big = depth >= 3
    for field in message.DESCRIPTOR.fields:
        if draw(st.floats(0, 1)) < missing:
            continue
        many = field.is_repeated
        if _is_map(field):
            key_f = field.message_type.fields_by_name["key"]
            val_f = field.message_type.fields_by_name["value"]
            target = getattr(message, field.name)
            for _ in range(draw(st.sampled_from([0, 1, 2, 3, 300] if big else [0, 1, 2]))):
                key = draw(_scalar(key_f, known, False))
                if val_f.message_type is not None:
                    if depth > 0:
                        _fill(draw, target[key], depth - 1, known, missing=0.5)
                else:
                    target[key] = draw(_scalar(val_f, known, False))
            continue
        if field.message_type is not None:
            if depth <= 0:
                continue
            count = draw(st.sampled_from([1, 2, 3, 200] if big else [1, 2])) if many else 1
            for _ in range(count if many else 1):
                sub = getattr(message, field.name).add() if many else getattr(message, field.name)
                _fill(draw, sub, depth - 1, known, missing=0.4)
                if not many:
                    sub.SetInParent()
            continue
        if many:
            items = draw(st.lists(_scalar(field, known, False), max_size=4))
            if big and draw(st.integers(0, 9)) == 0 and items:
                items = items * 500  # many items
            getattr(message, field.name).extend(items)
        else:
            setattr(message, field.name, draw(_scalar(field, known, big)))


class Shown:
    """A drawn message, shown cut short in hypothesis's report (huge strings included)."""

    def __init__(self, message: pbm.Message) -> None:
        self.message = message

    def __repr__(self) -> str:
        text = text_format.MessageToString(self.message, as_one_line=True)
        return text if len(text) <= 1500 else text[:1500] + f"... ({len(text)} chars)"


@st.composite
def requests(draw: st.DrawFn, desc: pbd.Descriptor, known: list[str]) -> Shown:
    """A request message of type `desc`: random fields, some missing, some nested."""
    message = _cls(desc)()
    _fill(draw, message, 3, known, missing=draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])))
    return Shown(message)


# --------------------------------------------------------------------------------- checking


def _error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
    return None


def _field_names(desc: pbd.Descriptor, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    if desc.full_name in seen:
        return set()
    seen.add(desc.full_name)
    names = set()
    for field in desc.fields:
        names.add(field.name)
        if field.message_type is not None:
            names |= _field_names(field.message_type, seen)
    return names


def _check_status(method: pbd.MethodDescriptor, err: grpc.RpcError, replay: str) -> None:
    code = err.code()  # type: ignore[attr-defined]
    details = err.details() or ""  # type: ignore[attr-defined]
    info = _error_info(err)
    where = f"{method.full_name}: {code.name}: {details[:300]!r} ({replay})"
    if code in _BUG_CODES:
        passed_on = (
            method.name == "Dispatch"
            and info is not None
            and info.metadata.get("operation") == "Execute"
        )
        assert passed_on, f"server bug: {where}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        assert method.name in _WAITING, f"a call that should not wait hung: {where}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        named = info is not None and bool(info.metadata.get("field") or info.metadata.get("line"))
        mentioned = any(name in details for name in _field_names(method.input_type))
        assert named or mentioned, f"an INVALID_ARGUMENT names no field: {where}"


def _unary(chan: grpc.Channel, method: pbd.MethodDescriptor) -> Any:
    path = f"/{method.containing_service.full_name}/{method.name}"
    req = _cls(method.input_type).SerializeToString
    resp = _cls(method.output_type).FromString
    if method.client_streaming:
        return chan.stream_unary(path, request_serializer=req, response_deserializer=resp)
    if method.server_streaming:
        return chan.unary_stream(path, request_serializer=req, response_deserializer=resp)
    return chan.unary_unary(path, request_serializer=req, response_deserializer=resp)


def _call(
    chan: grpc.Channel, method: pbd.MethodDescriptor, messages: list[pbm.Message], token: str | None
) -> grpc.RpcError | None:
    """One call with a deadline; streams read at most three responses. None when it succeeded."""
    stub = _unary(chan, method)
    meta = _bearer(token)
    deadline = _WAIT_DEADLINE if method.name in _WAITING else _DEADLINE
    try:
        if method.client_streaming:
            stub(iter(messages), metadata=meta, timeout=deadline)
        elif method.server_streaming:
            stream = stub(messages[0], metadata=meta, timeout=deadline)
            try:
                for _ in stream:
                    break  # the first response is enough (a health watch sends no second)
            finally:
                stream.cancel()
        else:
            stub(messages[0], metadata=meta, timeout=deadline)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
            return None  # our own cancel after the responses read
        return err
    return None


def _snapshot(chans: dict[str, grpc.Channel], stack: FuzzStack, cutoff: float) -> dict[str, Any]:
    """What is stored, as an admin sees it (heartbeat times and health left out).

    Adapters whose lease ends before `cutoff` (a wall-clock time) are left out: one that an
    earlier, accepted call registered may lapse between two snapshots.
    """
    admin = _bearer(stack.tokens["admin"])

    def ask(server: str, service: str, method: str, request: pbm.Message) -> Any:
        for svc in _SERVICES[server]:
            if svc.name == service:
                return _unary(chans[server], svc.methods_by_name[method])(
                    request, metadata=admin, timeout=_DEADLINE
                )
        raise AssertionError(service)

    runs = ask(
        "orchestrator",
        "OrchestratorService",
        "ListRuns",
        orchestrator_service_pb2.ListRunsRequest(page_size=1000, all_namespaces=True),
    )
    store_runs = ask(
        "store",
        "ExecutionStoreService",
        "ListRunRecords",
        store_service_pb2.ListRunRecordsRequest(page_size=1000, without_details=True),
    )
    adapters = ask(
        "dispatcher",
        "DispatcherService",
        "ListAdapters",
        dispatcher_service_pb2.ListAdaptersRequest(),
    )
    artifacts = ask(
        "store",
        "ArtifactStoreService",
        "ListArtifacts",
        store_service_pb2.ListArtifactsRequest(run_id=stack.run_id, page_size=1000),
    )
    records = ask(
        "store",
        "ExecutionStoreService",
        "ListExecutionRecords",
        store_service_pb2.ListExecutionRecordsRequest(run_id=stack.run_id, page_size=1000),
    )
    registry = [
        entry.SerializeToString(deterministic=True)
        for kind in _REGISTRY_KINDS
        for entry in ask(
            "store",
            "ExecutionStoreService",
            "ListRegistryEntries",
            store_service_pb2.ListRegistryEntriesRequest(kind=kind, page_size=1000),
        ).entries
    ]
    return {
        "runs": sorted((r.run_id, r.status, r.namespace) for r in runs.runs),
        "store_runs": sorted(r.SerializeToString(deterministic=True) for r in store_runs.runs),
        "adapters": sorted(
            (a.instance_id, a.address, tuple(a.agents))
            for a in adapters.adapters
            if a.lease_expire_time.ToNanoseconds() / 1e9 > cutoff
        ),
        "artifacts": sorted(a.SerializeToString(deterministic=True) for a in artifacts.artifacts),
        "records": sorted(r.SerializeToString(deterministic=True) for r in records.records),
        "registry": sorted(registry),
    }


@pytest.fixture(scope="module")
def channels(stack: FuzzStack) -> Iterator[dict[str, grpc.Channel]]:
    chans = {
        name: grpc.insecure_channel(
            proc.address,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        for name, proc in stack.procs.items()
    }
    yield chans
    for chan in chans.values():
        chan.close()


_FUZZ = settings(
    max_examples=_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


@pytest.mark.parametrize(
    ("server", "method"),
    _METHODS,
    ids=[f"{s}-{m.containing_service.name}.{m.name}" for s, m in _METHODS],
)
def test_rpc_fuzz(
    stack: FuzzStack, channels: dict[str, grpc.Channel], server: str, method: pbd.MethodDescriptor
) -> None:
    known = [stack.run_id, "greet", "shout", "both", *stack.artifact_ids]
    replay = f"seed {_SEED}: replay with make fuzz SEED={_SEED} (and the same EXAMPLES)"
    count = st.integers(1, 4) if method.client_streaming else st.just(1)

    @seed(_SEED)
    @_FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        note(replay)
        n = data.draw(count)
        messages = [data.draw(requests(method.input_type, known)).message for _ in range(n)]
        cutoff = time.time() + _LAPSE
        before = _snapshot(channels, stack, cutoff)
        rejected = 0
        for role in _TOKENS:
            token = stack.tokens[role] if role else None
            err = _call(channels[server], method, messages, token)
            if err is not None:
                _check_status(method, err, f"{replay}; token {role}")
                rejected += 1
        if rejected == len(_TOKENS) and method.name not in _WAITING:
            after = _snapshot(channels, stack, cutoff)
            assert after == before, (
                f"{method.full_name}: a rejected call changed the store ({replay})"
            )

    fuzz()
    for name, proc in stack.procs.items():
        assert proc.popen is not None and proc.popen.poll() is None, (
            f"{name} died during {method.full_name} ({replay}):\n{proc.log_tail()}"
        )
    for name, chan in channels.items():
        health = _unary(chan, _HEALTH.methods_by_name["Check"])
        reply = health(health_pb2.HealthCheckRequest(), timeout=_DEADLINE)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, (
            f"{name} not SERVING after {method.full_name} ({replay})"
        )


# ------------------------------------------------------------- regressions the fuzzer found


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    [
        (
            "PutRegistryEntry",
            store_service_pb2.PutRegistryEntryRequest(
                entry=store_service_pb2.RegistryEntry(
                    kind="fuzz", key="k", expire_time=timestamp_pb2.Timestamp(seconds=-62135596801)
                )
            ),
            "entry.expire_time",
        ),
        (
            "PruneRegistryEntries",
            store_service_pb2.PruneRegistryEntriesRequest(
                kind="fuzz", expired_before=timestamp_pb2.Timestamp(seconds=2**62)
            ),
            "expired_before",
        ),
    ],
)
def test_an_out_of_range_timestamp_is_rejected_naming_its_field(
    stack: FuzzStack,
    channels: dict[str, grpc.Channel],
    method: str,
    request_message: pbm.Message,
    field: str,
) -> None:
    # before the fix: INTERNAL ("internal error in PutRegistryEntry"), an OverflowError
    service = store_service_pb2.DESCRIPTOR.services_by_name["ExecutionStoreService"]
    cutoff = time.time() + _LAPSE
    before = _snapshot(channels, stack, cutoff)
    err = _call(
        channels["store"], service.methods_by_name[method], [request_message], stack.tokens["admin"]
    )
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    info = _error_info(err)
    assert info is not None and info.metadata["field"] == field
    assert f"{field} is out of range" in (err.details() or "")
    assert _snapshot(channels, stack, cutoff) == before


@pytest.mark.parametrize(
    ("seconds", "says"),
    [(-(2**62), "timeout must be positive"), (2**40, "timeout must be at most")],
    ids=["negative-beyond-timedelta", "past-year-9999"],
)
def test_a_dispatch_timeout_out_of_range_is_rejected_naming_it(
    stack: FuzzStack, channels: dict[str, grpc.Channel], seconds: int, says: str
) -> None:
    # before the fix: INTERNAL (an OverflowError converting the Duration, or its deadline)
    service = dispatcher_service_pb2.DESCRIPTOR.services_by_name["DispatcherService"]
    request = dispatcher_service_pb2.DispatchRequest(
        agent="echo", run_id=stack.run_id, node_id="greet", attempt=1
    )
    request.timeout.seconds = seconds
    err = _call(
        channels["dispatcher"],
        service.methods_by_name["Dispatch"],
        [request],
        stack.tokens["admin"],
    )
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    info = _error_info(err)
    assert info is not None and info.metadata["field"] == "timeout"
    assert says in (err.details() or "")


@pytest.mark.parametrize(
    ("method", "request_message"),
    [
        (
            "RecordExecutions",
            store_service_pb2.RecordExecutionsRequest(lease_epochs={"r-max": 2**63 - 1}),
        ),
        (
            "RecordOutcomes",
            store_service_pb2.RecordOutcomesRequest(lease_epochs={"r-max": 2**63 - 1}),
        ),
    ],
)
def test_the_last_lease_epoch_is_never_superseded(
    stack: FuzzStack, channels: dict[str, grpc.Channel], method: str, request_message: pbm.Message
) -> None:
    # before the fix: INTERNAL ("Python int too large to convert to SQLite INTEGER"): the
    # store looked up the claim of epoch + 1
    service = store_service_pb2.DESCRIPTOR.services_by_name["ExecutionStoreService"]
    stub = _unary(channels["store"], service.methods_by_name[method])
    reply = stub(request_message, metadata=_bearer(stack.tokens["admin"]), timeout=_DEADLINE)
    assert list(reply.superseded_run_ids) == []


@pytest.mark.parametrize("timeout", ["1e300", "1e12"])
def test_a_task_timeout_past_the_limit_is_a_spec_error(
    stack: FuzzStack, channels: dict[str, grpc.Channel], timeout: str
) -> None:
    # before the fix: the spec was accepted and the task failed at dispatch (an OverflowError
    # converting 1e300 s to a Duration, or the dispatcher refusing the timeout)
    service = orchestrator_service_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]
    spec = f"name: t\ntasks:\n  - {{id: a, agent: echo, timeout: {timeout}}}\n"
    before = _snapshot(channels, stack, time.time() + _LAPSE)
    err = _call(
        channels["orchestrator"],
        service.methods_by_name["StartRun"],
        [orchestrator_service_pb2.StartRunRequest(spec=spec)],
        stack.tokens["client"],
    )
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    info = _error_info(err)
    assert info is not None and info.metadata["field"] == "timeout", info
    assert "task 'a': field 'timeout'" in (err.details() or "")
    assert _snapshot(channels, stack, time.time() + _LAPSE)["runs"] == before["runs"]
