"""What an SDK adapter returns: whole `Artifact`s, or `StreamedArtifact`s uploaded in chunks."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from dagwire.models import DEFAULT_MEDIA_TYPE, Artifact, TaskNode

__all__ = ["Agent", "StreamedArtifact"]


@dataclass(frozen=True, slots=True)
class StreamedArtifact:
    """An output too big to hold whole: the SDK streams `chunks` to the store as they come.

    `chunks` is an async iterable of bytes, or a plain iterable (each chunk is then pulled in
    a worker thread, so computing it never blocks the event loop). The adapter returns it by
    reference (its `artifact_id`), so the content never passes through the dispatcher.

    Example:
        return [StreamedArtifact("out", read_file_in_chunks(path), media_type="text/csv")]
    """

    name: str
    chunks: AsyncIterable[bytes] | Iterable[bytes]
    media_type: str = DEFAULT_MEDIA_TYPE
    metadata: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Agent(Protocol):
    """What the SDK serves: an `AgentAdapter` whose outputs may also be `StreamedArtifact`s.

    Every `dagwire.runtime.adapter.AgentAdapter` is an `Agent`.
    """

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> Sequence[Artifact | StreamedArtifact]: ...
