"""Store interfaces: where artifacts, execution records and runs are kept.

Backends live in their own modules so their dependencies load only when used:
`dagwire.stores.local` (files + SQLite), `dagwire.stores.mongo`, `dagwire.stores.s3`,
`dagwire.stores.tiered` (small artifacts inline in MongoDB, the rest in S3).
"""

from dagwire.stores.base import (
    ArtifactStore,
    BatchArtifactStore,
    ExecutionStore,
    RunLedger,
    ServiceRegistry,
)

__all__ = [
    # interfaces
    "ArtifactStore",
    "BatchArtifactStore",
    "ExecutionStore",
    "RunLedger",
    "ServiceRegistry",
]
