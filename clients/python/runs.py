"""`dagwire run`, `runs`, `watch` and `cancel`: start, list, follow and cancel runs."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from dagwire.errors import NotFoundError, RunAlreadyFinishedError, WorkflowValidationError
from dagwire.models import RunRecord, RunStatus, RunSummary
from dagwire.rpc.orchestrator_client import OrchestratorClient
from dagwire.runtime.events import RunEventKind
from dagwire.spec import WorkflowSpec
from dagwire_cli import addresses
from dagwire_cli.addresses import ORCHESTRATOR, ServerOption
from dagwire_cli.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    fail,
    run_command,
    say,
    spec_error_line,
)
from dagwire_cli.output import (
    OutputFormat,
    help_text,
    print_json,
    print_summary,
    stderr_console,
    stdout_console,
    summary_json,
)
from dagwire_cli.progress import RunProgress, make_progress
from dagwire_cli.terminal import terminal_text

__all__ = ["load_spec", "parse_vars", "register"]

CALL_TIMEOUT = 30.0
"""Deadline of the unary calls (start, get, list), so a hung server cannot hang the CLI."""
RECONNECT_SECONDS = 10.0
"""How long `watch` keeps reconnecting to an orchestrator that went away mid-run."""

_EXIT_STATUS = """\
Exit status: 0 the run succeeded, 1 it failed or was cancelled, 2 invalid input (the spec,
a --var, an unknown run id), 3 the orchestrator cannot be reached, 130 interrupted (Ctrl-C
stops following; the run goes on)."""

_RUN_HELP = f"""\
Start a workflow and follow it to its end.

FILE is a workflow spec v1 (YAML, or JSON for a .json name). It is validated here first: a
malformed file, a cycle, an unknown field or an unresolved ${{user.NAME}} is reported with its
line and task, and nothing is sent. ${{secret.NAME}} values are read by the orchestrator
(DAGWIRE_SECRETS_DIR), which refuses a spec naming a missing one (exit status 2) and never
shows them (an error quoting one shows its name instead). Progress goes to stderr (a live
table on a terminal, one line per event otherwise); the summary goes to stdout: a table and
the ids of the artifacts, or with --output json the JSON summary
{{"run_id", "status", "nodes": {{id: {{"status", "attempts", "error", "artifacts": [...]}}}}}}.

Examples:

  dagwire run examples/hello.yaml
  dagwire run examples/hello.yaml --var topic=YAML --var who=me
  dagwire run flow.yaml --output json > summary.json
  dagwire run flow.yaml --server 10.0.0.5:50051

{_EXIT_STATUS}
"""

_WATCH_HELP = f"""\
Follow a run until it ends.

It replays what already happened, then shows live progress. Works for runs started
elsewhere and for finished runs (it replays them). The summary goes to stdout as in
`dagwire run`.

Examples:

  dagwire watch 0193a4f2-6c1e-7b9a-9d3c-2f4e5a6b7c8d
  dagwire watch RUN_ID --output json | jq .status

{_EXIT_STATUS}
"""

_RUNS_HELP = """\
List runs, newest first.

One line per run: its full run id, then name, status and start time.

Examples:

  dagwire runs
  dagwire runs --status failed --limit 5
  dagwire runs --output json

Exit status: 0 listed (also when there are none), 2 invalid option, 3 the orchestrator cannot
be reached.
"""

_CANCEL_HELP = """\
Cancel a run.

Running adapter calls are cancelled and every unfinished task ends cancelled. Prints the run
id and its final status on stdout.

Examples:

  dagwire cancel 0193a4f2-6c1e-7b9a-9d3c-2f4e5a6b7c8d
  dagwire cancel "$(dagwire runs --status running --limit 1 | cut -d' ' -f1)"

Exit status: 0 cancelled (or already cancelled), 2 the run already finished otherwise (its
status is named) or no run has this id, 3 the orchestrator cannot be reached.
"""

NamespaceOption = Annotated[
    str,
    typer.Option(
        "--namespace",
        envvar="DAGWIRE_NAMESPACE",
        help="The namespace of the runs (default: your token's first; 'default' without auth).",
        show_default=False,
    ),
]

OutputOption = Annotated[
    OutputFormat,
    typer.Option(
        "--output",
        "-O",
        help="text: progress and a table; json: the summary as JSON on stdout.",
        case_sensitive=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Add `run`, `runs`, `watch` and `cancel` to the CLI."""

    @app.command("run", help=help_text(_RUN_HELP))
    def run(
        file: Annotated[
            Path,
            typer.Argument(
                metavar="FILE", help="Workflow spec file (YAML or JSON).", show_default=False
            ),
        ],
        var: Annotated[
            list[str] | None,
            typer.Option(
                "--var",
                metavar="KEY=VALUE",
                help="Value of ${user.KEY}; repeat for more (overrides the spec's vars).",
                show_default=False,
            ),
        ] = None,
        server: ServerOption = ORCHESTRATOR.default,
        output: OutputOption = "text",
        namespace: NamespaceOption = "",
    ) -> None:
        _main("run", server, lambda client: _run(client, file, var or [], output, namespace))

    @app.command("watch", help=help_text(_WATCH_HELP))
    def watch(
        run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to follow.")],
        server: ServerOption = ORCHESTRATOR.default,
        output: OutputOption = "text",
    ) -> None:
        _main("watch", server, lambda client: _watch(client, run_id, output))

    @app.command("runs", help=help_text(_RUNS_HELP))
    def runs(
        status: Annotated[
            RunStatus | None,
            typer.Option(
                "--status", help="Only runs in this state.", case_sensitive=False, metavar="STATUS"
            ),
        ] = None,
        limit: Annotated[
            int, typer.Option("--limit", "-n", min=1, help="At most this many runs.")
        ] = 50,
        server: ServerOption = ORCHESTRATOR.default,
        output: OutputOption = "text",
        namespace: NamespaceOption = "",
        all_namespaces: Annotated[
            bool,
            typer.Option(
                "--all-namespaces", "-A", help="Runs of every namespace (admins, with auth on)."
            ),
        ] = False,
    ) -> None:
        scope = _Scope(namespace, all_namespaces)
        _main("runs", server, lambda client: _list_runs(client, status, limit, output, scope))

    @app.command("cancel", help=help_text(_CANCEL_HELP))
    def cancel(
        run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to cancel.")],
        server: ServerOption = ORCHESTRATOR.default,
    ) -> None:
        _main("cancel", server, lambda client: _cancel(client, run_id))


def _main(command: str, server: str, body: Callable[[OrchestratorClient], Awaitable[int]]) -> None:
    """Resolve the orchestrator's address, run `body` with a client of it, exit (§9 codes)."""
    try:
        address = addresses.resolve(ORCHESTRATOR, server)
    except ValueError as exc:
        fail_now(command, str(exc))

    async def with_client() -> int:
        async with OrchestratorClient(
            address, call_timeout=CALL_TIMEOUT, reconnect_seconds=RECONNECT_SECONDS
        ) as client:
            return await body(client)

    run_command(command, with_client, target=addresses.target(ORCHESTRATOR, address))


def fail_now(command: str, message: str) -> NoReturn:
    """Exit 2 with a one-line message, before any event loop exists."""
    say(command, f"error: {message}")
    raise typer.Exit(2)


# ---------------------------------------------------------------------- input


def parse_vars(items: list[str]) -> dict[str, str]:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``; the last of repeated keys wins.

    Raises:
        CliError: an item has no ``=`` or an empty key (exit 2).
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--var {item!r} is not KEY=VALUE (for example --var topic=gRPC)")
        out[key.strip()] = value
    return out


@dataclass(frozen=True, slots=True)
class LoadedSpec:
    """A spec file checked here: the text sent as is, and what validation learned."""

    text: str
    spec: WorkflowSpec


def load_spec(path: Path, user_vars: dict[str, str]) -> LoadedSpec:
    """Read and validate a spec file with its variables, as the orchestrator would.

    Raises:
        CliError: the file cannot be read, or the spec or a variable is invalid (exit 2); the
            message names the file, the line when known, and the task.
    """
    try:
        spec = WorkflowSpec.from_file(path)
        text = path.read_bytes().decode("utf-8-sig")
        spec.resolve(user_vars)
    except WorkflowValidationError as exc:
        fail(spec_error_line(path, exc))
    except IsADirectoryError:
        fail(f"{path}: is a directory, not a workflow spec file")
    except FileNotFoundError:
        fail(f"{path}: no such file")
    except OSError as exc:
        fail(f"{path}: cannot read it ({exc.strerror or exc})")
    return LoadedSpec(text, spec)


# ---------------------------------------------------------------------- following


class _Interrupt:
    """Turns Ctrl-C into cancelling one task (the follower), so the command can say how to
    re-attach instead of dying with a traceback."""

    def __init__(self) -> None:
        self.hit = False

    @contextlib.contextmanager
    def catching(self, task: asyncio.Task[Any]) -> Iterator[None]:
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            self.hit = True
            task.cancel()

        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            yield
            return
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGINT)


async def _follow(
    command: str, client: OrchestratorClient, state: RunProgress, output: OutputFormat
) -> int:
    """Show the run's events until it ends, then its summary; Ctrl-C stops following."""
    interrupt = _Interrupt()
    current = asyncio.current_task()
    assert current is not None
    with interrupt.catching(current):
        try:
            return await _follow_events(client, state, output)
        except asyncio.CancelledError:
            if not interrupt.hit:
                raise
            current.uncancel()
            _say_reattach(command, state.run_id)
            return EXIT_INTERRUPTED


async def _follow_events(
    client: OrchestratorClient, state: RunProgress, output: OutputFormat
) -> int:
    with make_progress(stderr_console(), state) as progress:

        def reconnecting(last: int, reason: str) -> None:
            progress.note(
                f"lost the event stream of run {state.run_id} ({reason}); reconnecting "
                f"after event {last}"
            )

        async for event in client.watch_run(state.run_id, on_reconnect=reconnecting):
            progress.update(event)
            if event.kind is RunEventKind.RUN_FINISHED:
                break
    summary = state.summary
    if summary is None:  # the stream ended without run_finished: ask for the outcome
        summary = (await client.get_run(state.run_id)).summary()
    _print_outcome(summary, state, output)
    return EXIT_OK if summary.status is RunStatus.SUCCEEDED else EXIT_FAILED


def _say_reattach(command: str, run_id: str) -> None:
    say(
        command,
        f"stopped following run {run_id}; it goes on. "
        f"Re-attach: dagwire watch {run_id}   Cancel: dagwire cancel {run_id}",
    )


def _print_outcome(summary: RunSummary, state: RunProgress, output: OutputFormat) -> None:
    if output == "json":
        print_json(summary_json(summary))
    else:
        if not summary.name:
            summary.name = state.name
        print_summary(stdout_console(), summary, state)


async def _run(
    client: OrchestratorClient,
    file: Path,
    var_items: list[str],
    output: OutputFormat,
    namespace: str = "",
) -> int:
    user_vars = parse_vars(var_items)
    loaded = load_spec(file, user_vars)
    request_id = str(uuid.uuid4())
    interrupt = _Interrupt()
    current = asyncio.current_task()
    assert current is not None
    # One Ctrl-C handler from the StartRun call to the end, so that no moment between starting
    # and following can end in a bare KeyboardInterrupt.
    run_id = ""
    with interrupt.catching(current):
        try:
            run_id = await client.start_run(
                loaded.text, user_vars=user_vars, request_id=request_id, namespace=namespace
            )
            say("run", f"started run {run_id} ({loaded.spec.name}); Ctrl-C stops following")
            state = RunProgress(
                run_id, name=loaded.spec.name, task_ids=[t.id for t in loaded.spec.tasks]
            )
            return await _follow_events(client, state, output)
        except asyncio.CancelledError:
            if not interrupt.hit:
                raise
            current.uncancel()
            if run_id:
                _say_reattach("run", run_id)
            else:
                say(
                    "run",
                    "interrupted while starting; the run may have started: see `dagwire runs`",
                )
            return EXIT_INTERRUPTED


async def _watch(client: OrchestratorClient, run_id: str, output: OutputFormat) -> int:
    record = await _get_run(client, run_id)
    state = RunProgress(run_id, name=record.name, task_ids=_task_ids(record))
    return await _follow("watch", client, state, output)


async def _get_run(client: OrchestratorClient, run_id: str) -> RunRecord:
    try:
        return await client.get_run(run_id)
    except NotFoundError:
        fail(f"no run has id {run_id!r}; `dagwire runs` lists the runs")


def _task_ids(record: RunRecord) -> list[str]:
    tasks = record.spec.get("tasks") if isinstance(record.spec, dict) else None
    ids = [t.get("id") for t in tasks or [] if isinstance(t, dict)]
    return [i for i in ids if isinstance(i, str)] or list(record.nodes)


# ---------------------------------------------------------------------- runs, cancel


@dataclass(frozen=True)
class _Scope:
    """Which namespaces `dagwire runs` lists."""

    namespace: str = ""
    all_namespaces: bool = False


async def _list_runs(
    client: OrchestratorClient,
    status: RunStatus | None,
    limit: int,
    output: OutputFormat,
    scope: _Scope | None = None,
) -> int:
    scope = scope or _Scope()
    runs: list[RunRecord] = []
    async for run in client.iter_runs(
        status=status,
        page_size=min(limit, 1000),
        namespace=scope.namespace,
        all_namespaces=scope.all_namespaces,
    ):
        runs.append(run)
        if len(runs) >= limit:
            break
    if output == "json":
        print_json([_run_json(r) for r in runs])
        return EXIT_OK
    if not runs:
        which = f" {status}" if status else ""
        say("runs", f"no{which} runs yet; start one with `dagwire run FILE`")
        return EXIT_OK
    rows = [
        (
            terminal_text(r.run_id),
            terminal_text(r.name, one_line=True) or "-",
            str(r.status),
            _time_text(r.created_at) or "-",
        )
        for r in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        f"{rid:<{widths[0]}}  {name:<{widths[1]}}  {st:<{widths[2]}}  {started}"
        for rid, name, st, started in rows
    ]
    if scope.all_namespaces:  # the namespace first, so the run id stays easy to cut
        width = max(len(r.namespace) for r in runs)
        lines = [f"{r.namespace:<{width}}  {line}" for r, line in zip(runs, lines, strict=True)]
    typer.echo("\n".join(lines))
    return EXIT_OK


def _time_text(value: Any) -> str:
    return value.astimezone().isoformat(timespec="seconds") if value is not None else ""


def _run_json(run: RunRecord) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "namespace": run.namespace,
        "name": run.name,
        "status": str(run.status),
        "created_at": _time_text(run.created_at) or None,
        "finished_at": _time_text(run.finished_at) or None,
        "error": run.error,
    }


async def _cancel(client: OrchestratorClient, run_id: str) -> int:
    try:
        status = await client.cancel_run(run_id)
    except NotFoundError:
        fail(f"no run has id {run_id!r}; `dagwire runs` lists the runs")
    except RunAlreadyFinishedError as exc:
        fail(f"run {run_id} already finished ({exc.status or 'finished'}); nothing to cancel")
    typer.echo(terminal_text(f"{run_id} {status}"))
    return EXIT_OK
