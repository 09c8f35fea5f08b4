"""`dagwire adapters`: the adapter instances the dispatcher routes to, with load and health."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dagwire.rpc.dispatcher_client import AdapterInfo, RemoteDispatcher
from dagwire_cli import addresses
from dagwire_cli.addresses import DISPATCHER, DispatcherOption
from dagwire_cli.errors import EXIT_OK, run_command, say
from dagwire_cli.output import OutputFormat, help_text, print_json
from dagwire_cli.terminal import terminal_text

__all__ = ["adapter_line", "register"]

_ADAPTERS_HELP = """\
List the adapter instances registered with the dispatcher.

One line per instance: address, agent keys, load (calls in flight / capacity) and health.

Examples:

  dagwire adapters
  dagwire adapters --agent echo
  dagwire adapters --dispatcher 10.0.0.5:50052 --output json

Exit status: 0 listed (also when there are none), 3 the dispatcher cannot be reached.
"""


def register(app: typer.Typer) -> None:
    """Add the `adapters` command to the CLI."""

    @app.command("adapters", help=help_text(_ADAPTERS_HELP))
    def adapters_command(
        agent: Annotated[
            str, typer.Option("--agent", help="Only instances serving this agent key.")
        ] = "",
        dispatcher: DispatcherOption = DISPATCHER.default,
        output: Annotated[
            OutputFormat,
            typer.Option("--output", "-O", help="text or json.", case_sensitive=False),
        ] = "text",
    ) -> None:
        try:
            address = addresses.resolve(DISPATCHER, dispatcher)
        except ValueError as exc:
            say("adapters", f"error: {exc}")
            raise typer.Exit(2) from None

        async def body() -> int:
            client = RemoteDispatcher(address)
            try:
                found = await client.list_adapters(agent=agent)
            finally:
                await client.aclose()
            if output == "json":
                print_json([adapter_json(a) for a in found])
            elif not found:
                which = f" serving {agent!r}" if agent else ""
                say("adapters", f"no adapter instance{which} is registered")
            else:
                typer.echo("\n".join(adapter_lines(found)))
            return EXIT_OK

        run_command("adapters", body, target=addresses.target(DISPATCHER, address))


def adapter_line(adapter: AdapterInfo) -> tuple[str, str, str, str]:
    """The columns of one instance: address, agent keys, load, health (what the dispatcher
    was told by adapters, escaped: `terminal_text`)."""
    return (
        terminal_text(adapter.address),
        terminal_text(",".join(adapter.agents)) or "-",
        f"load {adapter.in_flight}/{adapter.capacity}",
        "healthy" if adapter.healthy else "unhealthy",
    )


def adapter_lines(found: list[AdapterInfo]) -> list[str]:
    """One aligned line per instance."""
    rows = [adapter_line(a) for a in found]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]


def adapter_json(adapter: AdapterInfo) -> dict[str, Any]:
    """One instance as JSON."""
    return {
        "instance_id": adapter.instance_id,
        "address": adapter.address,
        "agents": list(adapter.agents),
        "in_flight": adapter.in_flight,
        "capacity": adapter.capacity,
        "healthy": adapter.healthy,
        "last_heartbeat": adapter.last_heartbeat.isoformat() if adapter.last_heartbeat else None,
    }
