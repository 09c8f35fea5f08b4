"""The `dagwire` CLI without servers: arguments, client-side validation, exit codes, output
shapes and progress rendering (plain lines and the live table, rendered to a string)."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from rich.console import Console
from typer.testing import CliRunner

from dagwire.errors import (
    DagwireError,
    NotFoundError,
    RunAlreadyFinishedError,
    WorkflowValidationError,
)
from dagwire.models import Artifact, NodeSummary, RunStatus, RunSummary, TaskStatus
from dagwire.rpc.orchestrator_client import OrchestratorUnavailableError
from dagwire.rpc.status import RemoteError
from dagwire.runtime.events import RunEvent, RunEventKind
from dagwire_cli.errors import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_UNREACHABLE,
    Target,
    describe,
    spec_error_line,
)
from dagwire_cli.main import app
from dagwire_cli.output import help_text, print_summary, summary_json
from dagwire_cli.progress import LiveProgress, PlainProgress, RunProgress, format_seconds
from dagwire_cli.runs import parse_vars
from tests.servers import find_free_port

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
OUT = Artifact(
    name="out", artifact_id="0190-art-1", sha256="ab" * 32, size=2048, media_type="text/plain"
)
SUMMARY = RunSummary(
    run_id="r-1",
    name="demo",
    status=RunStatus.FAILED,
    nodes={
        "greet": NodeSummary(TaskStatus.SUCCEEDED, 1, [OUT]),
        "boom": NodeSummary(TaskStatus.FAILED, 3, error="RemoteError: kaputt"),
        "after": NodeSummary(TaskStatus.SKIPPED, 0, error="skipped: upstream task 'boom' failed"),
    },
    error="1 task(s) failed: boom",
)
COMMANDS = [
    ["run"],
    ["watch"],
    ["runs"],
    ["cancel"],
    ["artifacts", "get"],
    ["adapters"],
    ["schema"],
]

runner = CliRunner()


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _events() -> list[RunEvent]:
    """greet succeeds; boom fails twice, retries, fails for good; after is skipped."""
    started = RunEventKind.TASK_STARTED
    return [
        RunEvent(1, "r-1", started, _at(0), node_id="greet", attempt=1, agent="echo"),
        RunEvent(2, "r-1", started, _at(0), node_id="boom", attempt=1, agent="fail"),
        RunEvent(
            3, "r-1", RunEventKind.TASK_FINISHED, _at(0.25), node_id="greet",
            task_status=TaskStatus.SUCCEEDED, attempts=1, artifacts=(OUT,), duration=0.25,
        ),
        RunEvent(
            4, "r-1", RunEventKind.ATTEMPT_FAILED, _at(0.5), node_id="boom", attempt=1,
            error="RemoteError: kaputt", will_retry=True, retry_delay=0.2, duration=0.5,
        ),
        RunEvent(5, "r-1", started, _at(0.7), node_id="boom", attempt=2, agent="fail"),
        RunEvent(
            6, "r-1", RunEventKind.ATTEMPT_FAILED, _at(1.0), node_id="boom", attempt=2,
            error="RemoteError: kaputt",
        ),
        RunEvent(
            7, "r-1", RunEventKind.TASK_FINISHED, _at(1.0), node_id="after",
            task_status=TaskStatus.SKIPPED, error="skipped: upstream task 'boom' failed",
        ),
        # No duration on the wire (an older orchestrator): taken from the event times.
        RunEvent(
            8, "r-1", RunEventKind.TASK_FINISHED, _at(1.0), node_id="boom",
            task_status=TaskStatus.FAILED, attempts=2, error="RemoteError: kaputt",
        ),
        RunEvent(
            9, "r-1", RunEventKind.RUN_FINISHED, _at(1.1), run_status=RunStatus.FAILED,
            summary=SUMMARY, error="1 task(s) failed: boom",
        ),
    ]  # fmt: skip


def _spec(tmp_path: Path, text: str, name: str = "flow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _unused_address() -> str:
    return f"127.0.0.1:{find_free_port()}"


# ---------------------------------------------------------------------- help and arguments


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_of_every_command_teaches_by_example(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.stdout
    assert f"dagwire {' '.join(command)}" in result.stdout


def test_root_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    for name in ("run", "runs", "watch", "cancel", "artifacts", "adapters", "schema", "up"):
        assert re.search(rf"│ {name}\b", result.stdout), name


def test_help_text_rejoins_paragraphs_and_keeps_example_lines() -> None:
    text = "First line\ncontinues here.\n\nExamples:\n\n  dagwire run a.yaml\n  dagwire runs\n"
    assert help_text(text) == (
        "First line continues here.\n\nExamples:\n\n  dagwire run a.yaml\n  dagwire runs\n"
    )


def test_vars_parse_as_key_value_and_the_last_repeat_wins() -> None:
    assert parse_vars(["topic=gRPC", "expr=a=b", "topic=YAML", "empty="]) == {
        "topic": "YAML",
        "expr": "a=b",
        "empty": "",
    }


def test_var_without_equals_is_exit_2_naming_it(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "name: x\ntasks: [{id: a, agent: echo}]\n")
    result = runner.invoke(app, ["run", str(spec), "--var", "topic", "--server", _unused_address()])
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == (
        "dagwire run: error: --var 'topic' is not KEY=VALUE (for example --var topic=gRPC)\n"
    )


def test_invalid_server_address_is_exit_2_naming_flag_and_variable(tmp_path: Path) -> None:
    result = runner.invoke(app, ["runs", "--server", "no-port-here"])
    assert result.exit_code == EXIT_INVALID
    assert "--server (or DAGWIRE_ORCHESTRATOR_ADDR)" in result.stderr
    assert "'no-port-here' is not host:port" in result.stderr


def test_server_address_defaults_from_the_environment() -> None:
    address = _unused_address()
    result = runner.invoke(app, ["runs"], env={"DAGWIRE_ORCHESTRATOR_ADDR": address})
    assert result.exit_code == EXIT_UNREACHABLE
    assert f"cannot reach the orchestrator at {address}" in result.stderr


def test_unknown_status_filter_is_a_usage_error() -> None:
    result = runner.invoke(app, ["runs", "--status", "sleeping"])
    assert result.exit_code == EXIT_INVALID
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------- client-side validation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\ntasks: [\n", "flow.yaml: line 3: invalid YAML"),
        (
            "name: x\ntasks:\n  - {id: a, agent: e, depends_on: [b]}\n"
            "  - {id: b, agent: e, depends_on: [a]}\n",
            "dependency cycle: a -> b -> a",
        ),
        (
            "name: x\ntasks:\n  - id: a\n    agent: e\n    params: {t: '${user.who}'}\n",
            "flow.yaml: task 'a': params.t: unresolved variable ${user.who}",
        ),
        ("name: x\ntasks:\n  - id: a\n    agnet: e\n", "flow.yaml: line 4: unknown field 'agnet'"),
    ],
    ids=["malformed-yaml", "cycle", "unresolved-variable", "unknown-field"],
)
def test_invalid_spec_is_exit_2_with_one_line_and_nothing_sent(
    tmp_path: Path, text: str, expected: str
) -> None:
    spec = _spec(tmp_path, text)
    # The server address has nothing listening: reaching out would be exit 3, not 2.
    result = runner.invoke(app, ["run", str(spec), "--server", _unused_address()])
    assert result.exit_code == EXIT_INVALID, result.stderr
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("dagwire run: error: ")
    assert "Traceback" not in result.output and result.stdout == ""


def test_variable_given_on_the_command_line_passes_validation(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "name: x\ntasks:\n  - {id: a, agent: e, params: {t: '${user.who}'}}\n")
    address = _unused_address()
    result = runner.invoke(app, ["run", str(spec), "--var", "who=me", "--server", address])
    assert result.exit_code == EXIT_UNREACHABLE  # valid: it went on to call the orchestrator
    assert "dagwire up" in result.stderr


def test_missing_spec_file_is_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == EXIT_INVALID
    assert result.stderr == f"dagwire run: error: {tmp_path / 'nope.yaml'}: no such file\n"


def test_spec_error_line_keeps_the_first_problem_and_counts_the_rest() -> None:
    exc = WorkflowValidationError("line 3: first\nline 9: second\nline 12: third")
    assert spec_error_line("f.yaml", exc) == "f.yaml: line 3: first (and 2 more problems)"


# ---------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NotFoundError("run 'x' not found", kind="run", id="x"), EXIT_INVALID),
        (RunAlreadyFinishedError("r-1", "succeeded"), EXIT_INVALID),
        (WorkflowValidationError("line 2: bad"), EXIT_INVALID),
        (OrchestratorUnavailableError("service at h:1 is unavailable"), EXIT_UNREACHABLE),
        (RemoteError("failed to connect", code=grpc.StatusCode.UNAVAILABLE), EXIT_UNREACHABLE),
        (RemoteError("slow", code=grpc.StatusCode.DEADLINE_EXCEEDED), EXIT_UNREACHABLE),
        (RemoteError("bug (trace 1)", code=grpc.StatusCode.INTERNAL), EXIT_FAILED),
        (DagwireError("something else"), EXIT_FAILED),
        (PermissionError(13, "Permission denied", "/x"), EXIT_INVALID),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)  # fmt: skip
def test_exceptions_map_to_design_exit_codes_with_one_line(exc: Exception, code: int) -> None:
    got, message = describe(exc, Target("orchestrator", "h:1", "pass --server"))
    assert got == code
    assert "\n" not in message and message
    if code == EXIT_UNREACHABLE:
        assert "orchestrator at h:1" in message and "dagwire up" in message


# ---------------------------------------------------------------------- output shapes


def test_json_summary_has_exactly_the_documented_shape() -> None:
    data = summary_json(SUMMARY)
    assert json.loads(json.dumps(data)) == {
        "run_id": "r-1",
        "status": "failed",
        "nodes": {
            "greet": {
                "status": "succeeded",
                "attempts": 1,
                "error": None,
                "artifacts": [
                    {"artifact_id": "0190-art-1", "name": "out", "sha256": "ab" * 32, "size": 2048}
                ],
            },
            "boom": {
                "status": "failed",
                "attempts": 3,
                "error": "RemoteError: kaputt",
                "artifacts": [],
            },
            "after": {
                "status": "skipped",
                "attempts": 0,
                "error": "skipped: upstream task 'boom' failed",
                "artifacts": [],
            },
        },
    }


def test_text_summary_lists_tasks_and_how_to_download_each_artifact() -> None:
    console = Console(file=io.StringIO(), width=200, no_color=True)
    print_summary(console, SUMMARY, None)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert text.splitlines()[0] == "run r-1 (demo): failed"
    assert re.search(r"greet\s+succeeded\s+1\s+out \(2.0 KiB\)", text)
    assert re.search(r"boom\s+failed\s+3\s+RemoteError: kaputt", text)
    assert "dagwire artifacts get ID -o FILE" in text
    assert re.search(r"0190-art-1\s+greet/out\s+2.0 KiB\s+sha256 " + "ab" * 32, text)


def test_durations_read_like_a_stopwatch() -> None:
    assert [format_seconds(s) for s in (None, 0.0123, 9.5, 42.25, 125)] == [
        "",
        "0.01s",
        "9.50s",
        "42.2s",
        "2m05s",
    ]


# ---------------------------------------------------------------------- progress


def test_run_progress_folds_events_into_task_rows() -> None:
    state = RunProgress("r-1", name="demo", task_ids=["greet", "boom", "after"])
    events = _events()
    for event in events[:4]:
        state.apply(event)
    boom = state.rows["boom"]
    assert (boom.state, boom.attempt) == ("retrying", 1)
    assert boom.note == "attempt 1 failed after 0.50s: RemoteError: kaputt; retry in 0.20s"
    assert state.rows["after"].state == "pending"
    for event in events[4:]:
        state.apply(event)
    assert {k: (r.state, r.attempt) for k, r in state.rows.items()} == {
        "greet": ("succeeded", 1),
        "boom": ("failed", 3),  # the summary's count wins
        "after": ("skipped", 0),
    }
    assert state.rows["boom"].duration == pytest.approx(1.0)  # from the event times
    assert state.status is RunStatus.FAILED and state.summary is SUMMARY


def test_plain_progress_writes_one_line_per_event() -> None:
    console = Console(file=io.StringIO(), width=200, no_color=True)
    progress = PlainProgress(console, RunProgress("r-1", name="demo"))
    for event in _events():
        progress.update(event)
    lines = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in console.file.getvalue().splitlines()]  # type: ignore[attr-defined]
    assert lines == [
        "greet: running (attempt 1, agent echo)",
        "boom: running (attempt 1, agent fail)",
        "greet: succeeded after 1 attempt in 0.25s",
        "boom: attempt 1 failed after 0.50s: RemoteError: kaputt; retry in 0.20s",
        "boom: running (attempt 2, agent fail)",
        "boom: attempt 2 failed: RemoteError: kaputt",
        "after: skipped: upstream task 'boom' failed",
        "boom: failed after 2 attempts in 1.00s: RemoteError: kaputt",
        "run r-1 (demo): failed in 1.10s (1 failed, 1 skipped, 1 succeeded): "
        "1 task(s) failed: boom",
    ]


def test_live_progress_redraws_a_table_with_state_attempt_and_time() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, height=30, force_terminal=True, color_system=None)
    events = _events()
    state = RunProgress("r-1", name="demo", task_ids=["greet", "boom", "after"])
    with LiveProgress(console, state, clock=lambda: _at(1.1)) as live:
        for event in events[:4]:
            live.update(event)
        console.print(live.table)  # what the terminal shows now
        middle = out.getvalue()
        for event in events[4:]:
            live.update(event)
    final = out.getvalue()[len(middle) :]
    assert re.search(r"greet\s+succeeded\s+1\s+0.25s", middle)
    assert re.search(r"boom\s+retrying\s+1\s+\d.\d\ds\s+attempt 1 failed", middle)
    assert re.search(r"after\s+pending", middle)
    assert "run r-1 (demo)" in final and re.search(r"boom\s+failed\s+3\s+1.00s", final)
    assert re.search(r"after\s+skipped", final)
    assert "\x1b[" in final  # cursor movement: redrawn in place, not appended


def test_live_table_of_a_wide_run_shows_the_busy_tasks_and_counts_the_rest() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, height=12, force_terminal=True, color_system=None)
    state = RunProgress("r-wide", task_ids=[f"t{i}" for i in range(300)])
    live = LiveProgress(console, state, clock=lambda: _at(2))
    for i in range(200):
        node, started, finished = f"t{i}", 2 * i + 1, 2 * i + 2
        state.apply(RunEvent(started, "r-wide", RunEventKind.TASK_STARTED, _at(0), node_id=node))
        if i != 7:
            state.apply(
                RunEvent(
                    finished,
                    "r-wide",
                    RunEventKind.TASK_FINISHED,
                    _at(1),
                    node_id=node,
                    task_status=TaskStatus.SUCCEEDED,
                    attempts=1,
                )
            )
    console.print(live.table)
    text = out.getvalue()
    assert len(text.splitlines()) <= 12
    assert re.search(r"t7\s+running", text)
    assert "... and 199 succeeded, 100 pending" in text


def test_schema_command_prints_the_spec_json_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"name", "tasks"} <= set(schema["required"])
    assert schema["additionalProperties"] is False
