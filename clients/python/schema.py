"""`dagwire schema`: the JSON Schema of workflow spec files, for editors and validators."""

from __future__ import annotations

import typer

from dagwire.spec import WorkflowSpec
from dagwire_cli.output import help_text, print_json

__all__ = ["register"]

_SCHEMA_HELP = """\
Print the JSON Schema of workflow spec v1 files on stdout.

Point your editor at it to get completion and checks while writing a spec (YAML language
servers read a `# yaml-language-server: $schema=...` comment on the first line).

Examples:

  dagwire schema > dagwire.schema.json
  # first line of flow.yaml:
  # yaml-language-server: $schema=./dagwire.schema.json
"""


def register(app: typer.Typer) -> None:
    """Add the `schema` command to the CLI."""

    @app.command("schema", help=help_text(_SCHEMA_HELP))
    def schema() -> None:
        print_json(WorkflowSpec.json_schema())
