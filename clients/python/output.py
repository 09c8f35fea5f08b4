"""Where output goes (results on stdout, everything else on stderr) and how results look."""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from dagwire.models import Artifact, RunSummary
from dagwire_cli.progress import RunProgress, format_seconds
from dagwire_cli.terminal import json_text, terminal_text

__all__ = [
    "OutputFormat",
    "artifact_json",
    "format_size",
    "help_text",
    "print_json",
    "print_summary",
    "stderr_console",
    "stdout_console",
    "summary_json",
]

OutputFormat = Literal["text", "json"]

_WIDE = 200  # columns for tables written to a pipe, so ids are never wrapped or cut


def stderr_console() -> Console:
    """The console for progress and messages (a terminal gets colour and live redraws)."""
    return Console(stderr=True, highlight=False)


def stdout_console() -> Console:
    """The console for results; off a terminal, wide enough that no id is wrapped."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=_WIDE, no_color=True)
    return console


def help_text(text: str) -> str:
    """Help text whose paragraphs rewrap to the terminal: lines of a paragraph are joined,
    indented lines (examples) and blank lines are kept as written."""
    out: list[str] = []
    for line in text.strip("\n").splitlines():
        joinable = line and not line.startswith(" ") and out and out[-1]
        if joinable and not out[-1].startswith(" "):
            out[-1] += " " + line
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def print_json(value: Any) -> None:
    """`value` as indented JSON on stdout (C1 and bidi controls escaped too: `json_text`)."""
    sys.stdout.write(json_text(json.dumps(value, indent=2, ensure_ascii=False)) + "\n")
    sys.stdout.flush()


def artifact_json(artifact: Artifact) -> dict[str, Any]:
    """An artifact in the summary: id, name, sha256, size."""
    return {
        "artifact_id": artifact.artifact_id,
        "name": artifact.name,
        "sha256": artifact.sha256,
        "size": artifact.size,
    }


def summary_json(summary: RunSummary) -> dict[str, Any]:
    """The `--output json` summary of docs/contracts.md §9, exactly."""
    return {
        "run_id": summary.run_id,
        "status": str(summary.status),
        "nodes": {
            node_id: {
                "status": str(node.status),
                "attempts": node.attempts,
                "error": node.error,
                "artifacts": [artifact_json(a) for a in node.artifacts],
            }
            for node_id, node in summary.nodes.items()
        },
    }


def format_size(size: int | None) -> str:
    """``512 B``, ``1.5 KiB``, ``64.0 MiB``; ``?`` when unknown."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def print_summary(console: Console, summary: RunSummary, progress: RunProgress | None) -> None:
    """The text summary: one row per task, then every artifact with how to download it.

    Every value from the server goes through `terminal_text`, and table cells are `Text`, so
    neither escapes nor rich markup in them reach the terminal.
    """
    safe = terminal_text
    name = f" ({safe(summary.name, one_line=True)})" if summary.name else ""
    console.print(
        f"run {safe(summary.run_id)}{name}: {safe(str(summary.status))}",
        markup=False,
        soft_wrap=True,
    )
    if summary.error:
        console.print(f"  {safe(summary.error, one_line=True)}", markup=False, soft_wrap=True)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("task", "status", "attempts", "time", "output / error"):
        table.add_column(column, no_wrap=column != "output / error")
    artifacts: list[tuple[str, Artifact]] = []
    for node_id, node in summary.nodes.items():
        row = progress.rows.get(node_id) if progress is not None else None
        outputs = ", ".join(f"{a.name} ({format_size(a.size)})" for a in node.artifacts)
        detail = node.error if node.error else outputs
        table.add_row(
            Text(safe(node_id)),
            Text(safe(str(node.status))),
            str(node.attempts),
            format_seconds(row.duration) if row is not None else "",
            Text(safe(detail, one_line=True)),
        )
        artifacts += [(node_id, a) for a in node.artifacts]
    console.print(table)
    if not artifacts:
        return
    console.print()
    console.print(
        "artifacts (download one with `dagwire artifacts get ID -o FILE`):",
        markup=False,
        soft_wrap=True,
    )
    # Plain aligned lines, never a table: ids must stay whole (copyable) on a narrow terminal.
    lines = [
        (
            safe(artifact.artifact_id or ""),
            safe(f"{node_id}/{artifact.name}"),
            format_size(artifact.size),
            f"sha256 {safe(artifact.sha256)}" if artifact.sha256 else "",
        )
        for node_id, artifact in artifacts
    ]
    widths = [max(len(cells[i]) for cells in lines) for i in range(3)]
    for cells in lines:
        text = "  ".join(cell.ljust(width) for cell, width in zip(cells[:3], widths, strict=True))
        console.print(
            f"  {text}  {cells[3]}".rstrip(), markup=False, soft_wrap=True, highlight=False
        )
