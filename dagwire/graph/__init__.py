"""The workflow graph: the `DAG` built from a spec and the `Scheduler` that tracks a run of it."""

from dagwire.graph.dag import DAG, find_cycle
from dagwire.graph.scheduler import NodeState, Scheduler

__all__ = ["DAG", "NodeState", "Scheduler", "find_cycle"]
