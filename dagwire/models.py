"""Value types shared by every layer: artifacts, task nodes, execution and run records, summaries.

Values are replaced, never mutated, by the library (`dataclasses.replace`); `store()` returns a
filled copy and every attempt gets a fresh `TaskNode`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from dagwire.spec import RetryPolicy, TaskSpec, WorkflowSpec

__all__ = [
    "DEFAULT_MEDIA_TYPE",
    "DEFAULT_NAMESPACE",
    "Artifact",
    "ExecutionRecord",
    "NodeSummary",
    "RegistryEntry",
    "RetryPolicy",
    "RunEventRecord",
    "RunRecord",
    "RunStatus",
    "RunSummary",
    "TaskNode",
    "TaskSpec",
    "TaskStatus",
    "WorkflowSpec",
    "artifact_from_json",
    "artifact_to_json",
    "iso",
    "parse_iso",
    "utc_now",
    "without_details",
]

DEFAULT_MEDIA_TYPE = "application/octet-stream"
DEFAULT_NAMESPACE = "default"
"""The namespace of a run started without one, and of every run recorded before namespaces."""


def utc_now() -> datetime:
    """The current time, timezone-aware UTC (every timestamp dagwire writes is one)."""
    return datetime.now(UTC)


class RunStatus(StrEnum):
    """Lifecycle state of a run."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self is not RunStatus.RUNNING


class TaskStatus(StrEnum):
    """State of one task of a run (and of one attempt, in an `ExecutionRecord`)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self not in (TaskStatus.PENDING, TaskStatus.RUNNING)


@dataclass(slots=True)
class Artifact:
    """One output of a task.

    An adapter returns `Artifact(name=..., content=b"...", media_type=..., metadata={})`; the
    orchestrator sets `run_id`/`node_id`; `ArtifactStore.store()` fills `artifact_id`, `sha256`
    (hex of the content) and `size`. `content` is `None` when not loaded (or held by reference).
    `metadata` is free-form `str -> str`.
    """

    name: str
    content: bytes | None = None
    media_type: str = DEFAULT_MEDIA_TYPE
    metadata: dict[str, str] = field(default_factory=dict)
    artifact_id: str | None = None
    run_id: str | None = None
    node_id: str | None = None
    sha256: str | None = None
    size: int | None = None
    created_at: datetime | None = None

    def without_content(self) -> Artifact:
        """This artifact with `content=None` (what summaries and listings carry)."""
        return dataclasses.replace(self, content=None)


@dataclass(slots=True)
class TaskNode:
    """One task of a workflow as the runtime sees it; a fresh copy per attempt carries `attempt`."""

    id: str
    agent: str
    depends_on: list[str] = field(default_factory=list)
    params: Any = None
    attempt: int = 1
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    #: The run this attempt belongs to; set by the orchestrator on every dispatch ("" outside a
    #: run). With `id` and `attempt` it makes the attempt's idempotency key.
    run_id: str = ""
    #: When the attempt times out (None: no timeout); set where an adapter receives the task.
    deadline: datetime | None = None

    @property
    def idempotency_key(self) -> str:
        """``run_id/node_id/attempt``: the same for every call of one attempt (re-sends after a
        lost dispatcher included), different for every other attempt."""
        return f"{self.run_id}/{self.id}/{self.attempt}"

    @classmethod
    def from_spec(cls, task: TaskSpec) -> TaskNode:
        return cls(
            id=task.id,
            agent=task.agent,
            depends_on=list(task.depends_on),
            params=task.params,
            retry=task.retry,
            timeout=task.timeout,
        )


@dataclass(slots=True)
class ExecutionRecord:
    """One attempt of one task; upserted by `(run_id, node_id, attempt)`."""

    run_id: str
    node_id: str
    attempt: int
    agent: str
    status: TaskStatus | str
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    trace_id: str = ""
    input_artifact_ids: list[str] = field(default_factory=list)
    output_artifact_ids: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.run_id, self.node_id, self.attempt)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (timestamps as ISO 8601 strings)."""
        return {
            "run_id": self.run_id,
            "node_id": self.node_id,
            "attempt": self.attempt,
            "agent": self.agent,
            "status": str(self.status),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "error": self.error,
            "trace_id": self.trace_id,
            "input_artifact_ids": list(self.input_artifact_ids),
            "output_artifact_ids": list(self.output_artifact_ids),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecutionRecord:
        started = parse_iso(data["started_at"])
        assert started is not None
        return cls(
            run_id=data["run_id"],
            node_id=data["node_id"],
            attempt=int(data["attempt"]),
            agent=data["agent"],
            status=TaskStatus(data["status"]),
            started_at=started,
            finished_at=parse_iso(data.get("finished_at")),
            error=data.get("error"),
            trace_id=data.get("trace_id") or "",
            input_artifact_ids=list(data.get("input_artifact_ids") or []),
            output_artifact_ids=list(data.get("output_artifact_ids") or []),
        )


@dataclass(slots=True)
class NodeSummary:
    """Outcome of one task within a run."""

    status: TaskStatus
    attempts: int = 0
    artifacts: list[Artifact] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "attempts": self.attempts,
            "error": self.error,
            "artifacts": [artifact_to_json(a) for a in self.artifacts],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeSummary:
        return cls(
            status=TaskStatus(data["status"]),
            attempts=int(data.get("attempts", 0)),
            error=data.get("error"),
            artifacts=[artifact_from_json(a) for a in data.get("artifacts") or []],
        )


@dataclass(slots=True)
class RunSummary:
    """What `run_workflow` returns: the run's final status and every task's outcome."""

    run_id: str
    status: RunStatus
    nodes: dict[str, NodeSummary] = field(default_factory=dict)
    name: str = ""
    trace_id: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The `--output json` shape of docs/contracts.md §9 (plus `name` and `trace_id`)."""
        return {
            "run_id": self.run_id,
            "name": self.name,
            "status": str(self.status),
            "trace_id": self.trace_id,
            "error": self.error,
            "nodes": {node_id: node.to_json() for node_id, node in self.nodes.items()},
        }


@dataclass(frozen=True, slots=True)
class RunEventRecord:
    """One run event as the execution store keeps it: numbered, opaque to the store.

    `data` is the event's JSON form (`dagwire.runtime.events.RunEvent.to_json`); `epoch` is
    the lease epoch of the orchestrator that wrote it (docs/durability.md). `data_json`, when
    set, is `data` already encoded as JSON text (the store service passes on the text it
    received and validated, so the store does not encode `data` again); it takes no part in
    comparisons.
    """

    run_id: str
    sequence: int
    epoch: int
    data: dict[str, Any]
    data_json: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """One entry of the shared service registry (docs/registry.md), opaque to the store.

    `kind` names the table ("adapter", "dispatcher"), `key` the entry within it; `data` is
    the owner's JSON object. An entry whose `expires_at` has passed is dead: readers ignore
    it, and it is pruned later.
    """

    kind: str
    key: str
    expires_at: datetime
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RunRecord:
    """A run as the execution store keeps it (upserted by `run_id`)."""

    run_id: str
    name: str
    status: RunStatus | str
    created_at: datetime
    finished_at: datetime | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    user_vars: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    trace_id: str = ""
    error: str | None = None
    nodes: dict[str, NodeSummary] = field(default_factory=dict)
    owner: str = ""
    lease_expires_at: datetime | None = None
    #: The owner's lease epoch: 1 for the orchestrator that started the run, one more for each
    #: adoption (docs/durability.md). 0 for records written before epochs existed.
    lease_epoch: int = 0
    #: The namespace the run belongs to (docs/security.md); its records, artifacts and events
    #: belong to it too. Runs recorded before namespaces existed read as ``default``.
    namespace: str = DEFAULT_NAMESPACE

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "name": self.name,
            "status": str(self.status),
            "created_at": iso(self.created_at),
            "finished_at": iso(self.finished_at),
            "spec": self.spec,
            "user_vars": dict(self.user_vars),
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "error": self.error,
            "nodes": {node_id: node.to_json() for node_id, node in self.nodes.items()},
            "owner": self.owner,
            "lease_expires_at": iso(self.lease_expires_at),
            "lease_epoch": self.lease_epoch,
            "namespace": self.namespace,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        created = parse_iso(data["created_at"])
        assert created is not None
        return cls(
            run_id=data["run_id"],
            name=data.get("name", ""),
            status=RunStatus(data["status"]),
            created_at=created,
            finished_at=parse_iso(data.get("finished_at")),
            spec=dict(data.get("spec") or {}),
            user_vars=dict(data.get("user_vars") or {}),
            request_id=data.get("request_id") or "",
            trace_id=data.get("trace_id") or "",
            error=data.get("error"),
            nodes={k: NodeSummary.from_json(v) for k, v in (data.get("nodes") or {}).items()},
            owner=data.get("owner") or "",
            lease_expires_at=parse_iso(data.get("lease_expires_at")),
            lease_epoch=int(data.get("lease_epoch") or 0),
            namespace=data.get("namespace") or DEFAULT_NAMESPACE,
        )

    def summary(self) -> RunSummary:
        """This record as a `RunSummary`."""
        return RunSummary(
            run_id=self.run_id,
            status=RunStatus(self.status),
            nodes=dict(self.nodes),
            name=self.name,
            trace_id=self.trace_id,
            error=self.error,
        )


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def parse_iso(value: str | datetime | None) -> datetime | None:
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def artifact_to_json(artifact: Artifact) -> dict[str, Any]:
    return {
        "artifact_id": artifact.artifact_id,
        "name": artifact.name,
        "media_type": artifact.media_type,
        "metadata": dict(artifact.metadata),
        "run_id": artifact.run_id,
        "node_id": artifact.node_id,
        "sha256": artifact.sha256,
        "size": artifact.size,
        "created_at": iso(artifact.created_at),
    }


def artifact_from_json(data: dict[str, Any]) -> Artifact:
    return Artifact(
        name=data["name"],
        content=None,
        media_type=data.get("media_type") or DEFAULT_MEDIA_TYPE,
        metadata=dict(data.get("metadata") or {}),
        artifact_id=data.get("artifact_id"),
        run_id=data.get("run_id"),
        node_id=data.get("node_id"),
        sha256=data.get("sha256"),
        size=data.get("size"),
        created_at=parse_iso(data.get("created_at")),
    )


def without_details(run: RunRecord) -> RunRecord:
    """`run` without its spec and node summaries (how run listings show a run)."""
    if not run.spec and not run.nodes:
        return run
    return dataclasses.replace(run, spec={}, nodes={})
