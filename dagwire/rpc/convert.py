"""Proto <-> model conversion: the only place outside the services that touches `*_pb2`.

Timestamps convert microsecond-exact to timezone-aware UTC `datetime`s (an unset timestamp
is None); empty proto strings mean "none" for optional text.
"""

from __future__ import annotations

import dataclasses
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
    RunSummary,
    TaskStatus,
)
from dagwire.rpc.status import InvalidArgumentError
from dagwire.runtime.events import RunEvent, RunEventKind
from dagwire.v1 import common_pb2

__all__ = [
    "RunEventEncoder",
    "artifact_from_proto",
    "artifact_to_proto",
    "datetime_from_proto",
    "datetime_to_proto",
    "execution_record_from_proto",
    "execution_record_to_proto",
    "node_summary_from_proto",
    "node_summary_to_proto",
    "run_event_from_proto",
    "run_event_to_proto",
    "run_from_proto",
    "run_status_from_proto",
    "run_status_to_proto",
    "run_summary_from_proto",
    "run_summary_to_proto",
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


def datetime_from_proto(value: timestamp_pb2.Timestamp, field: str = "timestamp") -> datetime:
    """The UTC `datetime` of a `Timestamp` (nanoseconds below a microsecond are dropped).

    Args:
        value: the timestamp.
        field: the request field it came from (named when it is out of range).

    Returns:
        A timezone-aware UTC `datetime`.

    Raises:
        InvalidArgumentError: the timestamp is outside years 1 to 9999 (what `datetime` holds,
            and the range the Timestamp type allows).
    """
    try:
        return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)
    except OverflowError:
        raise InvalidArgumentError(
            f"{field} is out of range ({value.seconds} seconds from 1970): a timestamp must "
            "fall within the years 1 to 9999",
            field=field,
        ) from None


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
        started_at=datetime_from_proto(message.started_at, "started_at"),
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
        lease_epoch=run.lease_epoch,
        namespace=run.namespace,
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
        created_at=datetime_from_proto(message.created_at, "created_at"),
        finished_at=_optional_time(message, "finished_at"),
        spec=spec,
        user_vars=dict(message.user_vars),
        request_id=message.request_id,
        trace_id=message.trace_id,
        error=message.error or None,
        nodes=dict(node_summary_from_proto(n) for n in message.nodes),
        owner=message.owner,
        lease_epoch=message.lease_epoch,
        lease_expires_at=_optional_time(message, "owner_lease_expire_time"),
        namespace=message.namespace or "default",
    )


def run_summary_to_proto(summary: RunSummary, record: RunRecord | None = None) -> common_pb2.Run:
    """The wire `Run` of a finished run's summary, completed from its run record when given.

    Args:
        summary: the run's summary (status, error and nodes win over the record's).
        record: the stored run record (created_at, spec, user_vars...), when at hand.

    Returns:
        The message; without a record only run_id, name, status, trace_id, error and nodes
        are set.

    Raises:
        ValueError: a status is unknown or a datetime naive.
    """
    if record is not None:
        return run_to_proto(
            dataclasses.replace(
                record, status=summary.status, error=summary.error, nodes=summary.nodes
            )
        )
    return common_pb2.Run(
        run_id=summary.run_id,
        name=summary.name,
        status=run_status_to_proto(summary.status),
        trace_id=summary.trace_id,
        error=summary.error or "",
        nodes=[node_summary_to_proto(node_id, node) for node_id, node in summary.nodes.items()],
    )


def run_summary_from_proto(message: common_pb2.Run) -> RunSummary:
    """The `RunSummary` of a wire `Run` (no created_at or spec needed).

    Raises:
        ValueError: a status is unspecified.
    """
    return RunSummary(
        run_id=message.run_id,
        status=run_status_from_proto(message.status),
        nodes=dict(node_summary_from_proto(n) for n in message.nodes),
        name=message.name,
        trace_id=message.trace_id,
        error=message.error or None,
    )


# ---------------------------------------------------------------------- run events


class RunEventEncoder:
    """Encodes the events of one run, in order from its first, adding the durations the model's
    events may lack: a failed attempt's (since its `task_started`) and a finished task's (since
    its first `task_started`), from the events' times.

    Feed it every event from sequence 1, also those a watcher does not need, so it sees the
    starts: `WatchRun` encodes from the start and sends only those after `after_sequence`.
    """

    def __init__(self) -> None:
        self._first_start: dict[str, datetime] = {}
        self._attempt_start: dict[tuple[str, int], datetime] = {}

    def encode(self, event: RunEvent) -> common_pb2.RunEvent:
        """The wire form of `event` (see `run_event_to_proto`), with its duration when known.

        Raises:
            ValueError: as `run_event_to_proto`.
        """
        kind = RunEventKind(event.kind)
        start: datetime | None = None
        if kind is RunEventKind.TASK_STARTED:
            self._first_start.setdefault(event.node_id, event.time)
            self._attempt_start[(event.node_id, event.attempt)] = event.time
        elif kind is RunEventKind.ATTEMPT_FAILED:
            start = self._attempt_start.pop((event.node_id, event.attempt), None)
        elif kind is RunEventKind.TASK_FINISHED:
            start = self._first_start.pop(event.node_id, None)
        if event.duration is None and start is not None:
            seconds = max((event.time - start).total_seconds(), 0.0)
            event = dataclasses.replace(event, duration=seconds)
        return run_event_to_proto(event)


def run_event_to_proto(event: RunEvent) -> common_pb2.RunEvent:
    """The wire form of one run event (`WatchRun`); artifacts travel as metadata only.

    `duration` is sent when the event has one (`RunEventEncoder` computes it); `run_finished`
    carries the run's name and trace id when the event has its summary.

    Raises:
        ValueError: the event lacks the status its kind needs, or a datetime is naive.
    """
    message = common_pb2.RunEvent(sequence=event.sequence, run_id=event.run_id)
    message.time.CopyFrom(datetime_to_proto(event.time, "time"))
    kind = RunEventKind(event.kind)
    if kind is RunEventKind.TASK_STARTED:
        message.task_started.CopyFrom(
            common_pb2.RunEvent.TaskStarted(
                node_id=event.node_id, attempt=event.attempt, agent=event.agent
            )
        )
    elif kind is RunEventKind.ATTEMPT_FAILED:
        failed = common_pb2.RunEvent.AttemptFailed(
            node_id=event.node_id,
            attempt=event.attempt,
            error=event.error or "",
            will_retry=event.will_retry,
        )
        if event.will_retry:
            failed.retry_delay.FromNanoseconds(round(max(event.retry_delay, 0.0) * 1e9))
        if event.duration is not None:
            failed.duration.FromNanoseconds(round(max(event.duration, 0.0) * 1e9))
        message.attempt_failed.CopyFrom(failed)
    elif kind is RunEventKind.TASK_FINISHED:
        if event.task_status is None:
            raise ValueError(f"task_finished event {event.sequence} has no task_status")
        finished = common_pb2.RunEvent.TaskFinished(
            node_id=event.node_id,
            status=task_status_to_proto(event.task_status),
            attempts=event.attempts,
            error=event.error or "",
            artifacts=[artifact_to_proto(a, with_content=False) for a in event.artifacts],
        )
        if event.duration is not None:
            finished.duration.FromNanoseconds(round(max(event.duration, 0.0) * 1e9))
        message.task_finished.CopyFrom(finished)
    else:
        status = event.run_status or (event.summary.status if event.summary else None)
        if status is None:
            raise ValueError(f"run_finished event {event.sequence} has no run_status")
        nodes = event.summary.nodes if event.summary is not None else {}
        message.run_finished.CopyFrom(
            common_pb2.RunEvent.RunFinished(
                status=run_status_to_proto(status),
                error=event.error or "",
                nodes=[node_summary_to_proto(node_id, node) for node_id, node in nodes.items()],
                name=event.summary.name if event.summary is not None else "",
                trace_id=event.summary.trace_id if event.summary is not None else "",
            )
        )
    return message


def run_event_from_proto(message: common_pb2.RunEvent) -> RunEvent:
    """The model of a wire run event.

    `run_finished` carries a `summary` rebuilt from the event; `agent` is only known for
    `task_started`; `duration` is None when the event carries none.

    Raises:
        ValueError: the event is empty or a status is unspecified.
    """
    which = message.WhichOneof("event")
    common: dict[str, Any] = {
        "sequence": message.sequence,
        "run_id": message.run_id,
        "time": datetime_from_proto(message.time, "time") if message.HasField("time") else _EPOCH,
    }
    if which == "task_started":
        started = message.task_started
        return RunEvent(
            kind=RunEventKind.TASK_STARTED,
            node_id=started.node_id,
            attempt=started.attempt,
            agent=started.agent,
            **common,
        )
    if which == "attempt_failed":
        failed = message.attempt_failed
        return RunEvent(
            kind=RunEventKind.ATTEMPT_FAILED,
            node_id=failed.node_id,
            attempt=failed.attempt,
            error=failed.error or None,
            will_retry=failed.will_retry,
            retry_delay=(
                failed.retry_delay.ToNanoseconds() / 1e9 if failed.HasField("retry_delay") else 0.0
            ),
            duration=_optional_seconds(failed, "duration"),
            **common,
        )
    if which == "task_finished":
        finished = message.task_finished
        return RunEvent(
            kind=RunEventKind.TASK_FINISHED,
            node_id=finished.node_id,
            task_status=task_status_from_proto(finished.status),
            attempts=finished.attempts,
            error=finished.error or None,
            artifacts=tuple(artifact_from_proto(a) for a in finished.artifacts),
            duration=_optional_seconds(finished, "duration"),
            **common,
        )
    if which == "run_finished":
        done = message.run_finished
        status = run_status_from_proto(done.status)
        return RunEvent(
            kind=RunEventKind.RUN_FINISHED,
            run_status=status,
            error=done.error or None,
            summary=RunSummary(
                run_id=message.run_id,
                status=status,
                nodes=dict(node_summary_from_proto(n) for n in done.nodes),
                name=done.name,
                trace_id=done.trace_id,
                error=done.error or None,
            ),
            **common,
        )
    raise ValueError(f"run event {message.sequence} of run {message.run_id!r} has no event")


def _optional_seconds(message: Any, field: str) -> float | None:
    if not message.HasField(field):
        return None
    seconds: float = getattr(message, field).ToNanoseconds() / 1e9
    return seconds


def _optional_time(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return datetime_from_proto(getattr(message, field), field)
