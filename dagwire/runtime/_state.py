"""What the orchestrator holds about one run in memory, and small helpers its parts share."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dagwire.errors import DagwireError
from dagwire.graph.dag import DAG
from dagwire.graph.scheduler import Scheduler
from dagwire.models import Artifact, RetryPolicy, RunRecord, RunSummary, TaskStatus, WorkflowSpec
from dagwire.runtime.events import EventLog
from dagwire.runtime.secrets import Redactor

if TYPE_CHECKING:
    from dagwire.errors import StoreUnavailableError
    from dagwire.runtime._durability import EventJournal

#: Finished runs kept in memory for `watch_run`/`wait_run` (older ones are read from the store).
FINISHED_RUNS_KEPT = 256
#: The error of an attempt that was in flight when its orchestrator died (docs/durability.md).
LOST_ATTEMPT_ERROR = "orchestrator lost the attempt"


@dataclass(slots=True)
class NodeOutcome:
    """What a workflow task's child asyncio task reports to the driver."""

    status: TaskStatus
    attempts: int
    artifacts: list[Artifact] = field(default_factory=list)
    error: str | None = None
    store_error: StoreUnavailableError | None = None


@dataclass(slots=True)
class NodeHistory:
    """Where a resumed task stands: the attempts already made and how many count against
    its `max_attempts` (a lost attempt does not)."""

    attempts_made: int = 0
    attempts_counted: int = 0


@dataclass(eq=False)
class RunState:
    """Everything the orchestrator holds about one run while it drives it."""

    record: RunRecord
    spec: WorkflowSpec
    dag: DAG
    scheduler: Scheduler
    events: EventLog
    statuses: dict[str, TaskStatus]
    attempts: dict[str, int]
    errors: dict[str, str]
    journal: EventJournal | None = None
    history: dict[str, NodeHistory] = field(default_factory=dict)
    artifacts: dict[str, list[Artifact]] = field(default_factory=dict)
    consumers_left: dict[str, int] = field(default_factory=dict)
    running: dict[str, asyncio.Task[NodeOutcome]] = field(default_factory=dict)
    in_flight_calls: dict[str, asyncio.Future[list[Artifact]]] = field(default_factory=dict)
    completions: asyncio.Queue[tuple[str, NodeOutcome]] = field(default_factory=asyncio.Queue)
    dispatching: bool = True
    cancel_requested: bool = False
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when this orchestrator lost the run's lease: it stops without writing anything more.
    abandoned: bool = False
    #: Set once the run's outcome is decided (`run_finished` emitted): only recording it is
    #: left, which waits out an outage instead of giving the run up (a newer epoch still wins).
    finishing: bool = False
    run_error: str | None = None
    save_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    driver: asyncio.Task[None] | None = None
    summary: RunSummary | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: Redacts the secret values this run's dispatches used from every error text it keeps.
    redact: Redactor = field(default_factory=Redactor)

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def trace_id(self) -> str:
        return self.record.trace_id

    @property
    def epoch(self) -> int:
        return self.record.lease_epoch


def backoff_delay(
    policy: RetryPolicy, failed_attempt: int, *, rng: random.Random | None = None
) -> float:
    """Seconds to wait after attempt `failed_attempt` (1-based) failed.

    Exponential (`initial_backoff * multiplier ** (n - 1)`), capped at `max_backoff`, with jitter
    drawing the delay from [0.5, 1] x the computed one so retries of many tasks spread out.
    """
    exponent = max(failed_attempt - 1, 0)
    try:
        computed = policy.initial_backoff * policy.multiplier**exponent
    except OverflowError:
        computed = policy.max_backoff
    computed = min(computed, policy.max_backoff)
    return computed * (rng or random).uniform(0.5, 1.0)


async def wait_or_cancelled(cancelled: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` seconds; True if the run was cancelled meanwhile."""
    if cancelled.is_set():
        return True
    try:
        async with asyncio.timeout(delay):
            await cancelled.wait()
    except TimeoutError:
        return False
    return True


def describe(exc: BaseException) -> str:
    """An exception as the error text of an attempt."""
    text = str(exc)
    # dagwire's own errors (and an adapter's status relayed over gRPC) already read as a
    # sentence; a class-name prefix helps only for an in-process adapter's plain exception.
    if isinstance(exc, DagwireError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
