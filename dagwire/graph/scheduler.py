"""Run state of one workflow's tasks: which are ready, running, finished, skipped or cancelled."""

from __future__ import annotations

from collections import deque
from enum import StrEnum

from dagwire.graph.dag import DAG

__all__ = ["NodeState", "Scheduler"]


class NodeState(StrEnum):
    """State of one task within a `Scheduler`.

    `pending` -> `ready` (every dependency completed) -> `running` -> `completed` | `failed`;
    a not-yet-started task downstream of a failure becomes `skipped`, and `cancel_pending()`
    turns every not-yet-started task that is not skipped into `cancelled`.
    """

    PENDING = "pending"
    READY = "ready"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


_PENDING = NodeState.PENDING
_READY = NodeState.READY
_RUNNING = NodeState.RUNNING
_COMPLETED = NodeState.COMPLETED
_FAILED = NodeState.FAILED
_SKIPPED = NodeState.SKIPPED
_CANCELLED = NodeState.CANCELLED


class Scheduler:
    """Tracks the state of every task of a `DAG` and says which tasks may start.

    Every transition is O(1) amortized (plus the dependents it touches): each task keeps a count
    of unmet dependencies, decremented when a dependency completes. Two ways to hand out work
    share one ready set:

    - the seed's `ready_nodes()` + `mark_running(id)`: `ready_nodes()` lists every ready id in
      spec order without changing state;
    - `take_ready(limit)`, for an execution loop: hands out up to `limit` ready ids, in the order
      they became ready, and marks them running in the same call.

    An id handed out by one is no longer offered by the other.
    """

    __slots__ = (
        "_added",
        "_counts",
        "_dag",
        "_ids",
        "_index",
        "_out_flat",
        "_out_start",
        "_queue",
        "_ready_ids",
        "_ready_sorted",
        "_removed",
        "_state",
        "_unmet",
    )

    def __init__(self, dag: DAG) -> None:
        """Start tracking a graph: tasks without dependencies are ready, the rest pending.

        Args:
            dag: the graph to schedule.
        """
        self._dag = dag
        self._ids = dag._ids
        self._index = dag._index
        self._out_flat = dag._out_flat
        self._out_start = dag._out_start
        self._unmet = dag._dependency_counts()
        roots = [i for i, count in enumerate(self._unmet) if count == 0]
        self._state = [_PENDING] * len(self._ids)
        for i in roots:
            self._state[i] = _READY
        self._counts = dict.fromkeys(NodeState, 0)
        self._counts[_PENDING] = len(self._ids) - len(roots)
        self._counts[_READY] = len(roots)
        # take_ready's FIFO; ids started through mark_running stay in it and are skipped lazily.
        self._queue: deque[int] = deque(roots)
        # ready_nodes' cache: spec indices sorted once, then patched with what changed since.
        self._ready_sorted: list[int] = roots
        self._added: list[int] = []
        self._removed = False
        self._ready_ids: list[str] | None = None

    @property
    def dag(self) -> DAG:
        """The graph being scheduled."""
        return self._dag

    @property
    def ready_count(self) -> int:
        """How many tasks are ready (may start now)."""
        return self._counts[_READY]

    @property
    def running_count(self) -> int:
        """How many tasks are running."""
        return self._counts[_RUNNING]

    def counts(self) -> dict[NodeState, int]:
        """How many tasks are in each state.

        Returns:
            Every `NodeState` -> its number of tasks (zero included).
        """
        return dict(self._counts)

    def state(self, node_id: str) -> NodeState:
        """The state of one task.

        Args:
            node_id: a task id.

        Returns:
            Its current state.

        Raises:
            KeyError: the id is not a task of the graph.
        """
        return self._state[self._lookup(node_id)]

    def ready_nodes(self) -> list[str]:
        """The tasks not yet started whose dependencies all completed, in spec order.

        Does not change any state. O(number ready) amortized: the sorted list is cached and only
        patched with the tasks that became ready or started since the previous call.

        Returns:
            The ready task ids, in spec order (a fresh list).
        """
        if self._ready_ids is None:
            state = self._state
            keep = self._ready_sorted
            added = self._added
            if self._removed:
                keep = [i for i in keep if state[i] is _READY]
                added = [i for i in added if state[i] is _READY]
            if added:
                added.sort()
                # Two sorted runs: timsort merges them in linear time.
                keep = sorted(keep + added) if keep and added[0] < keep[-1] else keep + added
            self._ready_sorted = keep
            self._added = []
            self._removed = False
            ids = self._ids
            self._ready_ids = [ids[i] for i in keep]
        return list(self._ready_ids)

    def take_ready(self, limit: int) -> list[str]:
        """Hand out up to `limit` ready tasks and mark them running.

        Tasks come in the order they became ready (initially spec order). O(k) amortized for k
        tasks handed out; meant for an execution loop that must not list every ready task after
        each completion.

        Args:
            limit: the most tasks to hand out (e.g. free slots under `max_parallel`).

        Returns:
            The ids now running, possibly fewer than `limit` (none when nothing is ready).

        Raises:
            ValueError: `limit` is negative.
        """
        if limit < 0:
            raise ValueError(f"take_ready limit must be >= 0, got {limit}")
        queue = self._queue
        state = self._state
        taken: list[int] = []
        while queue and len(taken) < limit:
            i = queue.popleft()
            if state[i] is _READY:
                state[i] = _RUNNING
                taken.append(i)
        if taken:
            self._counts[_READY] -= len(taken)
            self._counts[_RUNNING] += len(taken)
            self._removed = True
            self._ready_ids = None
        ids = self._ids
        return [ids[i] for i in taken]

    def mark_running(self, node_id: str) -> None:
        """Start a ready task.

        Args:
            node_id: a ready task id.

        Raises:
            KeyError: the id is not a task of the graph.
            ValueError: the task is not ready.
        """
        i = self._lookup(node_id)
        self._transition(i, _READY, _RUNNING)
        self._removed = True
        self._ready_ids = None

    def mark_completed(self, node_id: str) -> None:
        """Record that a running task succeeded; dependents left with no unmet dependency get ready.

        Args:
            node_id: a running task id.

        Raises:
            KeyError: the id is not a task of the graph.
            ValueError: the task is not running.
        """
        i = self._lookup(node_id)
        self._transition(i, _RUNNING, _COMPLETED)
        unmet = self._unmet
        state = self._state
        newly: list[int] = []
        out_start = self._out_start
        for j in self._out_flat[out_start[i] : out_start[i + 1]]:
            unmet[j] -= 1
            if unmet[j] == 0 and state[j] is _PENDING:
                state[j] = _READY
                newly.append(j)
        if newly:
            self._counts[_PENDING] -= len(newly)
            self._counts[_READY] += len(newly)
            self._queue.extend(newly)
            self._added.extend(newly)
            self._ready_ids = None

    def mark_failed(self, node_id: str) -> list[str]:
        """Record that a running task failed for good; every task downstream of it is skipped.

        Only pending tasks are skipped (a task downstream of a running one cannot be ready or
        started); tasks already skipped or cancelled keep their state, and the walk does not go
        past them, so each task is skipped at most once and the total work over a run is linear.

        Args:
            node_id: a running task id.

        Returns:
            The ids this call newly skipped, in spec order.

        Raises:
            KeyError: the id is not a task of the graph.
            ValueError: the task is not running.
        """
        i = self._lookup(node_id)
        self._transition(i, _RUNNING, _FAILED)
        state = self._state
        out_flat, out_start = self._out_flat, self._out_start
        skipped: list[int] = []
        stack = [i]
        while stack:
            k = stack.pop()
            for j in out_flat[out_start[k] : out_start[k + 1]]:
                if state[j] is _PENDING:
                    state[j] = _SKIPPED
                    skipped.append(j)
                    stack.append(j)
        if skipped:
            self._counts[_PENDING] -= len(skipped)
            self._counts[_SKIPPED] += len(skipped)
            skipped.sort()
        ids = self._ids
        return [ids[j] for j in skipped]

    def cancel_pending(self) -> list[str]:
        """Cancel every task not yet started (pending or ready; skipped ones stay skipped).

        Used for `fail_fast` and run cancellation; running tasks are left to finish. One O(V)
        pass (a run calls it at most once or twice).

        Returns:
            The ids this call cancelled, in spec order.
        """
        state = self._state
        cancelled = [i for i, s in enumerate(state) if s is _PENDING or s is _READY]
        for i in cancelled:
            state[i] = _CANCELLED
        self._counts[_CANCELLED] += len(cancelled)
        self._counts[_PENDING] = 0
        self._counts[_READY] = 0
        self._queue.clear()
        self._ready_sorted = []
        self._added = []
        self._removed = False
        self._ready_ids = None
        ids = self._ids
        return [ids[i] for i in cancelled]

    def is_complete(self) -> bool:
        """True when every task completed (O(1)).

        Returns:
            Whether the whole graph succeeded.
        """
        return self._counts[_COMPLETED] == len(self._ids)

    def is_blocked(self) -> bool:
        """True when the graph is not complete and nothing is ready or running (O(1)).

        This is how a run that had a failure (or a cancellation) ends.

        Returns:
            Whether no further progress is possible.
        """
        counts = self._counts
        return (
            counts[_COMPLETED] != len(self._ids) and counts[_READY] == 0 and counts[_RUNNING] == 0
        )

    def _lookup(self, node_id: str) -> int:
        try:
            return self._index[node_id]
        except KeyError:
            raise KeyError(f"unknown task {node_id!r}") from None

    def _transition(self, i: int, expected: NodeState, new: NodeState) -> None:
        current = self._state[i]
        if current is not expected:
            raise ValueError(
                f"cannot mark task {self._ids[i]!r} {new}: it is {current}, not {expected}"
            )
        self._state[i] = new
        self._counts[current] -= 1
        self._counts[new] += 1
