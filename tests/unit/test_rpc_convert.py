"""Proto <-> model converters: exact round trips of artifacts, records, runs, statuses, times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from dagwire.models import (
    Artifact,
    ExecutionRecord,
    NodeSummary,
    RunRecord,
    RunStatus,
    TaskStatus,
)
from dagwire.rpc.convert import (
    artifact_from_proto,
    artifact_to_proto,
    datetime_from_proto,
    datetime_to_proto,
    execution_record_from_proto,
    execution_record_to_proto,
    run_from_proto,
    run_status_from_proto,
    run_status_to_proto,
    run_to_proto,
    task_status_from_proto,
    task_status_to_proto,
)
from dagwire.rpc.status import InvalidArgumentError
from dagwire.v1 import common_pb2

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
maybe_text = st.none() | text.filter(bool)
ids = st.none() | st.text("abcdef0123456789-", min_size=1, max_size=12)
aware = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
offsets = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)


@st.composite
def artifacts(draw: st.DrawFn, *, with_content: bool = True) -> Artifact:
    stored = draw(st.booleans())
    content = draw(st.none() | st.binary(max_size=64)) if with_content else None
    return Artifact(
        name=draw(text),
        content=content,
        media_type=draw(st.sampled_from(["application/octet-stream", "text/plain"])),
        metadata=draw(st.dictionaries(text, text, max_size=4)),
        artifact_id=draw(ids),
        run_id=draw(ids),
        node_id=draw(ids),
        sha256=draw(st.text("0123456789abcdef", min_size=64, max_size=64)) if stored else None,
        size=draw(st.integers(0, 2**40)) if stored else None,
        created_at=draw(st.none() | aware),
    )


records = st.builds(
    ExecutionRecord,
    run_id=text,
    node_id=text,
    attempt=st.integers(1, 1000),
    agent=text,
    status=st.sampled_from(list(TaskStatus)),
    started_at=aware,
    finished_at=st.none() | aware,
    error=maybe_text,
    trace_id=text,
    input_artifact_ids=st.lists(text, max_size=3),
    output_artifact_ids=st.lists(text, max_size=3),
)

nodes = st.builds(
    NodeSummary,
    status=st.sampled_from(list(TaskStatus)),
    attempts=st.integers(0, 10),
    artifacts=st.lists(artifacts(with_content=False), max_size=2),
    error=maybe_text,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)

runs = st.builds(
    RunRecord,
    run_id=text,
    name=text,
    status=st.sampled_from(list(RunStatus)),
    created_at=aware,
    finished_at=st.none() | aware,
    spec=st.dictionaries(text, json_values, max_size=4),
    user_vars=st.dictionaries(text, text, max_size=3),
    request_id=text,
    trace_id=text,
    error=maybe_text,
    nodes=st.dictionaries(text, nodes, max_size=3),
    owner=text,
    lease_expires_at=st.none() | aware,
)


@given(aware, offsets)
def test_datetime_round_trips_microsecond_exact_as_utc(value: datetime, tz: timezone) -> None:
    local = value.astimezone(tz)
    back = datetime_from_proto(datetime_to_proto(local))
    assert back == value
    assert back.utcoffset() == timedelta(0)
    assert back.microsecond == value.microsecond


def test_datetime_before_the_epoch_keeps_its_microseconds() -> None:
    value = datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC)
    stamp = datetime_to_proto(value)
    assert (stamp.seconds, stamp.nanos) == (-1, 1000)
    assert datetime_from_proto(stamp) == value


def test_naive_datetime_is_a_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match="started_at must be a timezone-aware datetime"):
        datetime_to_proto(datetime(2026, 1, 1), "started_at")


@given(artifacts())
def test_artifact_round_trips_every_field(artifact: Artifact) -> None:
    assert artifact_from_proto(artifact_to_proto(artifact)) == artifact


def test_artifact_without_content_flag_sends_metadata_only() -> None:
    message = artifact_to_proto(Artifact(name="n", content=b"abc"), with_content=False)
    assert message.WhichOneof("body") is None
    assert artifact_from_proto(message).content is None


def test_artifact_empty_content_stays_empty_bytes_not_none() -> None:
    assert artifact_from_proto(artifact_to_proto(Artifact(name="n", content=b""))).content == b""


def test_artifact_empty_media_type_reads_as_octet_stream() -> None:
    assert artifact_from_proto(common_pb2.Artifact(name="n")).media_type == (
        "application/octet-stream"
    )


@given(records)
def test_execution_record_round_trips_every_field(record: ExecutionRecord) -> None:
    assert execution_record_from_proto(execution_record_to_proto(record)) == record


def test_execution_record_without_started_at_is_a_value_error_naming_it() -> None:
    message = common_pb2.ExecutionRecord(
        run_id="r", node_id="a", attempt=1, status=common_pb2.TASK_STATUS_SUCCEEDED
    )
    with pytest.raises(ValueError, match="r/a/1: started_at is required"):
        execution_record_from_proto(message)


@given(runs)
def test_run_record_round_trips_every_field_and_node_order(run: RunRecord) -> None:
    back = run_from_proto(run_to_proto(run))
    assert back == run
    assert list(back.nodes) == list(run.nodes)


def test_run_spec_that_is_not_json_is_a_value_error_naming_the_run() -> None:
    message = run_to_proto(
        RunRecord(run_id="r1", name="n", status=RunStatus.RUNNING, created_at=datetime.now(UTC))
    )
    message.spec_json = "{not json"
    with pytest.raises(ValueError, match="run 'r1': spec_json is not JSON"):
        run_from_proto(message)


@pytest.mark.parametrize("status", list(RunStatus))
def test_run_status_round_trips(status: RunStatus) -> None:
    assert run_status_from_proto(run_status_to_proto(status)) is status
    assert run_status_to_proto(str(status)) == run_status_to_proto(status)


@pytest.mark.parametrize("status", list(TaskStatus))
def test_task_status_round_trips(status: TaskStatus) -> None:
    assert task_status_from_proto(task_status_to_proto(status)) is status


def test_unspecified_statuses_are_value_errors() -> None:
    with pytest.raises(ValueError, match="status must be a run status, got enum value 0"):
        run_status_from_proto(0)
    with pytest.raises(ValueError, match="status must be a task status, got enum value 99"):
        task_status_from_proto(99)


@pytest.mark.parametrize("seconds", [-62135596801, 253402300800, -(2**63), 2**63 - 1])
def test_an_out_of_range_timestamp_is_an_invalid_argument_naming_its_field(seconds: int) -> None:
    # found by the RPC fuzzer: before, PutRegistryEntry and PruneRegistryEntries answered
    # INTERNAL (an OverflowError) for a timestamp outside the years 1 to 9999
    with pytest.raises(InvalidArgumentError) as caught:
        datetime_from_proto(timestamp_pb2.Timestamp(seconds=seconds), "entry.expire_time")
    assert caught.value.field == "entry.expire_time"
    assert "entry.expire_time is out of range" in str(caught.value)


def test_the_first_and_last_representable_timestamps_convert() -> None:
    first = datetime_from_proto(timestamp_pb2.Timestamp(seconds=-62135596800))
    last = datetime_from_proto(timestamp_pb2.Timestamp(seconds=253402300799))
    assert (first.year, last.year) == (1, 9999)
