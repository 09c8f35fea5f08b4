"""The SDK's `AgentAdapterService`: decode a request, run the agent, encode its outputs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from datetime import UTC
from typing import Any

import grpc
import grpc.aio

from dagwire.errors import NonRetryableError, ResourceExhaustedError
from dagwire.limits import WIRE_INLINE_OUTPUT_BYTES
from dagwire.models import Artifact, TaskNode
from dagwire.rpc.auth import use_token
from dagwire.rpc.channels import client_channel
from dagwire.rpc.convert import artifact_from_proto, artifact_to_proto
from dagwire.rpc.logs import bound, current_context
from dagwire.rpc.status import InvalidArgumentError, RemoteError
from dagwire.rpc.store_client import RemoteArtifactStore
from dagwire.sdk.artifacts import Agent, StreamedArtifact
from dagwire.settings import DEFAULT_MAX_MESSAGE_BYTES
from dagwire.v1 import adapter_service_pb2_grpc, common_pb2
from dagwire.v1.adapter_service_pb2 import (
    DescribeRequest,
    DescribeResponse,
    ExecuteRequest,
    ExecuteResponse,
)

__all__ = ["INLINE_LIMIT", "AgentAdapterServicer"]

log = logging.getLogger(__name__)

INLINE_LIMIT = WIRE_INLINE_OUTPUT_BYTES
Context = grpc.aio.ServicerContext[Any, Any]


class AgentAdapterServicer(adapter_service_pb2_grpc.AgentAdapterServiceServicer):
    """`AgentAdapterService` over a mapping of agent keys to agents.

    Inputs held by reference are downloaded from the store service, so agents always get
    `content`; outputs over `inline_limit` bytes, and `StreamedArtifact`s, are uploaded to the
    store and returned by reference. An agent's `NonRetryableError` answers
    FAILED_PRECONDITION, `ResourceExhaustedError` RESOURCE_EXHAUSTED (with RetryInfo), and any
    other exception UNKNOWN with the exception's message (retryable).
    """

    def __init__(
        self,
        agents: Mapping[str, Agent],
        *,
        capacity: int,
        store_addr: str,
        version: str = "",
        inline_limit: int = INLINE_LIMIT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        """Describe the servicer; does no I/O.

        Args:
            agents: agent key -> agent.
            capacity: how many calls the adapter takes at once (declared in Describe).
            store_addr: the store service for uploads and for references without an address.
            version: free-form version shown by Describe.
            inline_limit: outputs with more bytes than this go to the store.
            max_message_bytes: message limit of the store channels.

        Raises:
            ValueError: no agents, an empty key, or capacity below 1.
        """
        if not agents or any(not key for key in agents):
            raise ValueError("an adapter serves at least one non-empty agent key")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.agents = dict(agents)
        self.capacity = capacity
        self.store_addr = store_addr
        self._version = version
        self._inline_limit = inline_limit
        self._max_message_bytes = max_message_bytes
        self._stores: dict[str, RemoteArtifactStore] = {}
        self._channels: list[grpc.aio.Channel] = []

    async def Execute(self, request: ExecuteRequest, context: Context) -> ExecuteResponse:
        trace_id = request.trace_id or str(current_context().get("trace_id", ""))
        with (
            bound(
                run_id=request.run_id or None,
                node_id=request.node_id or None,
                attempt=request.attempt or None,
                trace_id=trace_id or None,
            ),
            use_token(request.store_token or None),
        ):
            agent = self.agents.get(request.agent)
            if agent is None:
                served = ", ".join(repr(k) for k in sorted(self.agents))
                raise NonRetryableError(
                    f"this adapter serves agent keys {served}, not {request.agent!r}"
                )
            task = TaskNode(
                id=request.node_id,
                agent=request.agent,
                params=_params(request.params_json),
                attempt=request.attempt or 1,
                run_id=request.run_id,
                deadline=(
                    request.deadline.ToDatetime(tzinfo=UTC)
                    if request.HasField("deadline")
                    else None
                ),
            )
            inputs = await self._inputs(request.input_artifacts)
            log.debug("executing %s", request.agent)
            outputs = await _run(agent, task, inputs, trace_id)
            encoded = await asyncio.gather(*(self._output(o, request) for o in outputs))
            log.debug("%s returned %d artifact(s)", request.agent, len(encoded))
            return ExecuteResponse(output_artifacts=encoded)

    async def Describe(self, request: DescribeRequest, context: Context) -> DescribeResponse:
        return DescribeResponse(
            agents=sorted(self.agents),
            capacity=self.capacity,
            version=self._version,
            language="python",
        )

    def store(self, address: str = "") -> RemoteArtifactStore:
        """The store client of `address` (default: the configured store), opened once."""
        address = address or self.store_addr
        client = self._stores.get(address)
        if client is None:
            # calls of an attempt send its store grant (`use_token` in `Execute`)
            channel = client_channel(
                address, max_message_bytes=self._max_message_bytes, call_tokens=True
            )
            client = RemoteArtifactStore(
                address, channel=channel, max_message_bytes=self._max_message_bytes
            )
            self._stores[address] = client
            self._channels.append(channel)
        return client

    async def _inputs(self, messages: Iterable[common_pb2.Artifact]) -> list[Artifact]:
        """The inputs with their content, referenced ones fetched from the configured store.

        Raises:
            InvalidArgumentError: a reference names another store (`_check_store_address`).
        """
        messages = list(messages)
        for i, message in enumerate(messages):
            self._check_store_address(message.reference.store_address, i)

        async def one(message: common_pb2.Artifact) -> Artifact:
            artifact = artifact_from_proto(message)
            if artifact.content is not None:
                return artifact
            if not artifact.artifact_id:
                return dataclasses.replace(artifact, content=b"")
            loaded = await self.store().load(artifact.artifact_id)
            return dataclasses.replace(artifact, content=loaded.content)

        return list(await asyncio.gather(*(one(m) for m in messages)))

    def _check_store_address(self, address: str, index: int) -> None:
        """Refuse a reference to a store other than the configured one: the caller must not
        make the adapter dial an address of its choosing (and send it the attempt's ids).

        Raises:
            InvalidArgumentError: `address` is set and is not the configured store's.
        """
        if address and address != self.store_addr:
            field = f"input_artifacts[{index}].reference.store_address"
            raise InvalidArgumentError(
                f"{field} {address!r} is not this adapter's store ({self.store_addr}): an "
                "adapter fetches inputs only from the store it is configured with "
                "(DAGWIRE_STORE_ADDR / --store-addr)",
                field=field,
            )

    async def _output(
        self, output: Artifact | StreamedArtifact, request: ExecuteRequest
    ) -> common_pb2.Artifact:
        if isinstance(output, StreamedArtifact):
            meta = Artifact(
                name=output.name,
                media_type=output.media_type,
                metadata=dict(output.metadata),
                run_id=request.run_id or None,
                node_id=request.node_id or None,
            )
            stored = await self.store().store_stream(meta, _async_chunks(output.chunks))
            return self._reference(stored)
        if output.content is None:
            if output.artifact_id:  # the agent put it in the store itself
                return self._reference(output)
            raise _agent_error(
                request.agent,
                f"output artifact {output.name!r} has neither content nor an artifact_id",
            )
        if len(output.content) <= self._inline_limit:
            return artifact_to_proto(output)
        stamped = dataclasses.replace(
            output,
            run_id=output.run_id or request.run_id or None,
            node_id=output.node_id or request.node_id or None,
        )
        return self._reference(await self.store().store(stamped))

    def _reference(self, artifact: Artifact) -> common_pb2.Artifact:
        message = artifact_to_proto(artifact, with_content=False)
        message.reference.store_address = self.store_addr
        return message

    async def aclose(self) -> None:
        """Close the store channels."""
        stores, self._stores = list(self._stores.values()), {}
        await asyncio.gather(*(s.aclose() for s in stores), return_exceptions=True)
        channels, self._channels = self._channels, []
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)


async def _run(
    agent: Agent, task: TaskNode, inputs: list[Artifact], trace_id: str
) -> list[Artifact | StreamedArtifact]:
    try:
        outputs = await agent.execute(task, inputs, trace_id)
    except (NonRetryableError, ResourceExhaustedError) as exc:
        log.info("%s refused the task: %s: %s", task.agent, type(exc).__name__, exc)
        raise
    except Exception as exc:
        log.warning("%s failed: %s", task.agent, exc, exc_info=exc)
        raise _agent_error(task.agent, str(exc) or type(exc).__name__, type(exc).__name__) from exc
    if not isinstance(outputs, list | tuple) or not all(
        isinstance(o, Artifact | StreamedArtifact) for o in outputs
    ):
        raise _agent_error(
            task.agent,
            f"agent {task.agent!r} returned {type(outputs).__name__}, expected a list of "
            "Artifact or StreamedArtifact",
        )
    return list(outputs)


def _agent_error(agent: str, message: str, exception: str = "") -> RemoteError:
    """A retryable failure of the agent: UNKNOWN with the message, as docs/contracts.md §4 says."""
    metadata = {"agent": agent} | ({"exception": exception} if exception else {})
    return RemoteError(
        message, code=grpc.StatusCode.UNKNOWN, reason="AGENT_FAILED", metadata=metadata
    )


def _params(params_json: str) -> Any:
    if not params_json:
        return None
    try:
        return json.loads(params_json)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(
            f"params_json is not JSON text: {exc}", field="params_json"
        ) from None


async def _async_chunks(chunks: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    """The chunks as an async iterator; a plain iterable is pulled in a worker thread."""
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
        return
    iterator = iter(chunks)
    while True:
        piece = await asyncio.to_thread(_next_chunk, iterator)
        if piece is None:
            return
        yield piece


def _next_chunk(iterator: Iterator[bytes]) -> bytes | None:
    return next(iterator, None)
