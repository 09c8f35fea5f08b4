"""Proto <-> model conversion: the only place outside the services that touches `*_pb2`.

Timestamps convert microsecond-exact to timezone-aware UTC `datetime`s (an unset timestamp
is None); empty proto strings mean "none" for optional text.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import timestamp_pb2

from dagwire.models import (
    DEFAULT_MEDIA_TYPE,
    Artifact,
    ExecutionRecord,
    NodeSummary,
    RunRecord,
    RunStatus,
    TaskStatus,
)
from dagwire.v1 import common_pb2

__all__ = [
    "artifact_from_proto",
    "artifact_to_proto",
    "datetime_from_proto",
    "datetime_to_proto",
    "execution_record_from_proto",
    "execution_record_to_proto",
    "node_summary_from_proto",
    "node_summary_to_proto",
    "run_from_proto",
    "run_status_from_proto",
    "run_status_to_proto",
    "run_to_proto",
    "task_status_from_proto",
    "task_status_to_proto",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_RUN_STATUS_TO_PROTO: dict[RunStatus, common_pb2.RunStatus.ValueType] = {
    RunStatus.RUNNING: common_pb2.RUN_STATUS_RUNNING,
    RunStatus.SUCCEEDED: common_pb2.RUN_STATUS_SUCCEEDED,
    RunStatus.FAILED: common_pb2.RUN_STATUS_FAILED,
    RunStatus.CANCELLED: common_pb2.RUN_STATUS_CANCELLED,
}
_RUN_STATUS_FROM_PROTO = {v: k for k, v in _RUN_STATUS_TO_PROTO.items()}

_TASK_STATUS_TO_PROTO: dict[TaskStatus, common_pb2.TaskStatus.ValueType] = {
    TaskStatus.PENDING: common_pb2.TASK_STATUS_PENDING,
    TaskStatus.RUNNING: common_pb2.TASK_STATUS_RUNNING,
    TaskStatus.SUCCEEDED: common_pb2.TASK_STATUS_SUCCEEDED,
    TaskStatus.FAILED: common_pb2.TASK_STATUS_FAILED,
    TaskStatus.SKIPPED: common_pb2.TASK_STATUS_SKIPPED,
    TaskStatus.CANCELLED: common_pb2.TASK_STATUS_CANCELLED,
}
_TASK_STATUS_FROM_PROTO = {v: k for k, v in _TASK_STATUS_TO_PROTO.items()}


# ---------------------------------------------------------------------- scalars


def datetime_to_proto(value: datetime, field: str = "timestamp") -> timestamp_pb2.Timestamp:
    """A `Timestamp` for a timezone-aware `datetime`, exact to the microsecond.

    Args:
        value: a timezone-aware `datetime`.
        field: how an error message names the value.

    Returns:
        The timestamp.

    Raises:
        ValueError: `value` is naive (no timezone) or not a `datetime`.
    """
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{field} must be a timezone-aware datetime, got {value!r}")
    seconds, micros = divmod((value - _EPOCH) // _MICROSECOND, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def datetime_from_proto(value: timestamp_pb2.Timestamp) -> datetime:
    """The UTC `datetime` of a `Timestamp` (nanoseconds below a microsecond are dropped).

    Args:
        value: the timestamp.

    Returns:
        A timezone-aware UTC `datetime`.
    """
    return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def run_status_to_proto(status: RunStatus | str) -> common_pb2.RunStatus.ValueType:
    """The proto enum of a run status.

    Raises:
        ValueError: `status` is not a run status word.
    """
    return _RUN_STATUS_TO_PROTO[RunStatus(status)]


def run_status_from_proto(value: int) -> RunStatus:
    """The run status of a proto enum value.

    Raises:
        ValueError: unspecified or unknown value.
    """
    try:
        return _RUN_STATUS_FROM_PROTO[common_pb2.RunStatus.ValueType(value)]
    except KeyError:
        raise ValueError(f"status must be a run status, got enum value {value}") from None


def task_status_to_proto(status: TaskStatus | str) -> common_pb2.TaskStatus.ValueType:
    """The proto enum of a task status.

    Raises:
        ValueError: `status` is not a task status word.
    """
    return _TASK_STATUS_TO_PROTO[TaskStatus(status)]


def task_status_from_proto(value: int) -> TaskStatus:
    """The task status of a proto enum value.

    Raises:
        ValueError: unspecified or unknown value.
    """
    try:
        return _TASK_STATUS_FROM_PROTO[common_pb2.TaskStatus.ValueType(value)]
    except KeyError:
        raise ValueError(f"status must be a task status, got enum value {value}") from None


# ---------------------------------------------------------------------- artifacts


def artifact_to_proto(artifact: Artifact, *, with_content: bool = True) -> common_pb2.Artifact:
    """The wire form of an artifact.

    Args:
        artifact: the artifact.
        with_content: send `content` inline when it is set (False: metadata only).

    Returns:
        The message; `content` set only when the artifact has it and `with_content` is True.

    Raises:
        ValueError: `created_at` is a naive datetime.
    """
    message = common_pb2.Artifact(
        artifact_id=artifact.artifact_id or "",
        name=artifact.name,
        media_type=artifact.media_type or DEFAULT_MEDIA_TYPE,
        metadata=artifact.metadata,
        run_id=artifact.run_id or "",
        node_id=artifact.node_id or "",
        sha256=artifact.sha256 or "",
        size=artifact.size or 0,
    )
    if artifact.created_at is not None:
        message.created_at.CopyFrom(datetime_to_proto(artifact.created_at, "created_at"))
    if with_content and artifact.content is not None:
        message.content = bytes(artifact.content)
    return message


def artifact_from_proto(message: common_pb2.Artifact) -> Artifact:
    """The model of a wire artifact (`content` only when it was inline).

    Args:
        message: the wire artifact.

    Returns:
        The artifact; `size` is None only when neither size nor sha256 was sent.
    """
    content = message.content if message.WhichOneof("body") == "content" else None
    return Artifact(
        name=message.name,
        content=content,
        media_type=message.media_type or DEFAULT_MEDIA_TYPE,
        metadata=dict(message.metadata),
        artifact_id=message.artifact_id or None,
        run_id=message.run_id or None,
        node_id=message.node_id or None,
        sha256=message.sha256 or None,
        size=message.size if (message.size or message.sha256) else None,
        created_at=_optional_time(message, "created_at"),
    )


# ---------------------------------------------------------------------- records


def execution_record_to_proto(record: ExecutionRecord) -> common_pb2.ExecutionRecord:
    """The wire form of an execution record.

    Raises:
        ValueError: a status is unknown or a datetime is naive.
    """
    message = common_pb2.ExecutionRecord(
        run_id=record.run_id,
        node_id=record.node_id,
        attempt=record.attempt,
        agent=record.agent,
        status=task_status_to_proto(record.status),
        error=record.error or "",
        trace_id=record.trace_id,
        input_artifact_ids=record.input_artifact_ids,
        output_artifact_ids=record.output_artifact_ids,
    )
    message.started_at.CopyFrom(datetime_to_proto(record.started_at, "started_at"))
    if record.finished_at is not None:
        message.finished_at.CopyFrom(datetime_to_proto(record.finished_at, "finished_at"))
    return message


def execution_record_from_proto(message: common_pb2.ExecutionRecord) -> ExecutionRecord:
    """The model of a wire execution record.

    Raises:
        ValueError: the status is unspecified, or `started_at` is missing.
    """
    if not message.HasField("started_at"):
        raise ValueError(
            f"execution record {message.run_id}/{message.node_id}/{message.attempt}: "
            "started_at is required"
        )
    return ExecutionRecord(
        run_id=message.run_id,
        node_id=message.node_id,
        attempt=message.attempt,
        agent=message.agent,
        status=task_status_from_proto(message.status),
        started_at=datetime_from_proto(message.started_at),
        finished_at=_optional_time(message, "finished_at"),
        error=message.error or None,
        trace_id=message.trace_id,
        input_artifact_ids=list(message.input_artifact_ids),
        output_artifact_ids=list(message.output_artifact_ids),
    )


def node_summary_to_proto(node_id: str, summary: NodeSummary) -> common_pb2.NodeSummary:
    """The wire form of one task's outcome (artifacts metadata only).

    Raises:
        ValueError: the status is unknown.
    """
    return common_pb2.NodeSummary(
        node_id=node_id,
        status=task_status_to_proto(summary.status),
        attempts=summary.attempts,
        error=summary.error or "",
        artifacts=[artifact_to_proto(a, with_content=False) for a in summary.artifacts],
    )


def node_summary_from_proto(message: common_pb2.NodeSummary) -> tuple[str, NodeSummary]:
    """The task id and model of a wire `NodeSummary`.

    Raises:
        ValueError: the status is unspecified.
    """
    return message.node_id, NodeSummary(
        status=task_status_from_proto(message.status),
        attempts=message.attempts,
        artifacts=[artifact_from_proto(a) for a in message.artifacts],
        error=message.error or None,
    )


def run_to_proto(run: RunRecord) -> common_pb2.Run:
    """The wire `Run` of a run record (the spec as JSON text, nodes in their order).

    Raises:
        ValueError: a status is unknown, a datetime naive, or the spec is not JSON-serializable.
    """
    try:
        spec_json = json.dumps(run.spec, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run {run.run_id!r}: spec is not JSON-serializable: {exc}") from None
    message = common_pb2.Run(
        run_id=run.run_id,
        name=run.name,
        status=run_status_to_proto(run.status),
        spec_json=spec_json,
        user_vars=run.user_vars,
        request_id=run.request_id,
        trace_id=run.trace_id,
        error=run.error or "",
        nodes=[node_summary_to_proto(node_id, node) for node_id, node in run.nodes.items()],
        owner=run.owner,
    )
    message.created_at.CopyFrom(datetime_to_proto(run.created_at, "created_at"))
    if run.finished_at is not None:
        message.finished_at.CopyFrom(datetime_to_proto(run.finished_at, "finished_at"))
    if run.lease_expires_at is not None:
        message.owner_lease_expire_time.CopyFrom(
            datetime_to_proto(run.lease_expires_at, "lease_expires_at")
        )
    return message


def run_from_proto(message: common_pb2.Run) -> RunRecord:
    """The run record of a wire `Run`.

    Raises:
        ValueError: the status is unspecified, `created_at` is missing, or `spec_json` is not
            a JSON object.
    """
    if not message.HasField("created_at"):
        raise ValueError(f"run {message.run_id!r}: created_at is required")
    spec: Any = {}
    if message.spec_json:
        try:
            spec = json.loads(message.spec_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"run {message.run_id!r}: spec_json is not JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise ValueError(f"run {message.run_id!r}: spec_json must be a JSON object")
    return RunRecord(
        run_id=message.run_id,
        name=message.name,
        status=run_status_from_proto(message.status),
        created_at=datetime_from_proto(message.created_at),
        finished_at=_optional_time(message, "finished_at"),
        spec=spec,
        user_vars=dict(message.user_vars),
        request_id=message.request_id,
        trace_id=message.trace_id,
        error=message.error or None,
        nodes=dict(node_summary_from_proto(n) for n in message.nodes),
        owner=message.owner,
        lease_expires_at=_optional_time(message, "owner_lease_expire_time"),
    )


def _optional_time(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return datetime_from_proto(getattr(message, field))
