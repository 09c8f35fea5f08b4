"""Run a workflow through the gRPC services: `dagwire up` and `dagwire run` in one command.

This is what `make run` does. It brings the local stack up (store, dispatcher, orchestrator and
the toolbox adapter, each its own process, embedded storage under --data-dir) with
`dagwire_cli.stack.LocalStack`, runs `dagwire run FILE` against it (live progress on a
terminal, the summary and the artifact ids at the end), says where the artifacts are, and
stops the stack.

Usage: python examples/run_through_services.py FILE [--var KEY=VALUE ...] [--data-dir DIR]
                                                    [--port-base N]

The same by hand, in two terminals:  dagwire up   and   dagwire run FILE
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from dagwire_cli.stack import (
    DEFAULT_PORT_BASE,
    LocalStack,
    PortBusyError,
    StackError,
    StackSettingsError,
)


def say(line: str) -> None:
    """Our own lines go to stderr, like the CLI's progress; stdout is `dagwire run`'s."""
    print(line, file=sys.stderr, flush=True)


async def main(spec: Path, cli_args: list[str], data_dir: Path, port_base: int) -> int:
    say(f"make run: starting store, dispatcher, orchestrator and toolbox (data in {data_dir})")
    async with LocalStack(data_dir, port_base=port_base) as stack:
        say(
            f"make run: ready in {stack.startup_seconds:.1f} s (orchestrator "
            f"{stack.orchestrator_addr}, logs in {stack.log_dir}); running `dagwire run {spec}`"
        )
        # The CLI as a user runs it, pointed at this stack through the DAGWIRE_*_ADDR variables.
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dagwire_cli.main",
            "run",
            str(spec),
            *cli_args,
            env={**os.environ, **stack.client_env},
        )
        code = await cli.wait()
        say(
            f"make run: artifacts are stored under {data_dir / 'artifacts'} and run records in "
            f"{data_dir / 'executions.sqlite3'}; with `dagwire up --data-dir {data_dir}` running, "
            "`dagwire artifacts get ID -o FILE` downloads one and `dagwire runs` lists the runs"
        )
        say("make run: stopping the stack")
    say("make run: stopped")
    return code


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--var", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-dir", type=Path, default=Path(".dagwire"))
    parser.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE)
    args = parser.parse_args()
    if not args.file.is_file():
        parser.error(f"{args.file}: no such workflow file")
    passed = [item for var in args.var for item in ("--var", var)]
    try:
        sys.exit(asyncio.run(main(args.file, passed, args.data_dir.absolute(), args.port_base)))
    except StackError as exc:
        say(f"make run: error: {exc}")
        sys.exit(2 if isinstance(exc, PortBusyError | StackSettingsError) else 1)
    except KeyboardInterrupt:
        say("make run: interrupted; the stack was stopped")
        sys.exit(130)
