"""Entry point of the toolbox adapter: the SDK serving the toolbox agents."""

from __future__ import annotations

from collections.abc import Sequence

from dagwire.sdk import serve
from dagwire_services.adapters.toolbox.servicer import toolbox_agents

__all__ = ["CAPACITY", "main"]

CAPACITY = 500


def main(argv: Sequence[str] | None = None) -> int:
    """Run the toolbox adapter (``python -m dagwire_services.adapters.toolbox``).

    Args:
        argv: command-line arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 after a clean stop, 2 for invalid settings or a busy address.
    """
    return serve(
        toolbox_agents(),
        capacity=CAPACITY,
        version="0.1.0",
        argv=argv,
        prog="dagwire-toolbox",
        service="toolbox",
    )
