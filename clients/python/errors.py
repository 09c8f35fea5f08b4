"""Exit codes (docs/contracts.md §9) and the one place where the CLI turns exceptions into them.

Every command runs its async body through `run_command`, which catches the dagwire exception
tree, gRPC errors and a few OS errors and prints a one-line message on stderr: a user's
mistake or a server being down never shows a traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import grpc.aio

from dagwire.errors import (
    DagwireError,
    NotFoundError,
    PermissionDeniedError,
    RunAlreadyFinishedError,
    StoreUnavailableError,
    UnauthenticatedError,
    WorkflowValidationError,
)
from dagwire.rpc.orchestrator_client import OrchestratorUnavailableError
from dagwire.rpc.status import InvalidArgumentError, RemoteError
from dagwire.rpc.tls import explain_connect_failure
from dagwire.settings import SettingsError, redact
from dagwire_cli.terminal import terminal_text

__all__ = [
    "EXIT_AUTH",
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "CliError",
    "Target",
    "Unreachable",
    "describe",
    "fail",
    "run_command",
    "say",
    "spec_error_line",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

_UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_AUTH_CODES = {
    grpc.StatusCode.UNAUTHENTICATED: "not authenticated",
    grpc.StatusCode.PERMISSION_DENIED: "not allowed",
}


class CliError(Exception):
    """A failure the command has already put into words; `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_INVALID) -> None:
        super().__init__(message)
        self.code = code


class Unreachable(CliError):
    """A service did not answer: exit 3, naming the address and suggesting `dagwire up`."""

    def __init__(self, target: Target, detail: str = "") -> None:
        why = f" ({detail})" if detail else ""
        hint = f", or {target.hint}" if target.hint else ""
        super().__init__(
            f"cannot reach the {target.service} at {target.address}{why}; "
            f"start the stack with `dagwire up`{hint}",
            EXIT_UNREACHABLE,
        )
        self.target = target


@dataclass(frozen=True, slots=True)
class Target:
    """The service a command talks to, for messages: name, address, how to change it."""

    service: str = "service"
    address: str = "?"
    hint: str = ""


def say(command: str, message: str) -> None:
    """One line on stderr, prefixed with the command (``dagwire run: ...``); what servers
    said in `message` is escaped (`terminal_text`) and credentials are masked (`redact`)."""
    sys.stderr.write(f"dagwire {command}: {terminal_text(redact(message), one_line=True)}\n")
    sys.stderr.flush()


def fail(message: str, code: int = EXIT_INVALID) -> NoReturn:
    """Stop the command with `message` on stderr and exit status `code`."""
    raise CliError(message, code)


def spec_error_line(source: str | Path, exc: WorkflowValidationError) -> str:
    """The first problem of a spec error on one line, prefixed with the file.

    `line N:` (when known) comes from the spec parser; further problems are counted, not listed.
    """
    lines = [line for line in str(exc).splitlines() if line.strip()] or ["invalid workflow spec"]
    first = lines[0]
    more = len(lines) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {first}{tail}"


def run_command(
    command: str, body: Callable[[], Coroutine[Any, Any, int]], *, target: Target | None = None
) -> NoReturn:
    """Run `body` on a fresh event loop and exit with its status, mapping errors to §9's codes.

    Args:
        command: the subcommand, for the message prefix (``run``, ``artifacts get``).
        body: the command's coroutine function; it returns the exit status.
        target: the service the command talks to, named when it cannot be reached.
    """
    try:
        code = asyncio.run(body())
    except KeyboardInterrupt:
        say(command, "interrupted")
        code = EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly, like cat
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    except Exception as exc:
        code, message = describe(exc, target or Target())
        say(command, f"error: {message}")
    sys.exit(code)


def describe(exc: BaseException, target: Target) -> tuple[int, str]:
    """The exit status and one-line message for an exception a command let through."""
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, SettingsError):
        return EXIT_INVALID, _one_line(str(exc))
    refused = _auth_refusal(exc, target)
    if refused is not None:
        return EXIT_AUTH, refused
    unreachable = _unreachable_detail(exc)
    if unreachable is not None:
        return EXIT_UNREACHABLE, str(Unreachable(target, unreachable))
    if isinstance(exc, WorkflowValidationError):
        return EXIT_INVALID, spec_error_line("workflow spec", exc)
    if isinstance(exc, NotFoundError | InvalidArgumentError | RunAlreadyFinishedError):
        return EXIT_INVALID, _one_line(str(exc))
    if isinstance(exc, DagwireError):
        return EXIT_FAILED, _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, grpc.RpcError):
        return EXIT_FAILED, f"the {target.service} at {target.address} failed: {_rpc_text(exc)}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_INVALID, f"{where}{exc.strerror or exc}"
    return EXIT_FAILED, f"unexpected {type(exc).__name__}: {_one_line(str(exc))}"


def _auth_refusal(exc: BaseException, target: Target) -> str | None:
    """The line for a call the server refused for who made it (exit status 4), else None."""
    if isinstance(exc, UnauthenticatedError):
        code = grpc.StatusCode.UNAUTHENTICATED
    elif isinstance(exc, PermissionDeniedError):
        code = grpc.StatusCode.PERMISSION_DENIED
    elif isinstance(exc, RemoteError) and exc.code in _AUTH_CODES:
        code = exc.code
    elif isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        code = exc.code()
        if code not in _AUTH_CODES:
            return None
    else:
        return None
    text = _rpc_text(exc) if isinstance(exc, grpc.RpcError) else _one_line(str(exc))
    return f"{_AUTH_CODES[code]} by the {target.service} at {target.address}: {text}"


def _unreachable_detail(exc: BaseException) -> str | None:
    """Why a service is unreachable, when `exc` says so; None for any other error."""
    if isinstance(exc, OrchestratorUnavailableError | StoreUnavailableError):
        return _short_reason(str(exc))
    if isinstance(exc, RemoteError) and exc.code in _UNREACHABLE_CODES:
        return _short_reason(str(exc)) or exc.code.name.lower()
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        if code in _UNREACHABLE_CODES:
            return _short_reason(_rpc_text(exc))
    return None


def _short_reason(text: str) -> str:
    """The gist of a connection failure: grpc's details can be a paragraph."""
    text = _one_line(text)
    tls = explain_connect_failure(text)
    if tls is not None:
        return tls
    lowered = text.lower()
    for needle, gist in (
        ("connection refused", "connection refused"),
        ("deadline", "no answer in time"),
        ("name resolution", "unknown host"),
        ("dns resolution", "unknown host"),
        ("timeout", "timed out"),
    ):
        if needle in lowered:
            return gist
    return text if len(text) <= 120 else text[:117] + "..."


def _rpc_text(exc: grpc.RpcError) -> str:
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    return _one_line(str(details or exc))


def _one_line(text: str) -> str:
    return " ".join(text.split())
