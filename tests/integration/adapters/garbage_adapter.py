"""A misbehaving adapter for tests: ``python garbage_adapter.py --listen-addr HOST:PORT``.

It speaks the `AgentAdapterService` contract at the byte level so it can break it:

- ``bad_bytes``: answers Execute with bytes that are not an `ExecuteResponse`;
- ``die_mid_call``: logs that it got the call, then the whole process exits (status 3) before
  answering, as a crashing adapter would.

Describe and the standard health service answer normally, so the dispatcher takes it for a
healthy adapter (register it with the dispatcher's ``--static-adapters``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dagwire.v1 import adapter_service_pb2 as apb

AGENTS = ("bad_bytes", "die_mid_call")
#: A field-1 (output_artifacts) header announcing far more bytes than follow: never decodes.
UNDECODABLE = b"\x0a\xff\xff\xff\x0fgarbage"


def _log(message: str, **fields: Any) -> None:
    sys.stderr.write(json.dumps({"service": "garbage", "message": message, **fields}) + "\n")
    sys.stderr.flush()


async def _execute(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    request = apb.ExecuteRequest.FromString(raw)
    _log(f"executing {request.agent}", node_id=request.node_id, attempt=request.attempt)
    if request.agent == "die_mid_call":
        await asyncio.sleep(0.2)  # the call is established and waiting for its answer
        os._exit(3)
    return UNDECODABLE


async def _describe(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    reply = apb.DescribeResponse(agents=list(AGENTS), capacity=10, language="python")
    return reply.SerializeToString()


def _identity(data: bytes) -> bytes:
    return data


async def serve(address: str) -> None:
    server = grpc.aio.server()
    handlers = {
        "Execute": grpc.unary_unary_rpc_method_handler(
            _execute, request_deserializer=_identity, response_serializer=_identity
        ),
        "Describe": grpc.unary_unary_rpc_method_handler(
            _describe, request_deserializer=_identity, response_serializer=_identity
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("dagwire.v1.AgentAdapterService", handlers),)
    )
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(address)
    await server.start()
    _log(f"garbage adapter serving on {address}")
    await server.wait_for_termination()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-addr", required=True)
    asyncio.run(serve(parser.parse_args().listen_addr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
