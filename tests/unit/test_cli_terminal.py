"""Text from servers and adapters never reaches the terminal raw (clients/python/terminal.py):
the sanitizer itself, and each human-readable output path that prints such text."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from rich.console import Console

from dagwire.models import Artifact, NodeSummary, RunStatus, RunSummary, TaskStatus
from dagwire.rpc.dispatcher_client import AdapterInfo
from dagwire.runtime.events import RunEvent, RunEventKind
from dagwire.settings import StorageSettings
from dagwire_cli.adapters import adapter_lines
from dagwire_cli.errors import say
from dagwire_cli.output import print_json, print_summary
from dagwire_cli.progress import LiveProgress, PlainProgress, RunProgress
from dagwire_cli.terminal import json_text, terminal_text

EVIL = "a\x1b[2J\x1b]0;title\x07b\rc\x9b31m\u202ed\x00\x7f"
SHOWN = "a\\x1b[2J\\x1b]0;title\\x07b\\rc\\x9b31m\\u202ed\\x00\\x7f"
RAW = ("\x1b", "\x07", "\r", "\x9b", "\u202e", "\x00", "\x7f")
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _clean(text: str) -> None:
    for char in RAW:
        assert char not in text, (char, text)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (EVIL, SHOWN),
        ("plain text, ünïcödé ✓", "plain text, ünïcödé ✓"),
        ("two\nlines\tand a tab", "two\\nlines\\tand a tab"),
        ("\u2028\u2066\ud800", "\\u2028\\u2066\\ud800"),
    ],
)
def test_terminal_text_shows_every_control_as_a_visible_escape(raw: str, shown: str) -> None:
    assert terminal_text(raw) == shown
    assert terminal_text(shown) == shown  # idempotent: escaping twice changes nothing


def test_one_line_folds_layout_whitespace_but_still_escapes_a_carriage_return() -> None:
    assert terminal_text("  first\n\tsecond\r third ", one_line=True) == "first second\\r third"


def test_json_text_is_the_same_json_value_with_nothing_raw() -> None:
    value = {"name": EVIL, "list": [EVIL, "\u2029"]}
    text = json_text(json.dumps(value, indent=2, ensure_ascii=False))
    _clean(text)
    assert json.loads(text) == value


def test_print_json_writes_exact_json_with_c1_controls_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_json({"error": EVIL})
    out = capsys.readouterr().out
    _clean(out)
    assert json.loads(out) == {"error": EVIL}


def _summary() -> RunSummary:
    out = Artifact(name=f"out{EVIL}", artifact_id="art-1", sha256="ab" * 32, size=3)
    return RunSummary(
        run_id="r-1",
        name=f"name{EVIL}",
        status=RunStatus.FAILED,
        nodes={
            "greet": NodeSummary(TaskStatus.SUCCEEDED, 1, [out]),
            # rich markup in a cell would become an OSC 8 hyperlink: it must print as typed
            "boom": NodeSummary(TaskStatus.FAILED, 1, error=f"[link=http://x]click[/link]{EVIL}"),
        },
        error=f"failed: {EVIL}",
    )


def test_summary_escapes_names_errors_and_artifact_names_and_ignores_markup() -> None:
    console = Console(file=io.StringIO(), width=400, force_terminal=True, color_system=None)
    print_summary(console, _summary(), None)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    # The console's own styling (bold header) is the only escape left: strip it, then check.
    plain = text.replace("\x1b[1m", "").replace("\x1b[0m", "")
    _clean(plain)
    assert "\x1b]8;" not in text  # no hyperlink made from the error's markup
    assert f"run r-1 (name{SHOWN}): failed" in plain
    assert f"failed: {SHOWN}" in plain
    assert f"[link=http://x]click[/link]{SHOWN}" in plain
    assert f"greet/out{SHOWN}" in plain


def _events() -> list[RunEvent]:
    return [
        RunEvent(1, "r-1", RunEventKind.TASK_STARTED, T0, node_id="t", attempt=1, agent=EVIL),
        RunEvent(
            2, "r-1", RunEventKind.ATTEMPT_FAILED, T0, node_id="t", attempt=1, error=EVIL,
            will_retry=False,
        ),
        RunEvent(
            3, "r-1", RunEventKind.TASK_FINISHED, T0, node_id="t", attempts=1, error=EVIL,
            task_status=TaskStatus.FAILED,
        ),
    ]  # fmt: skip


def test_plain_progress_escapes_agents_errors_and_notes() -> None:
    console = Console(file=io.StringIO(), width=400, no_color=True)
    progress = PlainProgress(console, RunProgress("r-1", name=EVIL))
    for event in _events():
        progress.update(event)
    progress.note(f"lost the stream ({EVIL})")
    text = console.file.getvalue()  # type: ignore[attr-defined]
    _clean(text)
    assert f"agent {SHOWN}" in text
    assert f"attempt 1 failed: {SHOWN}" in text
    assert f"lost the stream ({SHOWN})" in text


def test_live_progress_escapes_the_title_and_notes() -> None:
    out = io.StringIO()
    console = Console(file=out, width=400, height=30, force_terminal=True, color_system=None)
    with LiveProgress(console, RunProgress("r-1", name=EVIL), clock=lambda: T0) as live:
        for event in _events():
            live.update(event)
    text = out.getvalue()
    assert SHOWN in text
    for char in ("\x07", "\x9b", "\u202e", "\x00", "\x7f"):  # rich itself moves the cursor
        assert char not in text, char
    assert "\x1b[2J" not in text and "\x1b]0;" not in text


def test_adapter_lines_escape_what_adapters_registered() -> None:
    info = AdapterInfo(
        instance_id="i", address=f"127.0.0.1:1{EVIL}", agents=(f"echo{EVIL}",), in_flight=0,
        capacity=1, healthy=True, last_heartbeat=None, lease_expires_at=None,
    )  # fmt: skip
    (line,) = adapter_lines([info])
    _clean(line)
    assert f"127.0.0.1:1{SHOWN}" in line and f"echo{SHOWN}" in line


def test_messages_on_stderr_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    say("artifacts get", f"{EVIL}  3 bytes")
    err = capsys.readouterr().err
    _clean(err)
    assert err == f"dagwire artifacts get: {SHOWN}  3 bytes\n"


def test_messages_on_stderr_never_show_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    StorageSettings(s3_endpoint="http://127.0.0.1:1", s3_access_key="AK-cli-0001")
    say("up", "error: mongodb://me:hunter22@db:27017/?password=opt-cli-9 refused AK-cli-0001")
    err = capsys.readouterr().err
    for secret in ("hunter22", "opt-cli-9", "AK-cli-0001"):
        assert secret not in err, err
