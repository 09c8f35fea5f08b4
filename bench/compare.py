"""The full-stack per-task figures of this checkout side by side with a baseline commit's.

The baseline (``DAGWIRE_BENCH_BASELINE``, default ``edae147``: main before durable runs) is
checked out with ``git worktree add --detach`` into a temporary directory; its services run
from there (``PYTHONPATH`` points at a folder of links naming its ``dagwire``,
``dagwire_services`` and ``dagwire_cli`` packages), while this process's client code stays
this checkout's. This checkout's services run the same way, from links to its own folders
(in a git worktree the installed distribution may be the main worktree's). Each backend is
measured baseline first, then this checkout, then the baseline and this checkout again
(``DAGWIRE_BENCH_ROUNDS`` rounds, default 1), so that both see the same machine; the table
keeps the best figure of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import full_stack
from bench.full_stack import BACKENDS, ServiceCode
from bench.table import print_table
from tests.servers import REPO_ROOT

__all__ = ["run"]

DEFAULT_BASELINE = "edae147"
#: How much slower than the baseline a figure may be (issue 11: no worse by more than 10 %).
ALLOWED_SLOWDOWN = 0.10


def _code_of(tree: Path, links: Path) -> ServiceCode:
    """The environment that runs the services of the checkout `tree`: `links` (a new folder)
    names its three packages, so that none comes from the installed distribution (which may
    be another checkout's, such as the main worktree's when this one is a git worktree)."""
    links.mkdir()
    for name, folder in (
        ("dagwire", "dagwire"),
        ("dagwire_services", "services"),
        ("dagwire_cli", "clients/python"),
    ):
        (links / name).symlink_to(tree / folder, target_is_directory=True)
    return ServiceCode(tree, {"PYTHONPATH": f"{links}{os.pathsep}{tree}"})


@contextlib.contextmanager
def current_code() -> Iterator[ServiceCode]:
    """The environment that runs this checkout's services."""
    root = Path(tempfile.mkdtemp(prefix="dagwire-bench-current-"))
    try:
        yield _code_of(REPO_ROOT, root / "links")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def baseline_code(commit: str) -> Iterator[ServiceCode]:
    """A detached worktree of `commit` and the environment that runs its services."""
    root = Path(tempfile.mkdtemp(prefix="dagwire-bench-baseline-"))
    tree = root / "tree"
    subprocess.run(
        ["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", "--quiet", str(tree), commit],
        check=True,
    )
    try:
        yield _code_of(tree, root / "links")
    finally:
        subprocess.run(
            ["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)],
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


async def _measure(name: str, code: ServiceCode | None, repeat: int) -> list[dict[str, Any]]:
    full_stack.SERVICE_CODE = code
    log_dir = Path(tempfile.mkdtemp(prefix="dagwire-bench-compare-"))
    try:
        measured = await full_stack._measure_backend(name, repeat, False, log_dir)
        return [
            {**times, **cpu} for times, cpu in zip(measured["times"], measured["cpu"], strict=True)
        ]
    finally:
        full_stack.SERVICE_CODE = None
        shutil.rmtree(log_dir, ignore_errors=True)


async def _run() -> list[dict[str, Any]]:
    commit = os.environ.get("DAGWIRE_BENCH_BASELINE", DEFAULT_BASELINE)
    repeat = max(1, int(os.environ.get("DAGWIRE_BENCH_REPEAT", "5")))
    rounds = max(1, int(os.environ.get("DAGWIRE_BENCH_ROUNDS", "1")))
    backends = [
        b.strip()
        for b in os.environ.get("DAGWIRE_BENCH_BACKENDS", ",".join(BACKENDS)).split(",")
        if b.strip()
    ]
    best: dict[tuple[str, str, str], float] = {}
    # CPU ms per task of each process: the lowest of the rounds (CPU time is far less sensitive
    # than wall time to what else the machine runs, so it shows a change that noise hides)
    cpu: dict[tuple[str, str, str], dict[str, float]] = {}
    with baseline_code(commit) as baseline, current_code() as current:
        for backend in backends:
            for _ in range(rounds):
                for label, code in (("baseline", baseline), ("current", current)):
                    for row in await _measure(backend, code, repeat):
                        key = (backend, str(row["shape"]), label)
                        value = float(row["best_ms_task"])
                        best[key] = min(best.get(key, value), value)
                        seen = cpu.setdefault(key, {})
                        for column, text in row.items():
                            if column.endswith("_cpu_ms") and text != "-":
                                ms = float(text)
                                seen[column] = min(seen.get(column, ms), ms)
    print_table(
        _cpu_rows(cpu, commit),
        title="Full service stack: CPU ms per task of each "
        f"process, {commit} vs this checkout (lowest of {rounds} round(s))",
    )
    rows: list[dict[str, Any]] = []
    for backend, shape in sorted({(b, s) for b, s, _ in best}):
        before, after = best[(backend, shape, "baseline")], best[(backend, shape, "current")]
        change = (after - before) / before
        rows.append(
            {
                "backend": backend,
                "shape": shape,
                f"{commit}_ms_task": f"{before:.2f}",
                "current_ms_task": f"{after:.2f}",
                "change": f"{change:+.1%}",
                "within_10pct": "yes" if change <= ALLOWED_SLOWDOWN else "NO",
            }
        )
    return rows


def _cpu_rows(
    cpu: dict[tuple[str, str, str], dict[str, float]], commit: str
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for backend, shape in sorted({(b, s) for b, s, _ in cpu}):
        before = cpu.get((backend, shape, "baseline"), {})
        after = cpu.get((backend, shape, "current"), {})
        for column in sorted(set(before) | set(after), key=lambda c: c == "total_cpu_ms"):
            old, new = before.get(column), after.get(column)
            rows.append(
                {
                    "backend": backend,
                    "shape": shape,
                    "process": column.removesuffix("_cpu_ms"),
                    f"{commit}_cpu_ms": "-" if old is None else f"{old:.2f}",
                    "current_cpu_ms": "-" if new is None else f"{new:.2f}",
                    "change": f"{(new - old) / old:+.1%}" if old and new is not None else "-",
                }
            )
    return rows


def run() -> list[dict[str, Any]]:
    """Rows: best ms/task of each shape and backend, baseline commit vs this checkout."""
    return asyncio.run(_run())
