"""The toolbox agents of docs/contracts.md §8 (echo, upper, concat, fail, sleep, blob) as
in-process adapters.

The toolbox adapter service serves exactly these over gRPC; tests and benchmarks use them
in-process too, so both paths share one implementation.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

from dagwire.errors import NonRetryableError
from dagwire.models import Artifact, TaskNode
from dagwire.runtime.adapter import AgentAdapter

__all__ = [
    "BLOB_MAX_SIZE",
    "TOOLBOX_AGENTS",
    "BlobAgent",
    "ConcatAgent",
    "EchoAgent",
    "FailAgent",
    "SleepAgent",
    "UpperAgent",
    "blob_chunks",
    "blob_params",
    "toolbox_adapters",
]

TEXT = "text/plain"
BLOB_MAX_SIZE = 4 * 1024**3


def _params(task: TaskNode) -> dict[str, Any]:
    if task.params is None:
        return {}
    if not isinstance(task.params, dict):
        raise NonRetryableError(
            f"task {task.id!r}: agent {task.agent!r} expects params to be a mapping, "
            f"got {type(task.params).__name__}"
        )
    return task.params


def _joined(inputs: list[Artifact], sep: str = "") -> str:
    return sep.join((a.content or b"").decode("utf-8", errors="replace") for a in inputs)


def _text_out(text: str) -> list[Artifact]:
    return [Artifact(name="out", content=text.encode("utf-8"), media_type=TEXT)]


def _text_param(task: TaskNode, inputs: list[Artifact]) -> str:
    params = _params(task)
    if "text" in params:
        text = params["text"]
        return text if isinstance(text, str) else str(text)
    return _joined(inputs)


def _number_param(task: TaskNode, name: str, default: float) -> float:
    value = _params(task).get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NonRetryableError(f"task {task.id!r}: params.{name} must be a number, got {value!r}")
    return float(value)


class EchoAgent:
    """`params.text` if given, else the inputs joined."""

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        return _text_out(_text_param(task, input_artifacts))


class UpperAgent:
    """Like echo, upper-cased."""

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        return _text_out(_text_param(task, input_artifacts).upper())


class ConcatAgent:
    """The inputs joined with `params.sep` (default "")."""

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        sep = _params(task).get("sep", "")
        return _text_out(_joined(input_artifacts, sep if isinstance(sep, str) else str(sep)))


class FailAgent:
    """Fails (retryably) with `params.message`; with `params.times: k`, only attempts 1..k fail."""

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        params = _params(task)
        times = params.get("times")
        if times is None or task.attempt <= int(times):
            raise RuntimeError(str(params.get("message", "failed on purpose")))
        return _text_out(_text_param(task, input_artifacts))


class SleepAgent:
    """Sleeps `params.seconds` (default 1), then behaves like echo."""

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        await asyncio.sleep(max(_number_param(task, "seconds", 1.0), 0.0))
        return _text_out(_text_param(task, input_artifacts))


def blob_chunks(size: int, seed: int = 0) -> Iterator[bytes]:
    """The `blob` agent's bytes, in chunks of about 1 MiB: the concatenation of the raw 32-byte
    digests sha256(f"{seed}:{i}") for i = 0, 1, 2 ..., truncated to `size`."""
    digests_per_chunk = 32 * 1024  # 1 MiB
    remaining = size
    i = 0
    while remaining > 0:
        chunk = b"".join(
            hashlib.sha256(f"{seed}:{j}".encode()).digest() for j in range(i, i + digests_per_chunk)
        )
        i += digests_per_chunk
        piece = chunk[:remaining]
        remaining -= len(piece)
        yield piece


def blob_params(task: TaskNode) -> tuple[int, int]:
    """The `blob` agent's ``(size, seed)`` from `task.params`.

    Raises:
        NonRetryableError: size is not an integer from 0 to 4 GiB, or seed not an integer.
    """
    params = _params(task)
    size, seed = params.get("size", 0), params.get("seed", 0)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= BLOB_MAX_SIZE:
        raise NonRetryableError(
            f"task {task.id!r}: params.size must be an integer from 0 to {BLOB_MAX_SIZE}, "
            f"got {size!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise NonRetryableError(f"task {task.id!r}: params.seed must be an integer, got {seed!r}")
    return size, seed


class BlobAgent:
    """`params.size` deterministic bytes (see `blob_chunks`), `application/octet-stream`.

    In-process the bytes are returned whole; the toolbox service streams them to the store
    (`blob_params` + `blob_chunks`).
    """

    async def execute(
        self, task: TaskNode, input_artifacts: list[Artifact], trace_id: str
    ) -> list[Artifact]:
        size, seed = blob_params(task)
        content = b"".join(blob_chunks(size, seed))
        return [Artifact(name="out", content=content, media_type="application/octet-stream")]


TOOLBOX_AGENTS: dict[str, type[AgentAdapter]] = {
    "echo": EchoAgent,
    "upper": UpperAgent,
    "concat": ConcatAgent,
    "fail": FailAgent,
    "sleep": SleepAgent,
    "blob": BlobAgent,
}


def toolbox_adapters() -> dict[str, AgentAdapter]:
    """A fresh adapter per toolbox agent key."""
    return {key: cls() for key, cls in TOOLBOX_AGENTS.items()}
