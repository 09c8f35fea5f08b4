"""`dagwire auth`: principals of the auth file (``DAGWIRE_AUTH_FILE``), and the CLI's token.

`dagwire auth add` writes a principal with a fresh token and prints the token once: the file
keeps only its SHA-256 (docs/security.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from dagwire.auth import TOKEN_FILE_ENV, Role, add_principal
from dagwire_cli.errors import EXIT_INVALID, say
from dagwire_cli.output import help_text

__all__ = ["register", "use_token_file"]

_AUTH_HELP = """\
Manage the principals of an auth file (DAGWIRE_AUTH_FILE): who may call the services.
"""

_ADD_HELP = """\
Add a principal with a new token to an auth file (created when missing) and print the token.

The token is printed once, on stdout; the file keeps only its SHA-256, so store the token
now (for example in a secret). Servers re-read the file within a second: no restart.

Roles: client (runs and artifacts of its namespaces), adapter (serve its agent keys),
service (the dagwire services themselves), admin (everything).

Examples:

  dagwire auth add --file auth.yaml --name team-a-ci --role client --namespace team-a
  dagwire auth add --file auth.yaml --name toolbox --role adapter --agent echo --agent upper
  dagwire auth add --file auth.yaml --name ops --role admin > ops.token

Exit status: 0 added, 2 invalid input (a taken name, an unknown role, a broken file).
"""


def use_token_file(path: Path | None) -> None:
    """Make `--token-file` the token of every call this process makes (it sets
    ``DAGWIRE_TOKEN_FILE``, which every client channel reads; ``DAGWIRE_TOKEN`` unset so the
    flag wins over the environment)."""
    if path is not None:
        os.environ[TOKEN_FILE_ENV] = str(path)
        os.environ.pop("DAGWIRE_TOKEN", None)


def register(app: typer.Typer) -> None:
    """Add the `auth` command group to the CLI."""
    group = typer.Typer(help=help_text(_AUTH_HELP), no_args_is_help=True)
    app.add_typer(group, name="auth")

    @group.command("add", help=help_text(_ADD_HELP))
    def add_command(
        file: Annotated[Path, typer.Option("--file", help="The auth file (YAML).")],
        name: Annotated[str, typer.Option("--name", help="The principal's name.")],
        role: Annotated[
            list[str],
            typer.Option("--role", help="client, adapter, service or admin (repeatable)."),
        ],
        namespace: Annotated[
            list[str] | None,
            typer.Option("--namespace", help="A namespace it may use (repeatable; clients)."),
        ] = None,
        agent: Annotated[
            list[str] | None,
            typer.Option("--agent", help='An agent key it may serve, or "*" (adapters).'),
        ] = None,
        tls_name: Annotated[
            list[str] | None,
            typer.Option(
                "--tls-name", help="A client-certificate name (CN or SAN) that identifies it."
            ),
        ] = None,
    ) -> None:
        known = {r.value for r in Role}
        unknown = [r for r in role if r not in known]
        if unknown:
            say("auth add", f"error: unknown role {unknown[0]!r} (client, adapter, service, admin)")
            raise typer.Exit(EXIT_INVALID)
        try:
            token = add_principal(
                file,
                name=name,
                roles=role,
                namespaces=namespace or (),
                agents=agent or (),
                tls_names=tls_name or (),
            )
        except ValueError as exc:
            say("auth add", f"error: {file}: {exc}")
            raise typer.Exit(EXIT_INVALID) from None
        except OSError as exc:
            say("auth add", f"error: {exc.filename or file}: {exc.strerror or exc}")
            raise typer.Exit(EXIT_INVALID) from None
        sys.stdout.write(token + "\n")
        if sys.stderr.isatty():
            sys.stderr.write(
                f"added principal {name!r} to {file}; the token above is shown only once\n"
            )
