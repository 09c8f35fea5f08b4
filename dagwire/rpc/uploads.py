"""What the store service checks at its boundary: artifact names, ids, and declared content."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping

from dagwire.rpc.status import InvalidArgumentError
from dagwire.stores._validate import ArtifactLimitError, check_artifact_limits

__all__ = [
    "check_artifact_fields",
    "check_artifact_name",
    "check_declared_sha256",
    "check_required",
    "verified_chunks",
]

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def check_required(value: str, field: str) -> str:
    """`value` if it is not empty.

    Args:
        value: a request field.
        field: its name in the request, for the message.

    Returns:
        `value`.

    Raises:
        InvalidArgumentError: `value` is empty (names `field`).
    """
    if not value:
        raise InvalidArgumentError(f"{field} is required", field=field)
    return value


def check_artifact_name(name: str, field: str = "header.name") -> str:
    """`name` if it is a safe artifact name: not empty, no ``/``, no ``..``, no NUL.

    Args:
        name: the artifact name from a request.
        field: its name in the request, for the message.

    Returns:
        `name`.

    Raises:
        InvalidArgumentError: the name is empty or contains ``/``, ``..`` or NUL.
    """
    check_required(name, field)
    for bad, label in (("\x00", "NUL"), ("/", "'/'"), ("..", "'..'")):
        if bad in name:
            raise InvalidArgumentError(
                f"{field} {name!r} must not contain {label} (a name is one path segment)",
                field=field,
            )
    return name


def check_artifact_fields(name: str, metadata: Mapping[str, str], prefix: str) -> str:
    """`name` if it is a safe artifact name (`check_artifact_name`) and the name and
    `metadata` are within their size limits (`dagwire.limits`).

    Args:
        name: the artifact name from a request.
        metadata: its metadata from the request.
        prefix: where they are in the request (``header.``, ``outputs[0].``).

    Raises:
        InvalidArgumentError: naming the field, and the limit it is over.
    """
    check_artifact_name(name, f"{prefix}name")
    try:
        check_artifact_limits(name, metadata, prefix=prefix)
    except ArtifactLimitError as exc:
        raise InvalidArgumentError(str(exc), field=exc.field) from None
    return name


def check_declared_sha256(value: str, field: str = "header.sha256") -> str | None:
    """The declared sha256 of an upload (None when not declared).

    Raises:
        InvalidArgumentError: set but not 64 lowercase hex digits.
    """
    if not value:
        return None
    if not _SHA256_HEX.match(value):
        raise InvalidArgumentError(
            f"{field} must be 64 lowercase hex digits, got {value!r}", field=field
        )
    return value


async def verified_chunks(
    chunks: AsyncIterable[bytes],
    *,
    sha256: str | None,
    size: int | None,
) -> AsyncIterator[bytes]:
    """Pass `chunks` through, failing before the stream ends if it breaks a declared size/sha256.

    A store's `store_stream()` discards an upload whose chunk iterator raises, so a mismatch
    raised here leaves nothing visible.

    Args:
        chunks: the content, in order.
        sha256: the declared lowercase hex sha256, or None.
        size: the declared size in bytes, or None.

    Yields:
        The chunks, unchanged.

    Raises:
        InvalidArgumentError: more or fewer bytes than `size`, or a different sha256.
    """
    if size is not None and size < 0:
        raise InvalidArgumentError(
            f"header.size must not be negative, got {size}", field="header.size"
        )
    hasher = hashlib.sha256() if sha256 is not None else None
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if size is not None and received > size:
            raise InvalidArgumentError(
                f"content is longer than the declared header.size of {size} bytes; "
                "nothing was stored",
                field="header.size",
            )
        if hasher is not None:
            hasher.update(chunk)
        yield chunk
    if size is not None and received != size:
        raise InvalidArgumentError(
            f"content is {received} bytes, not the declared header.size of {size}; "
            "nothing was stored",
            field="header.size",
        )
    if hasher is not None and hasher.hexdigest() != sha256:
        raise InvalidArgumentError(
            f"content sha256 is {hasher.hexdigest()}, not the declared header.sha256 {sha256}; "
            "nothing was stored",
            field="header.sha256",
        )
