"""`dagwire up`: the local stack as separate processes (filled in by issue 6)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `up` command to the CLI."""

    @app.command("up")
    def up() -> None:
        """Start store, dispatcher, orchestrator and the toolbox adapter on loopback."""
        typer.echo("dagwire up: not implemented yet", err=True)
        raise typer.Exit(2)
