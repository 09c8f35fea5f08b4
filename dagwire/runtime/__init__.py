"""The runtime: the orchestrator that drives a run, the dispatcher that routes tasks to adapters."""

from dagwire.runtime.adapter import AgentAdapter, AgentFunction, FunctionAdapter
from dagwire.runtime.dispatcher import Dispatcher, TaskDispatcher
from dagwire.runtime.events import EventLog, RunEvent, RunEventKind
from dagwire.runtime.orchestrator import Orchestrator, PreparedRun, backoff_delay, prepare_run
from dagwire.runtime.routing import AdapterInstance, AdapterRegistry

__all__ = [
    "AdapterInstance",
    "AdapterRegistry",
    "AgentAdapter",
    "AgentFunction",
    "Dispatcher",
    "EventLog",
    "FunctionAdapter",
    "Orchestrator",
    "PreparedRun",
    "RunEvent",
    "RunEventKind",
    "TaskDispatcher",
    "backoff_delay",
    "prepare_run",
]
