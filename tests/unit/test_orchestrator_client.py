"""Run events and summaries survive the wire; the client turns failures into dagwire errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dagwire.models import Artifact, NodeSummary, RunStatus, RunSummary, TaskStatus
from dagwire.rpc.convert import (
    RunEventEncoder,
    run_event_from_proto,
    run_event_to_proto,
    run_summary_from_proto,
    run_summary_to_proto,
)
from dagwire.rpc.orchestrator_client import OrchestratorClient, OrchestratorUnavailableError
from dagwire.runtime.events import RunEvent, RunEventKind
from dagwire.v1 import common_pb2

WHEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
OUT = Artifact(name="out", artifact_id="a-1", sha256="ab" * 32, size=3, media_type="text/plain")
SUMMARY = RunSummary(
    run_id="r-1",
    status=RunStatus.FAILED,
    nodes={
        "a": NodeSummary(TaskStatus.SUCCEEDED, 1, [OUT]),
        "b": NodeSummary(TaskStatus.FAILED, 2, error="boom"),
        "c": NodeSummary(TaskStatus.SKIPPED, 0, error="skipped: upstream task 'b' failed"),
    },
    name="wf",
    trace_id="t" * 32,
    error="1 task(s) failed: b",
)


@pytest.mark.parametrize(
    "event",
    [
        RunEvent(1, "r-1", RunEventKind.TASK_STARTED, WHEN, node_id="a", attempt=1, agent="echo"),
        RunEvent(
            2,
            "r-1",
            RunEventKind.ATTEMPT_FAILED,
            WHEN,
            node_id="b",
            attempt=1,
            error="boom",
            will_retry=True,
            retry_delay=0.25,
        ),
        RunEvent(3, "r-1", RunEventKind.ATTEMPT_FAILED, WHEN, node_id="b", attempt=2, error="x"),
        RunEvent(
            4,
            "r-1",
            RunEventKind.TASK_FINISHED,
            WHEN,
            node_id="a",
            task_status=TaskStatus.SUCCEEDED,
            attempts=1,
            artifacts=(OUT,),
        ),
    ],
    ids=["task_started", "attempt_failed_retry", "attempt_failed_last", "task_finished"],
)
def test_run_event_round_trips_through_the_wire(event: RunEvent) -> None:
    back = run_event_from_proto(
        common_pb2.RunEvent.FromString(run_event_to_proto(event).SerializeToString())
    )
    assert back == event


def test_run_finished_event_carries_every_node_outcome() -> None:
    event = RunEvent(
        5,
        "r-1",
        RunEventKind.RUN_FINISHED,
        WHEN,
        run_status=RunStatus.FAILED,
        error=SUMMARY.error,
        summary=SUMMARY,
    )
    back = run_event_from_proto(run_event_to_proto(event))
    assert back.run_status is RunStatus.FAILED and back.error == SUMMARY.error
    assert back.summary is not None and back.summary.nodes == SUMMARY.nodes
    assert list(back.summary.nodes) == ["a", "b", "c"]  # spec order kept
    assert (back.summary.name, back.summary.trace_id) == ("wf", "t" * 32)  # for a CLI header


def test_encoder_adds_attempt_and_task_durations_from_the_event_times() -> None:
    at = [WHEN + timedelta(seconds=s) for s in (0.0, 0.25, 0.5, 1.75, 2.0)]
    events = [
        RunEvent(1, "r-1", RunEventKind.TASK_STARTED, at[0], node_id="b", attempt=1),
        RunEvent(
            2,
            "r-1",
            RunEventKind.ATTEMPT_FAILED,
            at[1],
            node_id="b",
            attempt=1,
            error="boom",
            will_retry=True,
            retry_delay=0.2,
        ),
        RunEvent(3, "r-1", RunEventKind.TASK_STARTED, at[2], node_id="b", attempt=2),
        RunEvent(
            4, "r-1", RunEventKind.ATTEMPT_FAILED, at[3], node_id="b", attempt=2, error="boom"
        ),
        RunEvent(
            5,
            "r-1",
            RunEventKind.TASK_FINISHED,
            at[4],
            node_id="b",
            task_status=TaskStatus.FAILED,
            attempts=2,
            error="boom",
        ),
        RunEvent(
            6,
            "r-1",
            RunEventKind.TASK_FINISHED,
            at[4],
            node_id="c",
            task_status=TaskStatus.SKIPPED,
            error="skipped: upstream task 'b' failed",
        ),
    ]
    encoder = RunEventEncoder()
    back = [run_event_from_proto(encoder.encode(e)) for e in events]
    assert [e.duration for e in back] == [None, 0.25, None, 1.25, 2.0, None]
    assert back[4].error == "boom" and back[4].attempts == 2  # state, attempts and error too


def test_run_summary_round_trips_without_a_run_record() -> None:
    assert run_summary_from_proto(run_summary_to_proto(SUMMARY)) == SUMMARY


def test_empty_run_event_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="has no event"):
        run_event_from_proto(common_pb2.RunEvent(sequence=1, run_id="r"))


async def test_unreachable_orchestrator_is_unavailable_naming_the_address() -> None:
    async with OrchestratorClient("127.0.0.1:1", call_timeout=5) as client:
        with pytest.raises(OrchestratorUnavailableError, match=r"127\.0\.0\.1:1"):
            await client.get_run("r-1")
