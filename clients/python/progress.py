"""Progress of a run on stderr: a live table on a terminal, one plain line per event otherwise.

`RunProgress` folds `RunEvent`s into one row per task (state, attempt, duration, last error).
`LiveProgress` redraws that as a `rich` table as events arrive (and ticks the running tasks'
durations); `PlainProgress` writes one line per event, for logs and pipes. Both degrade when
an event lacks a field (an older orchestrator sends no durations): the cell stays empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, Self

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dagwire.models import RunStatus, RunSummary, TaskStatus
from dagwire.runtime.events import RunEvent, RunEventKind
from dagwire_cli.terminal import terminal_text

__all__ = [
    "LiveProgress",
    "PlainProgress",
    "Progress",
    "RunProgress",
    "TaskRow",
    "format_seconds",
    "make_progress",
]

PENDING = "pending"
RUNNING = "running"
RETRYING = "retrying"

STATE_STYLES = {
    PENDING: "dim",
    RUNNING: "cyan",
    RETRYING: "yellow",
    str(TaskStatus.SUCCEEDED): "green",
    str(TaskStatus.FAILED): "bold red",
    str(TaskStatus.SKIPPED): "magenta",
    str(TaskStatus.CANCELLED): "yellow",
    str(RunStatus.RUNNING): "cyan",
}


_QUIET = frozenset({PENDING, str(TaskStatus.SUCCEEDED)})
"""States a compact live table leaves out (counted in one line instead)."""


def format_seconds(seconds: float | None) -> str:
    """``0.42s``, ``12.3s``, ``2m05s``; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _one_line(text: str | None, limit: int = 200) -> str:
    flat = terminal_text(text or "", one_line=True)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(slots=True)
class TaskRow:
    """What is known of one task: its state (a task status, `pending` or `retrying`), the
    current attempt, its agent, when it started, its duration once finished, and a note
    (the last error, or when the next attempt comes)."""

    node_id: str
    state: str = PENDING
    attempt: int = 0
    agent: str = ""
    first_started: datetime | None = None
    duration: float | None = None
    note: str = ""

    def elapsed(self, now: datetime) -> float | None:
        """Seconds the task took (finished), or has been going (running), else None."""
        if self.duration is not None:
            return self.duration
        if self.first_started is not None and self.state in (RUNNING, RETRYING):
            return max((now - self.first_started).total_seconds(), 0.0)
        return None


class RunProgress:
    """A run's tasks as its events describe them, in spec order when the ids are known."""

    def __init__(self, run_id: str, *, name: str = "", task_ids: Iterable[str] = ()) -> None:
        self.run_id = run_id
        self.name = name
        self.rows: dict[str, TaskRow] = {tid: TaskRow(tid) for tid in task_ids}
        self.status: RunStatus | None = None
        self.summary: RunSummary | None = None
        self.started: datetime | None = None
        self.finished: datetime | None = None

    def row(self, node_id: str) -> TaskRow:
        """The row of `node_id` (added at the end when it was not known)."""
        found = self.rows.get(node_id)
        if found is None:
            found = self.rows[node_id] = TaskRow(node_id)
        return found

    def apply(self, event: RunEvent) -> None:
        """Fold one event in (events must come in sequence order)."""
        if self.started is None or event.time < self.started:
            self.started = event.time
        kind = RunEventKind(event.kind)
        if kind is RunEventKind.TASK_STARTED:
            row = self.row(event.node_id)
            row.state, row.attempt = RUNNING, event.attempt or row.attempt + 1
            row.agent = event.agent or row.agent
            if row.first_started is None:
                row.first_started = event.time
        elif kind is RunEventKind.ATTEMPT_FAILED:
            row = self.row(event.node_id)
            row.attempt = event.attempt or row.attempt
            error = _one_line(event.error) or "failed"
            took = format_seconds(event.duration)
            took = f" after {took}" if took else ""
            if event.will_retry:
                row.state = RETRYING
                row.note = f"attempt {row.attempt} failed{took}: {error}; retry in " + (
                    format_seconds(event.retry_delay) or "0s"
                )
            else:
                row.note = f"attempt {row.attempt} failed{took}: {error}"
        elif kind is RunEventKind.TASK_FINISHED:
            row = self.row(event.node_id)
            row.state = str(event.task_status or TaskStatus.FAILED)
            row.attempt = event.attempts or row.attempt
            if event.duration is not None:
                row.duration = event.duration
            elif row.first_started is not None:
                row.duration = max((event.time - row.first_started).total_seconds(), 0.0)
            row.note = _one_line(event.error) if event.error else ""
        else:
            self.finished = event.time
            self.summary = event.summary
            self.status = event.run_status or (event.summary.status if event.summary else None)
            if event.summary is not None:
                self.name = event.summary.name or self.name
                for node_id, node in event.summary.nodes.items():
                    row = self.row(node_id)
                    row.state = str(node.status)
                    row.attempt = node.attempts or row.attempt
                    if node.error and not row.note:
                        row.note = _one_line(node.error)

    def counts(self) -> dict[str, int]:
        """How many tasks are in each state."""
        out: dict[str, int] = {}
        for row in self.rows.values():
            out[row.state] = out.get(row.state, 0) + 1
        return out

    def run_duration(self, now: datetime) -> float | None:
        """Seconds from the first event to the last (or to `now` while running)."""
        if self.started is None:
            return None
        end = self.finished or now
        return max((end - self.started).total_seconds(), 0.0)


class Progress(Protocol):
    """Something that shows a run's progress as its events arrive."""

    state: RunProgress

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def update(self, event: RunEvent) -> None:
        """Show one more event."""
        ...

    def note(self, line: str) -> None:
        """Show one line that is not an event (a reconnect), above a live table."""
        ...


def _now() -> datetime:
    return datetime.now(UTC)


def _title(state: RunProgress) -> str:
    name = f" ({state.name})" if state.name else ""
    return f"run {state.run_id}{name}"


class PlainProgress:
    """One line per event on the console (no cursor movement, no colour needed)."""

    def __init__(self, console: Console, state: RunProgress) -> None:
        self.console = console
        self.state = state

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def update(self, event: RunEvent) -> None:
        """Fold `event` in and write its line."""
        self.state.apply(event)
        line = self.line(event)
        if line:
            self.console.print(terminal_text(line), markup=False, highlight=False, soft_wrap=True)

    def note(self, line: str) -> None:
        """Write one line that is not an event."""
        self.console.print(terminal_text(line), markup=False, highlight=False, soft_wrap=True)

    def line(self, event: RunEvent) -> str:
        """The line for `event` (already folded into `state`)."""
        stamp = event.time.astimezone().strftime("%H:%M:%S")
        kind = RunEventKind(event.kind)
        if kind is RunEventKind.RUN_FINISHED:
            status = self.state.status or "finished"
            took = format_seconds(self.state.run_duration(_now()))
            counts = ", ".join(f"{n} {s}" for s, n in sorted(self.state.counts().items()))
            detail = f" in {took}" if took else ""
            detail += f" ({counts})" if counts else ""
            error = f": {_one_line(event.error)}" if event.error else ""
            return f"{stamp} {_title(self.state)}: {status}{detail}{error}"
        row = self.state.row(event.node_id)
        if kind is RunEventKind.TASK_STARTED:
            agent = f", agent {row.agent}" if row.agent else ""
            return f"{stamp} {row.node_id}: running (attempt {row.attempt}{agent})"
        if kind is RunEventKind.ATTEMPT_FAILED:
            return f"{stamp} {row.node_id}: {row.note}"
        attempts = f"{row.attempt} attempt{'s' if row.attempt != 1 else ''}"
        took = format_seconds(row.duration)
        took = f" in {took}" if took else ""
        note = row.note.removeprefix(f"{row.state}: ")  # "cancelled: cancelled: ..." reads badly
        error = f": {note}" if note else ""
        if row.attempt == 0:  # never ran (skipped, cancelled): the note says why
            return f"{stamp} {row.node_id}: {row.state}{error}"
        return f"{stamp} {row.node_id}: {row.state} after {attempts}{took}{error}"


class _Table:
    """The live table; rebuilt at each refresh so running durations tick."""

    def __init__(self, state: RunProgress, clock: Callable[[], datetime] = _now) -> None:
        self.state = state
        self.clock = clock

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        now = self.clock()
        state = self.state
        status = str(state.status) if state.status else RUNNING
        took = format_seconds(state.run_duration(now))
        header = Text.assemble(
            (terminal_text(_title(state)), "bold"),
            "  ",
            (status, STATE_STYLES.get(status, "")),
            f"  {took}" if took else "",
        )
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        table.add_column("task", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("attempt", justify="right", no_wrap=True)
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("", overflow="ellipsis", no_wrap=True)
        rows = list(state.rows.values())  # a snapshot: the refresh thread reads while events land
        room = max(options.max_height - 4, 3)
        hidden: dict[str, int] = {}
        if len(rows) > room:  # a wide DAG: show what is moving or went wrong, count the rest
            shown = [r for r in rows if r.state not in _QUIET][:room]
            for r in rows:
                if r.state in _QUIET:
                    hidden[r.state] = hidden.get(r.state, 0) + 1
            hidden_more = len(rows) - len(shown) - sum(hidden.values())
            if hidden_more:
                hidden["more"] = hidden_more
            rows = shown
        for row in rows:
            table.add_row(
                Text(terminal_text(row.node_id)),
                Text(row.state, style=STATE_STYLES.get(row.state, "")),
                str(row.attempt) if row.attempt else "",
                format_seconds(row.elapsed(now)),
                Text(row.note, style="red" if row.state == str(TaskStatus.FAILED) else "dim"),
            )
        yield header
        yield table
        if hidden:
            yield Text(
                "... and " + ", ".join(f"{n} {state}" for state, n in hidden.items()), style="dim"
            )


_MIN_REDRAW = 0.1


class LiveProgress:
    """A table redrawn in place on a terminal: a row per task with state, attempt and time."""

    def __init__(
        self,
        console: Console,
        state: RunProgress,
        *,
        refresh_per_second: float = 4,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.console = console
        self.state = state
        self.table = _Table(state, clock)
        self._drawn = 0.0
        self._live = Live(
            self.table,
            console=console,
            refresh_per_second=refresh_per_second,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> Self:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()  # leaves the last table on screen

    def update(self, event: RunEvent) -> None:
        """Fold `event` in; redraw at most every `_MIN_REDRAW` seconds (and at the end), so a
        burst of events on a wide DAG costs one redraw, not one per event."""
        self.state.apply(event)
        now = time.monotonic()
        if event.kind is RunEventKind.RUN_FINISHED or now - self._drawn >= _MIN_REDRAW:
            self._drawn = now
            self._live.refresh()

    def note(self, line: str) -> None:
        """Print one line above the table (Live keeps the table below it)."""
        self.console.print(terminal_text(line), markup=False, highlight=False, soft_wrap=True)


def make_progress(console: Console, state: RunProgress) -> Progress:
    """A live table when `console` is a terminal, else plain lines."""
    if console.is_terminal:
        return LiveProgress(console, state)
    return PlainProgress(console, state)
