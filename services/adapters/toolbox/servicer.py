"""The toolbox agents as the SDK serves them: `dagwire.toolbox`, with `blob` streamed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dagwire.models import Artifact, TaskNode
from dagwire.sdk import Agent, StreamedArtifact
from dagwire.toolbox import blob_chunks, blob_params, toolbox_adapters

__all__ = ["StreamingBlobAgent", "toolbox_agents"]


class StreamingBlobAgent:
    """`blob`, streamed to the store chunk by chunk (never whole in memory)."""

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> Sequence[Artifact | StreamedArtifact]:
        size, seed = blob_params(task)
        return [
            StreamedArtifact("out", blob_chunks(size, seed), media_type="application/octet-stream")
        ]


def toolbox_agents() -> Mapping[str, Agent]:
    """Every toolbox agent key -> its agent (`blob` streaming)."""
    agents: dict[str, Agent] = dict(toolbox_adapters())
    agents["blob"] = StreamingBlobAgent()
    return agents
