"""The dependency graph of a workflow: task nodes, adjacency, topological order, cycle detection."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

from dagwire.errors import WorkflowValidationError

# `dagwire.models` imports `dagwire.spec`, and the spec parser imports `find_cycle` from here,
# so this module must not import `dagwire.models` at import time (see `DAG.from_workflow`).
if TYPE_CHECKING:
    from dagwire.models import TaskNode, WorkflowSpec

__all__ = ["DAG", "find_cycle"]


def _unknown_dependency(node_id: str, dep: str) -> WorkflowValidationError:
    return WorkflowValidationError(
        f"task {node_id!r} depends on unknown task {dep!r}", node_id=node_id, field="depends_on"
    )


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Find one dependency cycle, as a path that starts and ends on the same task.

    The walk is an iterative depth-first search (no recursion, so any depth works) over the
    `depends_on` edges, starting from the tasks in mapping order and following each task's
    dependencies in order; it is linear in tasks plus edges. Ids that are not keys of `deps`
    (unknown dependencies) are ignored.

    Args:
        deps: task id -> the ids it depends on.

    Returns:
        The first cycle found, e.g. `["a", "b", "a"]` when `a` depends on `b` and `b` on `a`
        (`["a", "a"]` for a task that depends on itself), or `None` when there is none.
    """
    done: set[str] = set()
    for start in deps:
        if start in done:
            continue
        path = [start]
        on_path = {start: 0}
        pending: list[Iterator[str]] = [iter(deps[start])]
        while pending:
            for dep in pending[-1]:
                if dep in on_path:
                    return [*path[on_path[dep] :], dep]
                if dep in done or dep not in deps:
                    continue
                on_path[dep] = len(path)
                path.append(dep)
                pending.append(iter(deps[dep]))
                break
            else:
                pending.pop()
                node = path.pop()
                del on_path[node]
                done.add(node)
    return None


class DAG:
    """The dependency graph of one workflow.

    Nodes keep the spec's order (the *spec index* of a task is its position in the spec); every
    query that returns several ids returns them in a documented, deterministic order. A `DAG` is
    immutable once built; run state lives in a `Scheduler`.

    Attributes:
        nodes: task id -> `TaskNode`, in spec order, with params exactly as written in the spec.
            Treat it as read-only.
    """

    __slots__ = (
        "_dep_flat",
        "_dep_start",
        "_ids",
        "_index",
        "_out_flat",
        "_out_start",
        "_topo",
        "nodes",
    )

    def __init__(self, nodes: Iterable[TaskNode]) -> None:
        """Build and validate a graph from task nodes given in spec order.

        Repeated ids inside one `depends_on` count once.

        Args:
            nodes: the tasks, in spec order.

        Raises:
            WorkflowValidationError: on a duplicate task id, a dependency on an unknown task, or
                a dependency cycle (the message shows the cycle as a path, e.g.
                `dependency cycle: a -> b -> a`).
        """
        listed = list(nodes)
        self.nodes: dict[str, TaskNode] = {node.id: node for node in listed}
        if len(self.nodes) != len(listed):
            seen: set[str] = set()
            for node in listed:
                if node.id in seen:
                    raise WorkflowValidationError(
                        f"duplicate task id {node.id!r}", node_id=node.id, field="id"
                    )
                seen.add(node.id)
        self._ids: list[str] = list(self.nodes)
        n = len(self._ids)
        index = self._index = dict(zip(self._ids, range(n), strict=True))
        # Adjacency in compressed sparse rows: the dependencies of task i are
        # _dep_flat[_dep_start[i]:_dep_start[i + 1]] (depends_on order, each once) and its
        # dependents _out_flat[_out_start[i]:_out_start[i + 1]] (spec order). Flat int lists keep
        # a 100,000-task graph to a handful of objects (no per-task lists for the GC to walk).
        dep_flat: list[int] = []
        dep_start = [0] * (n + 1)
        out_count = [0] * n
        in_spec_order = True  # every dependency listed before its dependent: no cycle possible
        for i, node in enumerate(listed):
            deps = node.depends_on
            if len(deps) == 1:
                j = index.get(deps[0], -1)
                if j < 0:
                    raise _unknown_dependency(node.id, deps[0])
                dep_flat.append(j)
                out_count[j] += 1
                in_spec_order = in_spec_order and j < i
            elif deps:
                found = [index.get(dep, -1) for dep in deps]
                if -1 in found:
                    raise _unknown_dependency(node.id, deps[found.index(-1)])
                for j in dict.fromkeys(found):  # a repeated id counts once
                    dep_flat.append(j)
                    out_count[j] += 1
                    in_spec_order = in_spec_order and j < i
            dep_start[i + 1] = len(dep_flat)
        out_start = [0] * (n + 1)
        total = 0
        for j, count in enumerate(out_count):
            total += count
            out_start[j + 1] = total
        out_flat = [0] * total
        fill = out_start[:n]
        for i in range(n):
            for j in dep_flat[dep_start[i] : dep_start[i + 1]]:
                out_flat[fill[j]] = i
                fill[j] += 1
        self._dep_flat = dep_flat
        self._dep_start = dep_start
        self._out_flat = out_flat
        self._out_start = out_start
        # Spec order is already topological (and the stable one) when no edge points backwards.
        self._topo: list[str] | None = self._ids if in_spec_order else None
        if not in_spec_order and not self._is_acyclic():
            cycle = find_cycle({node_id: node.depends_on for node_id, node in self.nodes.items()})
            assert cycle is not None  # Kahn's algorithm left tasks over, so there is one
            raise WorkflowValidationError(
                "dependency cycle: " + " -> ".join(cycle), node_id=cycle[0], field="depends_on"
            )

    @classmethod
    def from_workflow(cls, spec: WorkflowSpec) -> DAG:
        """Build the graph of a workflow spec.

        Params are kept exactly as written (no `${user.*}` substitution).

        Args:
            spec: the workflow spec.

        Returns:
            The graph, with one `TaskNode` per task in spec order.

        Raises:
            WorkflowValidationError: on a duplicate id, an unknown dependency or a cycle.
        """
        from dagwire.models import TaskNode  # not at the top: see the note at the imports

        return cls(TaskNode.from_spec(task) for task in spec.tasks)

    def _dependency_counts(self) -> list[int]:
        """The number of (distinct) dependencies of each task, by spec index."""
        starts = self._dep_start
        return [b - a for a, b in pairwise(starts)]

    def _dependents_of(self, i: int) -> list[int]:
        """The spec indices of the direct dependents of task i, in spec order (a fresh list)."""
        return self._out_flat[self._out_start[i] : self._out_start[i + 1]]

    def _is_acyclic(self) -> bool:
        """Kahn's algorithm without ordering: true when every task gets released (linear)."""
        unmet = self._dependency_counts()
        queue = deque(i for i, count in enumerate(unmet) if count == 0)
        seen = 0
        out_flat, out_start = self._out_flat, self._out_start
        while queue:
            i = queue.popleft()
            seen += 1
            for j in out_flat[out_start[i] : out_start[i + 1]]:
                unmet[j] -= 1
                if unmet[j] == 0:
                    queue.append(j)
        return seen == len(unmet)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __repr__(self) -> str:
        return f"DAG({len(self._ids)} tasks)"

    def index(self, node_id: str) -> int:
        """The spec index of a task (its position in the spec).

        Args:
            node_id: a task id.

        Returns:
            The 0-based position of the task in the spec.

        Raises:
            KeyError: the id is not a task of this graph.
        """
        try:
            return self._index[node_id]
        except KeyError:
            raise KeyError(f"unknown task {node_id!r}") from None

    def dependencies(self, node_id: str) -> list[str]:
        """The direct dependencies of a task, in its `depends_on` order (each id once).

        Args:
            node_id: a task id.

        Returns:
            The ids the task depends on.

        Raises:
            KeyError: the id is not a task of this graph.
        """
        i = self.index(node_id)
        ids = self._ids
        return [ids[j] for j in self._dep_flat[self._dep_start[i] : self._dep_start[i + 1]]]

    def dependents(self, node_id: str) -> list[str]:
        """The tasks that depend directly on a task, in spec order.

        Args:
            node_id: a task id.

        Returns:
            The ids of the direct dependents.

        Raises:
            KeyError: the id is not a task of this graph.
        """
        ids = self._ids
        return [ids[j] for j in self._dependents_of(self.index(node_id))]

    def descendants(self, node_id: str) -> list[str]:
        """Every task downstream of a task (transitive dependents), itself excluded.

        Iterative breadth-first walk, linear in the size of the downstream part.

        Args:
            node_id: a task id.

        Returns:
            The downstream ids, nearest first (breadth-first; each id once).

        Raises:
            KeyError: the id is not a task of this graph.
        """
        start = self.index(node_id)
        out_flat, out_start = self._out_flat, self._out_start
        seen = {start}
        order: list[int] = []
        queue = deque([start])
        while queue:
            i = queue.popleft()
            for j in out_flat[out_start[i] : out_start[i + 1]]:
                if j not in seen:
                    seen.add(j)
                    order.append(j)
                    queue.append(j)
        ids = self._ids
        return [ids[j] for j in order]

    def roots(self) -> list[str]:
        """The tasks with no dependencies, in spec order.

        Returns:
            The ids of the root tasks.
        """
        ids = self._ids
        return [ids[i] for i, count in enumerate(self._dependency_counts()) if count == 0]

    def topological_order(self) -> list[str]:
        """Every task id, each after all of its dependencies.

        Stable: whenever several tasks could come next, the one earliest in the spec does, so a
        spec already listed in dependency order comes back unchanged. Kahn's algorithm with a
        heap of spec indices: O(V log V + E) once, then cached.

        Returns:
            The task ids in topological order.
        """
        if self._topo is None:
            unmet = self._dependency_counts()
            heap = [i for i, count in enumerate(unmet) if count == 0]  # ascending: a valid heap
            out_flat, out_start = self._out_flat, self._out_start
            ids = self._ids
            order: list[str] = []
            while heap:
                i = heapq.heappop(heap)
                order.append(ids[i])
                for j in out_flat[out_start[i] : out_start[i + 1]]:
                    unmet[j] -= 1
                    if unmet[j] == 0:
                        heapq.heappush(heap, j)
            self._topo = order
        return list(self._topo)
