"""Embedded stores: artifacts as files under a directory, runs and attempts in SQLite."""

from __future__ import annotations

from dagwire.stores._artifacts import LocalArtifactStore
from dagwire.stores._executions import SqliteExecutionStore

__all__ = ["LocalArtifactStore", "SqliteExecutionStore"]
