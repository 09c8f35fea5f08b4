"""End-to-end fixtures: one `dagwire up` for the session, started as a user would start it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import UpProcess, free_port_base, running_up


@pytest.fixture(scope="session")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    """`dagwire up --port-base N --data-dir DIR` on free ports, ready; SIGTERM at the end."""
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    with running_up(data_dir, port_base=free_port_base()) as stack:
        yield stack


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Where a command runs: outside the repository, as an installed CLI would."""
    return tmp_path
