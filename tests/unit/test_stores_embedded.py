"""The store contract suite against the embedded stores (`LocalArtifactStore`, SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from dagwire.stores.local import LocalArtifactStore, SqliteExecutionStore
from tests.store_contract import *  # noqa: F403  (the contract's test functions)


@pytest.fixture
async def artifact_store(tmp_path: Path) -> AsyncIterator[LocalArtifactStore]:
    store = LocalArtifactStore(tmp_path / "artifacts")
    yield store
    await store.aclose()


@pytest.fixture
async def reopen_artifact_store(
    tmp_path: Path,
) -> AsyncIterator[Callable[[], LocalArtifactStore]]:
    opened: list[LocalArtifactStore] = []

    def reopen() -> LocalArtifactStore:
        opened.append(LocalArtifactStore(tmp_path / "artifacts"))
        return opened[-1]

    yield reopen
    for store in opened:
        await store.aclose()


@pytest.fixture
async def execution_store(tmp_path: Path) -> AsyncIterator[SqliteExecutionStore]:
    store = SqliteExecutionStore(tmp_path / "executions.sqlite3")
    yield store
    await store.aclose()


@pytest.fixture
async def reopen_execution_store(
    tmp_path: Path,
) -> AsyncIterator[Callable[[], SqliteExecutionStore]]:
    opened: list[SqliteExecutionStore] = []

    def reopen() -> SqliteExecutionStore:
        opened.append(SqliteExecutionStore(tmp_path / "executions.sqlite3"))
        return opened[-1]

    yield reopen
    for store in opened:
        await store.aclose()
