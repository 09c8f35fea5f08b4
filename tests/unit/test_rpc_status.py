"""The status table, both ways: exception -> gRPC status + ErrorInfo -> the same exception."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2, status_pb2

from dagwire.errors import (
    AdapterNotFoundError,
    AttemptTimeoutError,
    DagwireError,
    LeaseLostError,
    NoHealthyAdapterError,
    NonRetryableError,
    NotFoundError,
    ResourceExhaustedError,
    RunAlreadyFinishedError,
    StoreUnavailableError,
    WorkflowValidationError,
)
from dagwire.rpc.status import (
    InvalidArgumentError,
    RemoteError,
    error_from_rpc,
    status_from_error,
)


def _as_rpc_error(status: grpc.Status) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )


def _round_trip(exc: BaseException, **options: object) -> DagwireError:
    status = status_from_error(exc, operation="Op", trace_id="trace-1")
    return error_from_rpc(_as_rpc_error(status), **options)  # type: ignore[arg-type]


def _error_info(status: grpc.Status) -> error_details_pb2.ErrorInfo:
    [(_, raw)] = [m for m in status.trailing_metadata if m[0] == "grpc-status-details-bin"]
    info = error_details_pb2.ErrorInfo()
    status_pb2.Status.FromString(raw).details[0].Unpack(info)
    return info


TABLE = [
    (
        WorkflowValidationError("bad", node_id="a", field="tasks[0].agent", line=3),
        grpc.StatusCode.INVALID_ARGUMENT,
        "SPEC_INVALID",
    ),
    (
        NotFoundError("run 'r' not found", kind="run", id="r"),
        grpc.StatusCode.NOT_FOUND,
        "RUN_NOT_FOUND",
    ),
    (
        NotFoundError("artifact 'x' not found", kind="artifact", id="x"),
        grpc.StatusCode.NOT_FOUND,
        "ARTIFACT_NOT_FOUND",
    ),
    (AdapterNotFoundError("echo"), grpc.StatusCode.NOT_FOUND, "AGENT_NOT_REGISTERED"),
    (NoHealthyAdapterError("echo"), grpc.StatusCode.UNAVAILABLE, "NO_HEALTHY_ADAPTER"),
    (
        RunAlreadyFinishedError("r", "succeeded"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "RUN_ALREADY_FINISHED",
    ),
    (LeaseLostError("r", 3), grpc.StatusCode.ABORTED, "LEASE_SUPERSEDED"),
    (
        StoreUnavailableError("MongoDB at h:1 is down"),
        grpc.StatusCode.UNAVAILABLE,
        "STORE_UNAVAILABLE",
    ),
    (
        ValueError("page_size must be positive"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    ),
    (NonRetryableError("no retry"), grpc.StatusCode.FAILED_PRECONDITION, "NON_RETRYABLE"),
    (
        ResourceExhaustedError("busy", retry_after=1.5),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RESOURCE_EXHAUSTED",
    ),
    (AttemptTimeoutError("a", 2, 0.3), grpc.StatusCode.DEADLINE_EXCEEDED, "ATTEMPT_TIMEOUT"),
    (RuntimeError("boom"), grpc.StatusCode.INTERNAL, "INTERNAL"),
]


@pytest.mark.parametrize(("exc", "code", "reason"), TABLE, ids=lambda v: getattr(v, "name", ""))
def test_status_from_error_applies_the_table_with_dagwire_error_info(
    exc: BaseException, code: grpc.StatusCode, reason: str
) -> None:
    status = status_from_error(exc, operation="GetRun", trace_id="trace-1")
    info = _error_info(status)
    assert (status.code, info.reason, info.domain) == (code, reason, "dagwire")
    assert info.metadata["trace_id"] == "trace-1"


def test_internal_error_message_names_the_operation_and_trace_id_not_the_exception() -> None:
    status = status_from_error(
        RuntimeError("secret detail"), operation="PutArtifact", trace_id="t9"
    )
    assert status.details == (
        "internal error in PutArtifact (trace id t9); the server log has the details"
    )
    assert "secret detail" not in status.details


def test_workflow_validation_error_comes_back_with_its_fields() -> None:
    back = _round_trip(WorkflowValidationError("bad agent", node_id="a", field="agent", line=7))
    assert isinstance(back, WorkflowValidationError)
    assert (str(back), back.node_id, back.field, back.line) == ("bad agent", "a", "agent", 7)


def test_not_found_comes_back_with_kind_and_id() -> None:
    back = _round_trip(NotFoundError("artifact 'x' not found", kind="artifact", id="x"))
    assert isinstance(back, NotFoundError) and isinstance(back, LookupError)
    assert (str(back), back.kind, back.id) == ("artifact 'x' not found", "artifact", "x")


def test_adapter_not_found_comes_back_with_the_agent_key() -> None:
    back = _round_trip(AdapterNotFoundError("upper"))
    assert isinstance(back, AdapterNotFoundError)
    assert (back.agent_key, str(back)) == (
        "upper",
        "no adapter is registered for agent key 'upper'",
    )


def test_run_already_finished_comes_back_with_run_id_and_status() -> None:
    back = _round_trip(RunAlreadyFinishedError("r1", "failed"))
    assert isinstance(back, RunAlreadyFinishedError)
    assert (back.run_id, back.status) == ("r1", "failed")


def test_lease_lost_comes_back_with_run_id_and_epoch() -> None:
    back = _round_trip(LeaseLostError("r1", 4))
    assert isinstance(back, LeaseLostError)
    assert (back.run_id, back.epoch) == ("r1", 4)
    assert "superseded" in str(back)


def test_resource_exhausted_comes_back_with_retry_after_from_retry_info() -> None:
    back = _round_trip(ResourceExhaustedError("adapter full", retry_after=2.25))
    assert isinstance(back, ResourceExhaustedError)
    assert (str(back), back.retry_after) == ("adapter full", 2.25)


def test_attempt_timeout_comes_back_with_node_attempt_and_timeout() -> None:
    back = _round_trip(AttemptTimeoutError("n", 3, 0.5))
    assert isinstance(back, AttemptTimeoutError)
    assert (back.node_id, back.attempt, back.timeout) == ("n", 3, 0.5)


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (StoreUnavailableError("down"), StoreUnavailableError),
        (NonRetryableError("nope"), NonRetryableError),
        (ValueError("bad"), InvalidArgumentError),
    ],
)
def test_other_mapped_errors_come_back_as_their_class(
    exc: BaseException, cls: type[DagwireError]
) -> None:
    back = _round_trip(exc)
    assert type(back) is cls
    assert str(back) == str(exc)


def test_invalid_argument_comes_back_as_a_value_error_with_its_field() -> None:
    back = _round_trip(InvalidArgumentError("page_size must be 0", field="page_size"))
    assert isinstance(back, ValueError) and isinstance(back, InvalidArgumentError)
    assert back.field == "page_size"


def test_internal_comes_back_as_remote_error_with_code_and_trace_id() -> None:
    back = _round_trip(KeyError("x"))
    assert isinstance(back, RemoteError)
    assert (back.code, back.reason, back.metadata["trace_id"]) == (
        grpc.StatusCode.INTERNAL,
        "INTERNAL",
        "trace-1",
    )
    assert not back.retryable


def test_plain_unavailable_becomes_the_callers_class_naming_the_target() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="failed to connect to all addresses",
    )
    back = error_from_rpc(error, unavailable=StoreUnavailableError, target="store at h:1")
    assert isinstance(back, StoreUnavailableError)
    assert str(back) == "store at h:1 is unavailable: failed to connect to all addresses"
    plain = error_from_rpc(error)
    assert isinstance(plain, RemoteError) and plain.retryable


def test_plain_resource_exhausted_from_grpc_itself_has_no_retry_after() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Received message larger than max (5 vs. 4)",
    )
    back = error_from_rpc(error)
    assert isinstance(back, ResourceExhaustedError) and back.retry_after is None


def test_remote_error_passes_through_a_server_unchanged() -> None:
    original = RemoteError("peer said no", code=grpc.StatusCode.ABORTED, reason="CONFLICT")
    back = _round_trip(original)
    assert isinstance(back, RemoteError)
    assert (back.code, back.reason, str(back)) == (
        grpc.StatusCode.ABORTED,
        "CONFLICT",
        "peer said no",
    )


def test_no_healthy_adapter_comes_back_as_the_same_class_with_its_agent_key() -> None:
    back = _round_trip(NoHealthyAdapterError("echo", "no healthy adapter for agent key 'echo'"))
    assert isinstance(back, NoHealthyAdapterError)
    assert back.agent_key == "echo"
    assert str(back) == "no healthy adapter for agent key 'echo'"
