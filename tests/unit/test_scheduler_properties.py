"""Property-based tests: the graph and the scheduler against brute-force models on random DAGs."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagwire.errors import WorkflowValidationError
from dagwire.graph import DAG, NodeState, Scheduler, find_cycle
from dagwire.models import TaskNode

Deps = dict[str, list[str]]


@st.composite
def random_dags(draw: st.DrawFn, max_tasks: int = 12) -> tuple[list[str], Deps]:
    """A random DAG: task i depends on a random subset of tasks < i; listed in a random order."""
    n = draw(st.integers(min_value=1, max_value=max_tasks))
    deps: Deps = {}
    for i in range(n):
        chosen = draw(st.lists(st.sampled_from(range(i)), unique=True)) if i else []
        deps[f"n{i}"] = [f"n{j}" for j in chosen]
    spec_order = draw(st.permutations(list(deps)))
    return list(spec_order), deps


@st.composite
def random_graphs(draw: st.DrawFn) -> Deps:
    """Any directed graph (cycles and self-loops allowed) over a few tasks."""
    n = draw(st.integers(min_value=1, max_value=8))
    ids = [f"n{i}" for i in range(n)]
    return {i: draw(st.lists(st.sampled_from(ids), unique=True, max_size=3)) for i in ids}


def _build(spec_order: list[str], deps: Deps) -> DAG:
    return DAG(TaskNode(id=i, agent="echo", depends_on=list(deps[i])) for i in spec_order)


def _ancestors(deps: Deps, node_id: str) -> set[str]:
    seen: set[str] = set()
    stack = list(deps[node_id])
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(deps[current])
    return seen


def _descendants(deps: Deps, node_id: str) -> set[str]:
    return {other for other in deps if node_id in _ancestors(deps, other)}


@dataclass
class Model:
    """What the scheduler should say, recomputed from scratch from the recorded events."""

    spec_order: list[str]
    deps: Deps
    running: set[str] = field(default_factory=set)
    completed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)

    def state(self, node_id: str) -> NodeState:
        if node_id in self.completed:
            return NodeState.COMPLETED
        if node_id in self.failed:
            return NodeState.FAILED
        if node_id in self.running:
            return NodeState.RUNNING
        if node_id in self.cancelled:
            return NodeState.CANCELLED
        if _ancestors(self.deps, node_id) & self.failed:
            return NodeState.SKIPPED
        if all(dep in self.completed for dep in self.deps[node_id]):
            return NodeState.READY
        return NodeState.PENDING

    def in_state(self, state: NodeState) -> list[str]:
        return [i for i in self.spec_order if self.state(i) is state]

    def is_complete(self) -> bool:
        return self.completed == set(self.spec_order)

    def is_blocked(self) -> bool:
        return (
            not self.is_complete()
            and not self.in_state(NodeState.READY)
            and not self.in_state(NodeState.RUNNING)
        )


def _check_agrees(scheduler: Scheduler, model: Model) -> None:
    for node_id in model.spec_order:
        assert scheduler.state(node_id) is model.state(node_id), node_id
    assert scheduler.ready_nodes() == model.in_state(NodeState.READY)
    assert scheduler.is_complete() is model.is_complete()
    assert scheduler.is_blocked() is model.is_blocked()
    assert scheduler.counts() == {s: len(model.in_state(s)) for s in NodeState}
    assert scheduler.ready_count == len(model.in_state(NodeState.READY))
    assert scheduler.running_count == len(model.running)


_ACTIONS = ["start", "take", "complete", "fail", "illegal", "cancel"]


@settings(max_examples=300, deadline=None)
@given(graph=random_dags(), data=st.data())
def test_scheduler_agrees_with_brute_force_model(
    graph: tuple[list[str], Deps], data: st.DataObject
) -> None:
    spec_order, deps = graph
    scheduler = Scheduler(_build(spec_order, deps))
    model = Model(spec_order, deps)
    ready_fifo = model.in_state(NodeState.READY)  # the order tasks became ready
    ever_ready: set[str] = set(ready_fifo)
    left_ready: set[str] = set()
    allow_cancel = data.draw(st.booleans(), label="allow_cancel")
    _check_agrees(scheduler, model)

    while not scheduler.is_complete() and not scheduler.is_blocked():
        ready = model.in_state(NodeState.READY)
        running = sorted(model.running)
        actions = [a for a in _ACTIONS if a != "cancel" or allow_cancel]
        if not ready:
            actions = [a for a in actions if a not in ("start", "take")]
        if not running:
            actions = [a for a in actions if a not in ("complete", "fail")]
        action = data.draw(st.sampled_from(actions), label="action")
        before = {i: model.state(i) for i in spec_order}

        if action == "start":
            node_id = data.draw(st.sampled_from(ready), label="start")
            scheduler.mark_running(node_id)
            model.running.add(node_id)
        elif action == "take":
            limit = data.draw(st.integers(min_value=0, max_value=3), label="limit")
            expected = [i for i in ready_fifo if model.state(i) is NodeState.READY][:limit]
            assert scheduler.take_ready(limit) == expected
            model.running.update(expected)
        elif action == "complete":
            node_id = data.draw(st.sampled_from(running), label="complete")
            scheduler.mark_completed(node_id)
            model.running.discard(node_id)
            model.completed.add(node_id)
        elif action == "fail":
            node_id = data.draw(st.sampled_from(running), label="fail")
            skipped = scheduler.mark_failed(node_id)
            model.running.discard(node_id)
            model.failed.add(node_id)
            assert skipped == [
                i
                for i in spec_order
                if before[i] is not NodeState.SKIPPED and model.state(i) is NodeState.SKIPPED
            ]
        elif action == "cancel":
            expected = [i for i in spec_order if before[i] in (NodeState.PENDING, NodeState.READY)]
            assert scheduler.cancel_pending() == expected
            model.cancelled.update(expected)
        else:
            node_id = data.draw(st.sampled_from(spec_order), label="illegal id")
            method = data.draw(st.sampled_from(["mark_running", "mark_completed", "mark_failed"]))
            allowed = NodeState.READY if method == "mark_running" else NodeState.RUNNING
            if before[node_id] is not allowed:
                with pytest.raises(ValueError, match=f"cannot mark task '{node_id}'"):
                    getattr(scheduler, method)(node_id)

        _check_agrees(scheduler, model)
        for node_id in spec_order:
            now = model.state(node_id)
            if before[node_id] is NodeState.READY and now is not NodeState.READY:
                left_ready.add(node_id)
            if now is NodeState.READY and before[node_id] is not NodeState.READY:
                # becomes ready once, and only once every dependency completed
                assert node_id not in ever_ready
                assert all(dep in model.completed for dep in deps[node_id])
                ever_ready.add(node_id)
                ready_fifo.append(node_id)
        assert not (left_ready & set(model.in_state(NodeState.READY)))
        for failed in model.failed:
            downstream = _descendants(deps, failed)
            assert not downstream & (ever_ready | model.running | model.completed)

    # Everything that ran was ready first; without failures or cancellation, everything ran.
    assert model.running == set()
    assert model.completed | model.failed <= ever_ready
    if not model.failed and not model.cancelled:
        assert scheduler.is_complete()
        assert ever_ready == set(spec_order)


@settings(max_examples=200, deadline=None)
@given(graph=random_dags(), data=st.data())
def test_scheduler_take_ready_and_ready_nodes_hand_out_each_task_once(
    graph: tuple[list[str], Deps], data: st.DataObject
) -> None:
    spec_order, deps = graph
    scheduler = Scheduler(_build(spec_order, deps))
    handed_out: list[str] = []

    while not scheduler.is_complete():
        listed = scheduler.ready_nodes()
        if data.draw(st.booleans(), label="use take_ready"):
            taken = scheduler.take_ready(data.draw(st.integers(1, 4), label="limit"))
            assert set(taken) <= set(listed)
        else:
            taken = listed[: data.draw(st.integers(1, 4), label="count")]
            for node_id in taken:
                scheduler.mark_running(node_id)
        assert taken
        assert [i for i in scheduler.ready_nodes() if i in taken] == []
        handed_out += taken
        for node_id in taken:
            scheduler.mark_completed(node_id)

    assert sorted(handed_out) == sorted(spec_order)
    position = {node_id: k for k, node_id in enumerate(handed_out)}
    for node_id in spec_order:
        assert all(position[dep] < position[node_id] for dep in deps[node_id])


@settings(max_examples=300, deadline=None)
@given(graph=random_dags())
def test_dag_topological_order_is_the_stable_brute_force_order(
    graph: tuple[list[str], Deps],
) -> None:
    spec_order, deps = graph
    dag = _build(spec_order, deps)
    expected: list[str] = []
    while len(expected) < len(spec_order):
        expected.append(
            next(i for i in spec_order if i not in expected and all(d in expected for d in deps[i]))
        )

    assert dag.topological_order() == expected
    assert dag.roots() == [i for i in spec_order if not deps[i]]
    for node_id in spec_order:
        assert set(dag.descendants(node_id)) == _descendants(deps, node_id)
        assert dag.dependents(node_id) == [i for i in spec_order if node_id in deps[i]]


@settings(max_examples=300, deadline=None)
@given(deps=random_graphs())
def test_find_cycle_finds_a_real_cycle_exactly_when_there_is_one(deps: Deps) -> None:
    has_cycle = any(node_id in _ancestors(deps, node_id) for node_id in deps)

    cycle = find_cycle(deps)

    if not has_cycle:
        assert cycle is None
        return
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1
    for here, there in pairwise(cycle):
        assert there in deps[here]
    with pytest.raises(WorkflowValidationError, match=r"^dependency cycle: ") as info:
        _build(list(deps), deps)
    assert str(info.value) == "dependency cycle: " + " -> ".join(cycle)
