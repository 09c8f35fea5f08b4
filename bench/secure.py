"""The cost of TLS + mTLS + tokens per task: the full stack plain and secure, side by side.

The full stack (store, dispatcher, toolbox, orchestrator as separate processes), on embedded
storage and on FerretDB + MinIO (``DAGWIRE_BENCH_BACKENDS``, as for `bench.full_stack`), runs
the chain of 200 and the fan-out of 500 `echo` tasks of `bench.full_stack`, once as it is and once
as `dagwire up --secure` runs it: every hop on mTLS, every call carrying a token checked
against the auth file, each attempt with a store grant (docs/security.md). Plain and secure
stacks alternate for ``DAGWIRE_BENCH_ROUNDS`` rounds (default 2) so that both see the same
machine; the table has the best ms/task of ``DAGWIRE_BENCH_REPEAT`` runs (default 5) of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from bench.full_stack import BACKENDS, SHAPES, _backend, _run_once, _Service, wait_registered
from dagwire.rpc.orchestrator_client import OrchestratorClient
from dagwire_cli.secure import SecureSetup, prepare_secure

__all__ = ["run"]


@contextlib.contextmanager
def _client_environment(setup: SecureSetup | None) -> Iterator[None]:
    """This process dials as the admin of `setup` (plaintext and no token for None)."""
    saved = dict(os.environ)
    if setup is not None:
        os.environ.update(setup.client_env("admin"))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.asynccontextmanager
async def _stack(
    folder: Path, setup: SecureSetup | None, store_env: dict[str, str]
) -> AsyncIterator[_Service]:
    """The four processes (the store's storage as `store_env` says); yields the
    orchestrator."""

    def env(name: str) -> dict[str, str]:
        return setup.service_env(name) if setup is not None else {}

    store = _Service(
        "store",
        "dagwire_services.store",
        [],
        folder,
        env={**store_env, "DAGWIRE_DATA_DIR": str(folder / "data"), **env("store")},
    )
    dispatcher = _Service(
        "dispatcher", "dagwire_services.dispatcher", [], folder, env("dispatcher")
    )
    toolbox = _Service(
        "toolbox",
        "dagwire_services.adapters.toolbox",
        ["--dispatcher-addr", dispatcher.address, "--store-addr", store.address],
        folder,
        env("toolbox"),
    )
    orchestrator = _Service(
        "orchestrator",
        "dagwire_services.orchestrator",
        ["--store-addr", store.address, "--dispatcher-addr", dispatcher.address],
        folder,
        env("orchestrator"),
    )
    services = [store, dispatcher, toolbox, orchestrator]
    try:
        store.start()
        dispatcher.start()
        await asyncio.gather(store.wait_serving(), dispatcher.wait_serving())
        toolbox.start()
        await toolbox.wait_serving()
        await wait_registered(dispatcher, toolbox)
        orchestrator.start()
        await orchestrator.wait_serving()
        yield orchestrator
    finally:
        for service in reversed(services):
            service.stop()


async def _measure(
    folder: Path, setup: SecureSetup | None, store_env: dict[str, str], repeat: int
) -> dict[str, float]:
    """Best ms/task of each shape on a fresh stack."""
    best: dict[str, float] = {}
    with _client_environment(setup):
        async with (
            _stack(folder, setup, store_env) as orchestrator,
            OrchestratorClient(orchestrator.address) as client,
        ):
            for shape in SHAPES:
                await _run_once(client, shape)  # warm-up
            for shape in SHAPES:
                times = [await _run_once(client, shape) for _ in range(repeat)]
                best[shape.name] = min(times) / shape.tasks * 1000
    return best


async def _run() -> list[dict[str, Any]]:
    repeat = max(1, int(os.environ.get("DAGWIRE_BENCH_REPEAT", "5")))
    rounds = max(1, int(os.environ.get("DAGWIRE_BENCH_ROUNDS", "2")))
    chosen = [
        b.strip()
        for b in os.environ.get("DAGWIRE_BENCH_BACKENDS", ",".join(BACKENDS)).split(",")
        if b.strip()
    ]
    rows: list[dict[str, Any]] = []
    for backend_name in chosen:
        root = Path(tempfile.mkdtemp(prefix="dagwire-bench-secure-"))
        try:
            setup = prepare_secure(root, host="127.0.0.1", addresses={})
            plain: dict[str, float] = {}
            secure: dict[str, float] = {}
            with _backend(backend_name, root / "backend") as backend:
                for i in range(rounds):
                    for label, which, into in (("plain", None, plain), ("secure", setup, secure)):
                        folder = root / f"{label}-{i}"
                        folder.mkdir()
                        measured = await _measure(folder, which, backend.store_env, repeat)
                        for shape, ms in measured.items():
                            into[shape] = min(ms, into.get(shape, float("inf")))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        rows += [
            {
                "backend": backend_name,
                "shape": shape.name,
                "plain_ms_task": f"{plain[shape.name]:.2f}",
                "secure_ms_task": f"{secure[shape.name]:.2f}",
                "cost_ms_task": f"{secure[shape.name] - plain[shape.name]:+.2f}",
                "change": f"{(secure[shape.name] / plain[shape.name] - 1) * 100:+.1f}%",
            }
            for shape in SHAPES
        ]
    return rows


def run() -> list[dict[str, Any]]:
    """Rows: ms/task plain vs TLS + mTLS + tokens + grants, chain and fan-out, per backend."""
    return asyncio.run(_run())
