"""The Python adapter SDK: serve `{agent_key: AgentAdapter}` as an `AgentAdapterService`.

Example (a whole adapter process)::

    import sys
    from dagwire.models import Artifact
    from dagwire.sdk import serve

    class Shout:
        async def execute(self, task, inputs, trace_id):
            return [Artifact(name="out", content=task.params["text"].upper().encode())]

    sys.exit(serve({"shout": Shout()}))

`serve` reads `DAGWIRE_*` settings (listen, advertise, dispatcher and store addresses),
registers with the dispatcher and heartbeats, and on SIGTERM deregisters and drains. Raise
`NonRetryableError` to refuse retries, `ResourceExhaustedError(retry_after=...)` when
overloaded; any other exception is a retryable failure with its message. Outputs over 1 MiB,
and every `StreamedArtifact`, go to the store and return by reference.
"""

from dagwire.errors import NonRetryableError, ResourceExhaustedError
from dagwire.models import Artifact, TaskNode
from dagwire.sdk.artifacts import Agent, StreamedArtifact
from dagwire.sdk.registration import Registration, advertised_address
from dagwire.sdk.server import DEFAULT_CAPACITY, INLINE_LIMIT, AdapterServer, serve
from dagwire.sdk.servicer import AgentAdapterServicer

__all__ = [
    "DEFAULT_CAPACITY",
    "INLINE_LIMIT",
    "AdapterServer",
    "Agent",
    "AgentAdapterServicer",
    "Artifact",
    "NonRetryableError",
    "Registration",
    "ResourceExhaustedError",
    "StreamedArtifact",
    "TaskNode",
    "advertised_address",
    "serve",
]
