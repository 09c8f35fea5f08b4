"""Unit tests of `dagwire.graph.dag`: building, querying and validating the dependency graph."""

from __future__ import annotations

from typing import Any

import pytest

from dagwire.errors import WorkflowValidationError
from dagwire.graph import DAG, find_cycle
from dagwire.models import TaskNode, WorkflowSpec


def _node(node_id: str, *deps: str) -> TaskNode:
    return TaskNode(id=node_id, agent="echo", depends_on=list(deps))


def _dag(*nodes: TaskNode) -> DAG:
    return DAG(nodes)


def _spec(tasks: list[dict[str, Any]]) -> WorkflowSpec:
    return WorkflowSpec.from_dict({"name": "wf", "tasks": tasks})


def test_dag_from_workflow_keeps_spec_order_and_fields() -> None:
    spec = _spec(
        [
            {"id": "b", "agent": "upper", "depends_on": ["a"], "timeout": 3},
            {"id": "a", "agent": "echo", "params": {"text": "hi"}},
        ]
    )

    dag = DAG.from_workflow(spec)

    assert list(dag.nodes) == ["b", "a"]
    assert dag.nodes["b"].agent == "upper"
    assert dag.nodes["b"].depends_on == ["a"]
    assert dag.nodes["b"].timeout == 3
    assert dag.nodes["a"].params == {"text": "hi"}
    assert dag.nodes["a"].attempt == 1


def test_dag_from_workflow_keeps_params_as_written() -> None:
    spec = _spec([{"id": "a", "agent": "echo", "params": {"text": "hello ${user.topic}"}}])

    dag = DAG.from_workflow(spec)

    assert dag.nodes["a"].params == {"text": "hello ${user.topic}"}


def test_dag_len_contains_and_iter() -> None:
    dag = _dag(_node("a"), _node("b", "a"))

    assert len(dag) == 2
    assert "a" in dag
    assert "zzz" not in dag
    assert 3 not in dag
    assert list(dag) == ["a", "b"]


def test_dag_dependencies_in_depends_on_order() -> None:
    dag = _dag(_node("a"), _node("b"), _node("c", "b", "a"))

    assert dag.dependencies("c") == ["b", "a"]
    assert dag.dependencies("a") == []


def test_dag_dependents_in_spec_order() -> None:
    dag = _dag(_node("a"), _node("c", "a"), _node("b", "a"))

    assert dag.dependents("a") == ["c", "b"]
    assert dag.dependents("b") == []


def test_dag_repeated_dependency_counts_once() -> None:
    dag = _dag(_node("a"), _node("b", "a", "a"))

    assert dag.dependencies("b") == ["a"]
    assert dag.dependents("a") == ["b"]
    assert dag.nodes["b"].depends_on == ["a", "a"]


def test_dag_roots_in_spec_order() -> None:
    dag = _dag(_node("x", "b"), _node("b"), _node("a"))

    assert dag.roots() == ["b", "a"]


def test_dag_descendants_breadth_first_without_self() -> None:
    dag = _dag(_node("a"), _node("b", "a"), _node("c", "a"), _node("d", "b", "c"), _node("e"))

    assert dag.descendants("a") == ["b", "c", "d"]
    assert dag.descendants("d") == []


def test_dag_descendants_of_long_chain_needs_no_recursion() -> None:
    n = 100_000
    dag = _dag(_node("t0"), *(_node(f"t{i}", f"t{i - 1}") for i in range(1, n)))

    downstream = dag.descendants("t0")

    assert len(downstream) == n - 1
    assert downstream[-1] == f"t{n - 1}"


def test_dag_index_is_spec_position() -> None:
    dag = _dag(_node("b"), _node("a"))

    assert dag.index("a") == 1


def test_dag_unknown_id_raises_key_error() -> None:
    dag = _dag(_node("a"))

    with pytest.raises(KeyError, match="unknown task 'nope'"):
        dag.dependents("nope")
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        dag.dependencies("nope")
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        dag.descendants("nope")


def test_dag_topological_order_keeps_a_sorted_spec_unchanged() -> None:
    dag = _dag(_node("a"), _node("b", "a"), _node("c"), _node("d", "b", "c"))

    assert dag.topological_order() == ["a", "b", "c", "d"]


def test_dag_topological_order_picks_earliest_ready_in_spec_order() -> None:
    dag = _dag(_node("d", "a"), _node("b"), _node("a"), _node("c", "d"))

    assert dag.topological_order() == ["b", "a", "d", "c"]


def test_dag_topological_order_puts_dependencies_first() -> None:
    dag = _dag(_node("c", "b"), _node("b", "a"), _node("a"))

    assert dag.topological_order() == ["a", "b", "c"]


def test_dag_topological_order_returns_a_fresh_list() -> None:
    dag = _dag(_node("a"), _node("b", "a"))

    dag.topological_order().clear()

    assert dag.topological_order() == ["a", "b"]


def test_dag_cycle_raises_with_path() -> None:
    with pytest.raises(WorkflowValidationError) as info:
        _dag(_node("a", "b"), _node("b", "a"))

    assert str(info.value) == "dependency cycle: a -> b -> a"
    assert info.value.node_id == "a"
    assert info.value.field == "depends_on"


def test_dag_cycle_path_follows_depends_on() -> None:
    with pytest.raises(WorkflowValidationError) as info:
        _dag(_node("root"), _node("a", "root", "c"), _node("b", "a"), _node("c", "b"))

    assert str(info.value) == "dependency cycle: a -> c -> b -> a"
    assert info.value.node_id == "a"


def test_dag_self_dependency_is_a_cycle() -> None:
    with pytest.raises(WorkflowValidationError, match=r"^dependency cycle: a -> a$"):
        _dag(_node("a", "a"))


def test_dag_cycle_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="dependency cycle"):
        _dag(_node("a", "b"), _node("b", "a"))


def test_dag_unknown_dependency_raises() -> None:
    with pytest.raises(WorkflowValidationError) as info:
        _dag(_node("a"), _node("b", "a", "ghost"))

    assert str(info.value) == "task 'b' depends on unknown task 'ghost'"
    assert info.value.node_id == "b"
    assert info.value.field == "depends_on"


def test_dag_duplicate_id_raises() -> None:
    with pytest.raises(WorkflowValidationError) as info:
        _dag(_node("a"), _node("b"), _node("a"))

    assert str(info.value) == "duplicate task id 'a'"
    assert info.value.node_id == "a"
    assert info.value.field == "id"


def test_dag_empty_graph_is_allowed() -> None:
    dag = DAG([])

    assert len(dag) == 0
    assert dag.topological_order() == []
    assert dag.roots() == []


def test_dag_from_workflow_builds_large_chain() -> None:
    n = 100_000
    tasks: list[dict[str, Any]] = [{"id": "t0", "agent": "echo"}]
    tasks += [{"id": f"t{i}", "agent": "echo", "depends_on": [f"t{i - 1}"]} for i in range(1, n)]

    dag = DAG.from_workflow(_spec(tasks))

    assert len(dag) == n
    assert dag.roots() == ["t0"]
    assert dag.topological_order()[-1] == f"t{n - 1}"
    assert dag.dependencies(f"t{n - 1}") == [f"t{n - 2}"]


def test_dag_from_workflow_builds_large_fan_out() -> None:
    n = 100_000
    tasks: list[dict[str, Any]] = [{"id": "t0", "agent": "echo"}]
    tasks += [{"id": f"t{i}", "agent": "echo", "depends_on": ["t0"]} for i in range(1, n)]

    dag = DAG.from_workflow(_spec(tasks))

    assert len(dag) == n
    assert dag.roots() == ["t0"]
    assert len(dag.dependents("t0")) == n - 1
    assert len(dag.descendants("t0")) == n - 1


def test_find_cycle_returns_none_without_cycle() -> None:
    assert find_cycle({"a": [], "b": ["a"], "c": ["a", "b"]}) is None


def test_find_cycle_returns_path_from_first_task_on_it() -> None:
    assert find_cycle({"x": [], "a": ["x", "b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]


def test_find_cycle_finds_self_loop() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_find_cycle_ignores_unknown_ids() -> None:
    assert find_cycle({"a": ["ghost"], "b": ["a", "phantom"]}) is None


def test_find_cycle_handles_long_cycle_without_recursion() -> None:
    n = 100_000
    deps = {f"t{i}": [f"t{(i + 1) % n}"] for i in range(n)}

    cycle = find_cycle(deps)

    assert cycle is not None
    assert len(cycle) == n + 1
    assert cycle[0] == cycle[-1] == "t0"
