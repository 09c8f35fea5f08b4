"""Unit tests of `dagwire.graph.scheduler`: task states, transitions and hand-out order."""

from __future__ import annotations

import pytest

from dagwire.graph import DAG, NodeState, Scheduler
from dagwire.models import TaskNode, WorkflowSpec


def _node(node_id: str, *deps: str) -> TaskNode:
    return TaskNode(id=node_id, agent="echo", depends_on=list(deps))


def _scheduler(*nodes: TaskNode) -> Scheduler:
    return Scheduler(DAG(nodes))


def _diamond() -> Scheduler:
    """a -> (b, c) -> d, plus an independent e."""
    return _scheduler(
        _node("a"), _node("b", "a"), _node("c", "a"), _node("d", "b", "c"), _node("e")
    )


def _run(scheduler: Scheduler, node_id: str) -> None:
    scheduler.mark_running(node_id)
    scheduler.mark_completed(node_id)


def test_scheduler_initially_ready_are_roots_in_spec_order() -> None:
    scheduler = _scheduler(_node("x", "b"), _node("b"), _node("a"))

    assert scheduler.ready_nodes() == ["b", "a"]
    assert scheduler.state("x") is NodeState.PENDING
    assert scheduler.state("b") is NodeState.READY


def test_scheduler_from_workflow_spec() -> None:
    spec = WorkflowSpec.from_dict(
        {
            "name": "x",
            "tasks": [
                {"id": "a", "agent": "echo"},
                {"id": "b", "agent": "echo", "depends_on": ["a"]},
            ],
        }
    )
    scheduler = Scheduler(DAG.from_workflow(spec))

    assert scheduler.ready_nodes() == ["a"]
    _run(scheduler, "a")
    assert scheduler.ready_nodes() == ["b"]
    _run(scheduler, "b")
    assert scheduler.is_complete()


def test_scheduler_ready_nodes_does_not_change_state() -> None:
    scheduler = _diamond()

    first = scheduler.ready_nodes()
    second = scheduler.ready_nodes()

    assert first == second == ["a", "e"]
    assert scheduler.state("a") is NodeState.READY
    assert scheduler.running_count == 0


def test_scheduler_ready_nodes_returns_a_fresh_list() -> None:
    scheduler = _diamond()

    scheduler.ready_nodes().clear()

    assert scheduler.ready_nodes() == ["a", "e"]


def test_scheduler_ready_nodes_drops_started_tasks() -> None:
    scheduler = _diamond()

    scheduler.mark_running("a")

    assert scheduler.ready_nodes() == ["e"]


def test_scheduler_dependent_ready_only_after_all_dependencies_complete() -> None:
    scheduler = _diamond()
    _run(scheduler, "a")
    assert scheduler.ready_nodes() == ["b", "c", "e"]

    _run(scheduler, "b")
    assert scheduler.ready_nodes() == ["c", "e"]
    assert scheduler.state("d") is NodeState.PENDING

    _run(scheduler, "c")
    assert scheduler.ready_nodes() == ["d", "e"]


def test_scheduler_ready_nodes_in_spec_order_not_readiness_order() -> None:
    scheduler = _scheduler(_node("a"), _node("b", "c"), _node("c"))
    _run(scheduler, "c")

    assert scheduler.ready_nodes() == ["a", "b"]


def test_scheduler_mark_running_requires_ready() -> None:
    scheduler = _diamond()

    with pytest.raises(
        ValueError, match=r"^cannot mark task 'd' running: it is pending, not ready$"
    ):
        scheduler.mark_running("d")


def test_scheduler_mark_running_twice_raises() -> None:
    scheduler = _diamond()
    scheduler.mark_running("a")

    with pytest.raises(
        ValueError, match=r"^cannot mark task 'a' running: it is running, not ready$"
    ):
        scheduler.mark_running("a")


def test_scheduler_mark_completed_requires_running() -> None:
    scheduler = _diamond()

    with pytest.raises(
        ValueError, match=r"^cannot mark task 'a' completed: it is ready, not running$"
    ):
        scheduler.mark_completed("a")


def test_scheduler_mark_failed_requires_running() -> None:
    scheduler = _diamond()
    _run(scheduler, "a")

    with pytest.raises(
        ValueError, match=r"^cannot mark task 'a' failed: it is completed, not running$"
    ):
        scheduler.mark_failed("a")


def test_scheduler_illegal_transition_leaves_state_unchanged() -> None:
    scheduler = _diamond()

    with pytest.raises(ValueError, match="cannot mark task 'd' running"):
        scheduler.mark_running("d")

    assert scheduler.state("d") is NodeState.PENDING
    assert scheduler.counts()[NodeState.PENDING] == 3


@pytest.mark.parametrize("method", ["mark_running", "mark_completed", "mark_failed", "state"])
def test_scheduler_unknown_id_raises_key_error(method: str) -> None:
    scheduler = _diamond()

    with pytest.raises(KeyError, match="unknown task 'ghost'"):
        getattr(scheduler, method)("ghost")


def test_scheduler_mark_failed_skips_every_transitive_dependent() -> None:
    scheduler = _diamond()
    scheduler.mark_running("a")

    skipped = scheduler.mark_failed("a")

    assert skipped == ["b", "c", "d"]
    assert [scheduler.state(i) for i in "abcde"] == [
        NodeState.FAILED,
        NodeState.SKIPPED,
        NodeState.SKIPPED,
        NodeState.SKIPPED,
        NodeState.READY,
    ]
    assert scheduler.ready_nodes() == ["e"]


def test_scheduler_mark_failed_keeps_independent_branches_running() -> None:
    scheduler = _diamond()
    _run(scheduler, "a")
    scheduler.mark_running("b")
    scheduler.mark_running("c")

    assert scheduler.mark_failed("b") == ["d"]
    scheduler.mark_completed("c")

    assert scheduler.state("d") is NodeState.SKIPPED
    assert scheduler.ready_nodes() == ["e"]


def test_scheduler_mark_failed_skips_each_task_once() -> None:
    scheduler = _diamond()
    _run(scheduler, "a")
    scheduler.mark_running("b")
    scheduler.mark_running("c")

    assert scheduler.mark_failed("b") == ["d"]
    assert scheduler.mark_failed("c") == []
    assert scheduler.counts()[NodeState.SKIPPED] == 1


def test_scheduler_is_complete_when_every_task_completed() -> None:
    scheduler = _diamond()
    for node_id in ["a", "b", "c", "d"]:
        assert not scheduler.is_complete()
        _run(scheduler, node_id)
    assert not scheduler.is_complete()

    _run(scheduler, "e")

    assert scheduler.is_complete()
    assert not scheduler.is_blocked()


def test_scheduler_is_blocked_after_failure_settles() -> None:
    scheduler = _diamond()
    scheduler.mark_running("a")
    scheduler.mark_running("e")
    scheduler.mark_failed("a")
    assert not scheduler.is_blocked()  # e still running

    scheduler.mark_completed("e")

    assert scheduler.is_blocked()
    assert not scheduler.is_complete()


def test_scheduler_not_blocked_while_something_is_ready_or_running() -> None:
    scheduler = _scheduler(_node("a"))
    assert not scheduler.is_blocked()

    scheduler.mark_running("a")

    assert not scheduler.is_blocked()


def test_scheduler_empty_graph_is_complete() -> None:
    scheduler = Scheduler(DAG([]))

    assert scheduler.is_complete()
    assert not scheduler.is_blocked()
    assert scheduler.ready_nodes() == []


def test_scheduler_take_ready_marks_running_in_spec_order() -> None:
    scheduler = _diamond()

    assert scheduler.take_ready(10) == ["a", "e"]
    assert scheduler.state("a") is NodeState.RUNNING
    assert scheduler.state("e") is NodeState.RUNNING
    assert scheduler.ready_nodes() == []
    assert scheduler.running_count == 2


def test_scheduler_take_ready_respects_limit() -> None:
    scheduler = _diamond()

    assert scheduler.take_ready(1) == ["a"]
    assert scheduler.take_ready(0) == []
    assert scheduler.ready_nodes() == ["e"]


def test_scheduler_take_ready_in_order_tasks_became_ready() -> None:
    scheduler = _scheduler(_node("a"), _node("b"), _node("x", "b"), _node("y", "a"))
    assert scheduler.take_ready(2) == ["a", "b"]

    scheduler.mark_completed("a")
    scheduler.mark_completed("b")

    assert scheduler.ready_nodes() == ["x", "y"]
    assert scheduler.take_ready(5) == ["y", "x"]


def test_scheduler_take_ready_skips_tasks_started_by_mark_running() -> None:
    scheduler = _scheduler(_node("a"), _node("b"), _node("c"))
    scheduler.mark_running("a")

    assert scheduler.take_ready(5) == ["b", "c"]


def test_scheduler_take_ready_negative_limit_raises() -> None:
    scheduler = _diamond()

    with pytest.raises(ValueError, match=r"^take_ready limit must be >= 0, got -1$"):
        scheduler.take_ready(-1)


def test_scheduler_cancel_pending_cancels_not_started_tasks() -> None:
    scheduler = _diamond()
    _run(scheduler, "a")
    scheduler.mark_running("b")

    cancelled = scheduler.cancel_pending()

    assert cancelled == ["c", "d", "e"]
    assert scheduler.state("b") is NodeState.RUNNING
    assert scheduler.ready_nodes() == []
    assert scheduler.take_ready(5) == []
    scheduler.mark_completed("b")
    assert scheduler.state("d") is NodeState.CANCELLED
    assert scheduler.is_blocked()


def test_scheduler_cancel_pending_leaves_skipped_tasks_skipped() -> None:
    scheduler = _diamond()
    scheduler.mark_running("a")
    scheduler.mark_failed("a")

    assert scheduler.cancel_pending() == ["e"]
    assert scheduler.state("d") is NodeState.SKIPPED


def test_scheduler_mark_failed_after_cancel_keeps_cancelled() -> None:
    scheduler = _diamond()
    scheduler.mark_running("a")
    scheduler.cancel_pending()

    assert scheduler.mark_failed("a") == []
    assert scheduler.state("b") is NodeState.CANCELLED


def test_scheduler_counts_cover_every_state() -> None:
    scheduler = _diamond()
    _run(scheduler, "a")
    scheduler.mark_running("b")

    assert scheduler.counts() == {
        NodeState.PENDING: 1,
        NodeState.READY: 2,
        NodeState.RUNNING: 1,
        NodeState.COMPLETED: 1,
        NodeState.FAILED: 0,
        NodeState.SKIPPED: 0,
        NodeState.CANCELLED: 0,
    }
    assert scheduler.ready_count == 2
    assert scheduler.running_count == 1


def test_scheduler_node_state_values_are_words() -> None:
    assert [str(s) for s in NodeState] == [
        "pending",
        "ready",
        "running",
        "completed",
        "failed",
        "skipped",
        "cancelled",
    ]


def _chain(n: int) -> DAG:
    return DAG([_node("t0"), *(_node(f"t{i}", f"t{i - 1}") for i in range(1, n))])


def _fan_out(n: int) -> DAG:
    return DAG([_node("t0"), *(_node(f"t{i}", "t0") for i in range(1, n))])


def test_scheduler_large_chain_completes_with_take_ready() -> None:
    n = 100_000
    scheduler = Scheduler(_chain(n))
    order: list[str] = []

    while not scheduler.is_complete():
        taken = scheduler.take_ready(8)
        assert len(taken) == 1
        order.extend(taken)
        scheduler.mark_completed(taken[0])

    assert order == [f"t{i}" for i in range(n)]
    assert not scheduler.is_blocked()


def test_scheduler_large_chain_completes_with_ready_nodes() -> None:
    n = 100_000
    scheduler = Scheduler(_chain(n))
    done = 0

    while not scheduler.is_complete():
        (node_id,) = scheduler.ready_nodes()
        scheduler.mark_running(node_id)
        scheduler.mark_completed(node_id)
        done += 1

    assert done == n


def test_scheduler_large_fan_out_completes_with_take_ready() -> None:
    n = 100_000
    scheduler = Scheduler(_fan_out(n))
    assert scheduler.take_ready(8) == ["t0"]
    scheduler.mark_completed("t0")
    assert scheduler.ready_count == n - 1
    running: list[str] = []
    finished = 1

    while not scheduler.is_complete():
        running += scheduler.take_ready(8 - len(running))
        assert 0 < len(running) <= 8
        scheduler.mark_completed(running.pop(0))
        finished += 1

    assert finished == n


def test_scheduler_large_fan_out_completes_with_ready_nodes() -> None:
    n = 100_000
    scheduler = Scheduler(_fan_out(n))
    rounds = 0

    while not scheduler.is_complete():
        ready = scheduler.ready_nodes()
        for node_id in ready:
            scheduler.mark_running(node_id)
        for node_id in ready:
            scheduler.mark_completed(node_id)
        rounds += 1

    assert rounds == 2


def test_scheduler_large_fan_out_failure_skips_everything() -> None:
    n = 100_000
    scheduler = Scheduler(_fan_out(n))
    scheduler.mark_running("t0")

    skipped = scheduler.mark_failed("t0")

    assert len(skipped) == n - 1
    assert scheduler.is_blocked()
