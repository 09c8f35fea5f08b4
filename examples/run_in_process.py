"""Run a workflow in-process with the Python API: embedded storage, the toolbox agents.

No services and no gRPC: the core `Orchestrator` with an in-process `Dispatcher`, which is how
dagwire embeds in a Python program. (`run_through_services.py` runs the same workflows through
the gRPC services instead.)

Usage: python examples/run_in_process.py FILE [--var KEY=VALUE ...] [--data-dir DIR]
Example: .venv/bin/python examples/run_in_process.py examples/hello.yaml --var topic=YAML
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from dagwire.errors import WorkflowValidationError
from dagwire.models import RunStatus, WorkflowSpec
from dagwire.runtime import Dispatcher, Orchestrator, RunEventKind
from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore
from dagwire.toolbox import toolbox_adapters


async def main(path: Path, user_vars: dict[str, str], data_dir: Path) -> int:
    spec = WorkflowSpec.from_file(path)
    dispatcher = Dispatcher()
    for key, adapter in toolbox_adapters().items():
        dispatcher.register_adapter(key, adapter)
    artifacts = LocalArtifactStore(data_dir / "artifacts")
    executions = SqliteExecutionStore(data_dir / "executions.sqlite3")
    orchestrator = Orchestrator(artifacts, executions, dispatcher=dispatcher)
    try:
        run_id = await orchestrator.start_run(spec, user_vars=user_vars)
        print(f"run {run_id} started ({spec.name}, {len(spec.tasks)} tasks)", file=sys.stderr)
        async for event in orchestrator.watch_run(run_id):
            if event.kind is RunEventKind.TASK_STARTED:
                print(f"  {event.node_id:<12} running  (attempt {event.attempt})", file=sys.stderr)
            elif event.kind is RunEventKind.ATTEMPT_FAILED:
                retry = f", retrying in {event.retry_delay:.2f}s" if event.will_retry else ""
                print(
                    f"  {event.node_id:<12} attempt {event.attempt} failed: {event.error}{retry}",
                    file=sys.stderr,
                )
            elif event.kind is RunEventKind.TASK_FINISHED:
                print(f"  {event.node_id:<12} {event.task_status}", file=sys.stderr)
        summary = await orchestrator.wait_run(run_id)
        print(f"run {run_id}: {summary.status}")
        for node_id, node in summary.nodes.items():
            for artifact in node.artifacts:
                loaded = await artifacts.load(artifact.artifact_id or "")
                content = loaded.content or b""
                preview = (
                    content[:60].decode("utf-8", "replace")
                    if loaded.media_type.startswith("text/")
                    else f"<{loaded.size} bytes, sha256 {loaded.sha256}>"
                )
                print(f"  {node_id}/{artifact.name}: {preview}")
        print(f"artifacts and records are under {data_dir}/", file=sys.stderr)
        return 0 if summary.status is RunStatus.SUCCEEDED else 1
    finally:
        await orchestrator.aclose()
        await artifacts.aclose()
        await executions.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--var", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--data-dir", type=Path, default=Path(".dagwire"))
    args = parser.parse_args()
    variables = dict(v.split("=", 1) for v in args.var if "=" in v)
    try:
        sys.exit(asyncio.run(main(args.file, variables, args.data_dir)))
    except (WorkflowValidationError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
