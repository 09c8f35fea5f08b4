"""Entry point of the `dagwire` console script: one Typer app, one module per command group."""

from __future__ import annotations

import typer

from dagwire_cli import up

app = typer.Typer(
    name="dagwire",
    help="Run workflows of agent tasks as a DAG across gRPC services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
up.register(app)


@app.callback()
def _root() -> None:
    """Run workflows of agent tasks as a DAG across gRPC services."""


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
