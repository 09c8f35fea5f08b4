"""Scheduler benchmarks: DAG construction and scheduling to completion at 100,000 tasks."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dagwire.graph import DAG, Scheduler
from dagwire.models import WorkflowSpec

# Tasks an orchestrator keeps in flight at once (its `max_parallel`) in the take_ready runs.
WINDOW = 64


def chain_spec(n: int) -> WorkflowSpec:
    """t0 <- t1 <- ... <- t(n-1): one task ready at a time."""
    tasks: list[dict[str, Any]] = [{"id": "t0", "agent": "noop"}]
    tasks += [{"id": f"t{i}", "agent": "noop", "depends_on": [f"t{i - 1}"]} for i in range(1, n)]
    return WorkflowSpec.from_dict({"name": f"chain-{n}", "tasks": tasks})


def reversed_chain_spec(n: int) -> WorkflowSpec:
    """The chain listed last task first: spec order is not topological (Kahn's + heap path)."""
    spec = chain_spec(n)
    return WorkflowSpec.from_dict(
        {"name": spec.name, "tasks": [task.model_dump() for task in reversed(spec.tasks)]}
    )


def fan_out_spec(n: int) -> WorkflowSpec:
    """One root and n-1 tasks that depend on it: n-1 tasks get ready at once."""
    tasks: list[dict[str, Any]] = [{"id": "t0", "agent": "noop"}]
    tasks += [{"id": f"t{i}", "agent": "noop", "depends_on": ["t0"]} for i in range(1, n)]
    return WorkflowSpec.from_dict({"name": f"fan-out-{n}", "tasks": tasks})


def layered_spec(n: int, width: int = 1000) -> WorkflowSpec:
    """Layers of `width` tasks; each task depends on two tasks of the layer before (diamonds)."""
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        layer, k = divmod(i, width)
        task: dict[str, Any] = {"id": f"t{i}", "agent": "noop"}
        if layer:
            base = (layer - 1) * width
            task["depends_on"] = [f"t{base + k}", f"t{base + (k + 1) % width}"]
        tasks.append(task)
    return WorkflowSpec.from_dict({"name": f"layered-{n}", "tasks": tasks})


def drive_take_ready(scheduler: Scheduler, window: int = WINDOW) -> int:
    """Run to completion as the orchestrator does: keep `window` tasks in flight, FIFO."""
    running: deque[str] = deque(scheduler.take_ready(window))
    done = 0
    while running:
        scheduler.mark_completed(running.popleft())
        done += 1
        running.extend(scheduler.take_ready(window - len(running)))
    assert scheduler.is_complete()
    return done


def drive_ready_nodes(scheduler: Scheduler) -> int:
    """Run to completion as the seed does: start every ready task, then complete them."""
    done = 0
    while not scheduler.is_complete():
        ready = scheduler.ready_nodes()
        for node_id in ready:
            scheduler.mark_running(node_id)
        for node_id in ready:
            scheduler.mark_completed(node_id)
        done += len(ready)
    return done


def _row(benchmark: str, tasks: int, seconds: float) -> dict[str, Any]:
    return {
        "benchmark": benchmark,
        "tasks": tasks,
        "seconds": round(seconds, 3),
        "per_task_us": round(seconds / tasks * 1e6, 2),
    }


def _timed(action: Callable[..., object], *args: Any) -> float:
    started = time.perf_counter()
    action(*args)
    return time.perf_counter() - started


def _scheduled(drive: Callable[[Scheduler], int], dag: DAG) -> None:
    done = drive(Scheduler(dag))
    assert done == len(dag), (done, len(dag))


def run(n: int = 100_000) -> list[dict[str, Any]]:
    """Measure DAG construction and scheduling to completion for chain, fan-out and layered DAGs.

    Spec parsing is not timed (it is the spec module's cost, not the graph's).

    Args:
        n: tasks per DAG.

    Returns:
        One row per measurement: `benchmark`, `tasks`, `seconds`, `per_task_us`.
    """
    shapes = {
        "chain": chain_spec,
        "chain listed in reverse": reversed_chain_spec,
        "fan-out": fan_out_spec,
        "layered": layered_spec,
    }
    rows: list[dict[str, Any]] = []
    for shape, build in shapes.items():
        spec = build(n)
        started = time.perf_counter()
        dag = DAG.from_workflow(spec)
        rows.append(_row(f"DAG.from_workflow {shape}", n, time.perf_counter() - started))
        nodes = list(dag.nodes.values())
        rows.append(_row(f"DAG(task nodes) {shape}", n, _timed(DAG, nodes)))
        rows.append(_row(f"DAG.topological_order {shape}", n, _timed(dag.topological_order)))
        rows.append(
            _row(
                f"Scheduler take_ready/mark_completed {shape}",
                n,
                _timed(_scheduled, drive_take_ready, dag),
            )
        )
        rows.append(
            _row(
                f"Scheduler ready_nodes/mark_running/mark_completed {shape}",
                n,
                _timed(_scheduled, drive_ready_nodes, dag),
            )
        )
        scheduler = Scheduler(dag)
        (root,) = scheduler.take_ready(1)
        rows.append(
            _row(
                f"Scheduler mark_failed(first root) {shape}", n, _timed(scheduler.mark_failed, root)
            )
        )
    return rows


if __name__ == "__main__":
    from bench.table import print_table

    print_table(run(), title="Scheduler alone (100,000 tasks)")
