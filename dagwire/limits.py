"""Every size limit dagwire puts on the wire, in storage and on submitted specs, named once.

Each limit has one name here and every module imports it from this one; `docs/limits.md` says
why each value is what it is. Nothing here imports the rest of dagwire, so any layer may use it.
"""

from __future__ import annotations

__all__ = [
    "ARTIFACT_CHUNK_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PAGE_SIZE",
    "FILE_IO_CHUNK_BYTES",
    "MAX_ARTIFACT_NAME_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_KEY_BYTES",
    "MAX_METADATA_VALUE_BYTES",
    "MAX_PAGE_SIZE",
    "MAX_SECRET_BYTES",
    "MAX_SPEC_BYTES",
    "MAX_SPEC_DEPTH",
    "MAX_SPEC_VALUES",
    "MAX_TASK_TIMEOUT_SECONDS",
    "OUTCOME_INLINE_BYTES",
    "PAGE_BYTE_BUDGET",
    "STORED_INLINE_BYTES",
    "WIRE_BATCH_BYTES",
    "WIRE_INLINE_OUTPUT_BYTES",
]

# ---------------------------------------------------------------------------------- messages

DEFAULT_MAX_MESSAGE_BYTES = 16 << 20
"""Largest gRPC message any dagwire server or client sends or accepts (both directions)."""

PAGE_BYTE_BUDGET = 4 << 20
"""Most encoded bytes of items in one page of a listing; a page ends early when the next item
would pass it (an item alone larger than the budget still goes out alone, under the message
limit). A quarter of the message limit leaves room for every framing and a raised page size."""

WIRE_BATCH_BYTES = 4 << 20
"""Most bytes of items in one batched write from the remote execution store client."""

ARTIFACT_CHUNK_BYTES = (1 << 20) - 4096
"""Bytes of artifact content per streamed message: with its protobuf and gRPC framing one chunk
stays within 1 MiB (grpcio streams larger messages several times slower)."""

FILE_IO_CHUNK_BYTES = 1 << 20
"""Bytes per read or write of a local artifact file."""

# ------------------------------------------------------------------------------------ inline

WIRE_INLINE_OUTPUT_BYTES = 1 << 20
"""An adapter's output up to this size may travel inline in its reply (and a task's input in a
dispatch); a larger one is uploaded to the store and sent by reference."""

STORED_INLINE_BYTES = 64 << 10
"""An artifact up to this size is kept inside its MongoDB document; a larger one goes to S3."""

OUTCOME_INLINE_BYTES = 256 << 10
"""Outputs of one attempt up to this many bytes in all are stored with its execution record in
one write; larger ones are stored first, separately."""

# ------------------------------------------------------------------------------------ paging

DEFAULT_PAGE_SIZE = 50
"""Items per page when a listing request leaves `page_size` at 0."""

MAX_PAGE_SIZE = 1000
"""A larger `page_size` is lowered to this."""

# ------------------------------------------------------------------------------------- specs

MAX_SPEC_BYTES = 4 << 20
"""Largest workflow spec text (UTF-8 bytes) the orchestrator parses."""

MAX_SPEC_DEPTH = 100
"""Most levels of nested mappings and lists in a spec, the top-level mapping included."""

MAX_SPEC_VALUES = 10_000_000
"""Most values in a spec once YAML aliases are expanded (an alias bomb stops here)."""

# --------------------------------------------------------------------------------- artifacts
MAX_ARTIFACT_NAME_BYTES = 1024
"""Longest artifact name (UTF-8 bytes): a file name is at most 255, an S3 key 1024."""
MAX_METADATA_ENTRIES = 256
"""Most entries in one artifact's metadata."""
MAX_METADATA_KEY_BYTES = 1024
"""Longest metadata key (UTF-8 bytes)."""
MAX_METADATA_VALUE_BYTES = 64 << 10
"""Longest metadata value (UTF-8 bytes)."""
MAX_SECRET_BYTES = 64 << 10
"""Largest secret file (`${secret.NAME}`, docs/security.md): a value meant for params."""
MAX_METADATA_BYTES = 256 << 10
"""Most bytes of one artifact's metadata in all (keys and values, UTF-8): a stored artifact
document stays far below MongoDB's 16 MiB, and a header far below the message limit."""

MAX_TASK_TIMEOUT_SECONDS = 100 * 365.25 * 86400
"""Longest task timeout (100 years): a longer one's deadline would pass what a timestamp holds
(year 9999), and its nanoseconds what a Duration holds."""
