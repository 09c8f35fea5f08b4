"""Entry point of the `dagwire` console script: one Typer app, one module per command group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dagwire_cli import adapters, artifacts, auth, runs, schema, up
from dagwire_cli.output import help_text

_HELP = """\
Run workflows of agent tasks as a DAG across gRPC services.

Examples:

  dagwire up                                   # the local stack; then, in another terminal:
  dagwire run examples/hello.yaml --var topic=CLI
  dagwire runs
  dagwire artifacts get ARTIFACT_ID -o out.txt

Each command's --help has more examples. Exit status: 0 ok, 1 the run failed or was
cancelled, 2 invalid input or unknown id, 3 a server cannot be reached, 4 not authenticated
or not allowed.

With auth on, every command sends the token in DAGWIRE_TOKEN, or the one in the file named by
--token-file or DAGWIRE_TOKEN_FILE.
"""

app = typer.Typer(
    name="dagwire",
    help=help_text(_HELP),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
up.register(app)
runs.register(app)
artifacts.register(app)
adapters.register(app)
schema.register(app)
auth.register(app)


@app.callback()
def _root(
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="Read the token sent on every call from this file (DAGWIRE_TOKEN_FILE).",
        ),
    ] = None,
) -> None:
    auth.use_token_file(token_file)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
