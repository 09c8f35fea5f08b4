"""`dagwire artifacts get`: download an artifact from the store, checking its sha256."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from dagwire.errors import NotFoundError
from dagwire.models import Artifact
from dagwire.rpc.store_client import RemoteArtifactStore
from dagwire_cli import addresses
from dagwire_cli.addresses import STORE, StoreOption
from dagwire_cli.errors import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_OK, fail, run_command, say
from dagwire_cli.output import format_size, help_text

__all__ = ["download", "register"]

_GET_HELP = """\
Download an artifact from the store, verifying its sha256 as it streams.

Writes to FILE atomically (a temporary file renamed into place once complete and verified),
or to stdout when no -o is given (binary-safe, for pipes). The artifact's name, size and
sha256 go to stderr. Artifact ids are in the summary of `dagwire run` / `dagwire watch`.

Examples:

  dagwire artifacts get 0193a4f2-7d00-7c3e-8f1a-0b2c3d4e5f60 -o out.txt
  dagwire artifacts get ARTIFACT_ID | head -c 100
  dagwire artifacts get ARTIFACT_ID -o blob.bin --store 10.0.0.5:50053

Exit status: 0 downloaded and verified, 1 the content did not match its sha256 (nothing is
left at FILE), 2 unknown artifact id or unwritable FILE, 3 the store cannot be reached.
"""

artifacts_app = typer.Typer(
    name="artifacts",
    help="Artifacts (task outputs) in the store.\n\nExample: dagwire artifacts get ID -o FILE",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the `artifacts` group (`artifacts get`) to the CLI."""
    app.add_typer(artifacts_app)


@artifacts_app.command("get", help=help_text(_GET_HELP))
def get(
    artifact_id: Annotated[str, typer.Argument(metavar="ID", help="The artifact id.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write here (default: stdout).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    store: StoreOption = STORE.default,
) -> None:
    try:
        address = addresses.resolve(STORE, store)
    except ValueError as exc:
        say("artifacts get", f"error: {exc}")
        raise typer.Exit(2) from None

    async def body() -> int:
        async with contextlib.AsyncExitStack() as stack:
            client = RemoteArtifactStore(address)
            stack.push_async_callback(client.aclose)
            return await download(client, artifact_id, output)

    run_command("artifacts get", body, target=addresses.target(STORE, address))


async def download(client: RemoteArtifactStore, artifact_id: str, output: Path | None) -> int:
    """Stream the artifact to `output` (atomically) or stdout; returns the exit status.

    Raises:
        CliError: unknown id or unwritable file (exit 2).
        StoreUnavailableError: the store cannot be reached.
    """
    try:
        meta = await client.stat(artifact_id)
    except NotFoundError:
        fail(f"no artifact has id {artifact_id!r}; the ids are in the run's summary")
    where = str(output) if output is not None else "stdout"
    if output is None:
        try:
            digest, size = await _stream(client, artifact_id, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        except BrokenPipeError:  # the reader stopped early (`| head`): stop quietly, like cat
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
    else:
        verified, size = await _to_file(client, artifact_id, output, meta)
        if verified is None:
            return EXIT_FAILED
        digest = verified
    problem = _mismatch(meta, digest, size)
    if problem:
        say("artifacts get", f"error: {problem}")
        return EXIT_FAILED
    say(
        "artifacts get",
        f"{meta.name}  {size} bytes ({format_size(size)})  sha256 {digest}  -> {where}",
    )
    return EXIT_OK


async def _stream(client: RemoteArtifactStore, artifact_id: str, sink: BinaryIO) -> tuple[str, int]:
    """Copy the content to `sink`; returns its sha256 (hex) and size."""
    hasher = hashlib.sha256()
    size = 0
    async for chunk in client.open(artifact_id):
        hasher.update(chunk)
        sink.write(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


async def _to_file(
    client: RemoteArtifactStore, artifact_id: str, output: Path, meta: Artifact
) -> tuple[str | None, int]:
    """Download into a temporary file next to `output`, verify, then rename it into place.

    Returns (None, size) after reporting a mismatch (the temporary file is removed).
    """
    directory = output.parent if str(output.parent) else Path(".")
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".part", dir=directory)
    except FileNotFoundError:
        fail(f"{output}: the directory {directory} does not exist")
    except OSError as exc:
        fail(f"{output}: cannot write there ({exc.strerror or exc})")
    temp = Path(temp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private; the user expects umask
        with os.fdopen(fd, "wb") as sink:
            digest, size = await _stream(client, artifact_id, sink)
        problem = _mismatch(meta, digest, size)
        if problem:
            say("artifacts get", f"error: {problem}; nothing written to {output}")
            return None, size
        try:
            os.replace(temp, output)
        except OSError as exc:
            fail(f"{output}: cannot write there ({exc.strerror or exc})")
        return digest, size
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _mismatch(meta: Artifact, digest: str, size: int) -> str:
    """What is wrong with the downloaded content, or '' when it matches the store's record."""
    if meta.sha256 and meta.sha256 != digest:
        return (
            f"artifact {meta.artifact_id} is corrupt: its sha256 is {digest}, the store "
            f"recorded {meta.sha256}"
        )
    if meta.size is not None and meta.size != size:
        return (
            f"artifact {meta.artifact_id} is incomplete: got {size} bytes, the store recorded "
            f"{meta.size}"
        )
    return ""
