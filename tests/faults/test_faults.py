"""Fault suite: kill -9 each kind of process of the replicated stack mid-run, restart it, and
check that every run still ends as it should, with its records, artifacts and events intact.

One cluster for the module (docs/faults.md). Per fault kind, `DAGWIRE_FAULTS_N` faults (default
1) at random points while runs are in flight; the RNG seed is printed (set
`DAGWIRE_FAULTS_SEED` to replay a schedule; `DAGWIRE_FAULTS_KINDS=a,b` to run some kinds only).
The table of faults, runs and violations is printed at the end.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from tests.faults.cluster import Cluster
from tests.faults.workload import Workload, check_run

pytestmark = pytest.mark.asyncio(loop_scope="module")

KINDS = ("orchestrator", "store", "adapter", "dispatcher", "ferretdb", "postgres", "minio")

#: Fault kinds whose failures are known runtime bugs not fixed yet: the test runs and reports,
#: and is expected to fail until the bug is fixed (the reason says what breaks).
KNOWN_ISSUES: dict[str, str] = {}

FAULTS_PER_KIND = int(os.environ.get("DAGWIRE_FAULTS_N", "1"))
SEED = int(os.environ.get("DAGWIRE_FAULTS_SEED", "0")) or random.SystemRandom().randrange(10**9)
SELECTED = tuple(
    k for k in os.environ.get("DAGWIRE_FAULTS_KINDS", ",".join(KINDS)).split(",") if k in KINDS
)


@dataclass
class KindReport:
    faults: int = 0
    runs: int = 0
    as_expected: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


REPORT: dict[str, KindReport] = {}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    started = await Cluster.start(tmp_path_factory.mktemp("faults"))
    try:
        yield started
    finally:
        await started.close()


def _say(config: pytest.Config, text: str) -> None:
    """Print past pytest's capture (the seed and the table must show on success too)."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:  # pragma: no cover - plugins disabled
        print(text)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(text)


async def _inject(cluster: Cluster, kind: str, rng: random.Random) -> str:
    """Kill one process of `kind` with SIGKILL, leave it down a random while, restart it."""
    downtime = rng.uniform(0.0, 1.5)
    if kind in ("ferretdb", "postgres", "minio"):
        await cluster.kill_server(kind)
        await asyncio.sleep(downtime)
        await cluster.restart_server(kind)
        return kind
    pool = {
        "orchestrator": cluster.orchestrators,
        "store": cluster.stores,
        "adapter": cluster.adapters,
        "dispatcher": cluster.dispatchers,
    }[kind]
    victim = rng.choice(pool)
    await cluster.kill_service(victim)
    await asyncio.sleep(downtime)
    await cluster.restart_service(victim)
    return victim.name


def _params() -> list[object]:
    out: list[object] = []
    for kind in SELECTED:
        marks = []
        if kind in KNOWN_ISSUES:
            marks.append(pytest.mark.xfail(reason=KNOWN_ISSUES[kind], strict=False))
        out.append(pytest.param(kind, marks=marks, id=kind))
    return out


@pytest.mark.parametrize("kind", _params())
async def test_runs_survive_kill_9(
    cluster: Cluster, kind: str, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(f"{SEED}-{kind}")
    _say(request.config, f"\nfaults[{kind}]: seed {SEED}, {FAULTS_PER_KIND} fault(s)")
    report = REPORT.setdefault(kind, KindReport())
    began = time.monotonic()
    workload = Workload(cluster, rng)
    load = asyncio.create_task(workload.run())
    try:
        # the first fault lands once runs are in flight
        while not any(c.run_id for c in workload.cases):
            await asyncio.sleep(0.05)
        for _ in range(FAULTS_PER_KIND):
            await asyncio.sleep(rng.uniform(0.3, 2.5))
            victim = await _inject(cluster, kind, rng)
            report.faults += 1
            _say(request.config, f"faults[{kind}]: killed and restarted {victim}")
    finally:
        workload.stop()
        await load
    for case in workload.cases:
        as_expected, violations = await check_run(cluster, case)
        report.runs += 1
        report.as_expected += as_expected
        report.violations += violations
    report.violations += workload.errors
    report.seconds = time.monotonic() - began
    if report.violations:
        path = cluster.tmp / f"violations-{kind}.txt"
        await asyncio.to_thread(path.write_text, "\n".join(report.violations) + "\n")
    assert not report.violations, (
        f"{len(report.violations)} invariant violation(s) under kill -9 of {kind} "
        f"(seed {SEED}, logs in {cluster.tmp}):\n" + "\n".join(report.violations)
    )


def _table() -> str:
    rows = [("fault kind", "faults", "runs", "as expected", "violations", "seconds")]
    total = KindReport()
    for kind in KINDS:
        if kind not in REPORT:
            continue
        r = REPORT[kind]
        rows.append(
            (
                kind,
                str(r.faults),
                str(r.runs),
                str(r.as_expected),
                str(len(r.violations)),
                f"{r.seconds:.0f}",
            )
        )
        total.faults += r.faults
        total.runs += r.runs
        total.as_expected += r.as_expected
        total.violations += r.violations
        total.seconds += r.seconds
    rows.append(
        (
            "total",
            str(total.faults),
            str(total.runs),
            str(total.as_expected),
            str(len(total.violations)),
            f"{total.seconds:.0f}",
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


async def test_teardown_leaves_no_process_or_port(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    """Runs last: prints the fault table, stops the cluster, finds what outlived it."""
    table = _table()
    _say(request.config, f"\nfault suite (seed {SEED}, {FAULTS_PER_KIND} per kind):\n{table}")
    report = Path(os.environ.get("DAGWIRE_FAULTS_REPORT", str(cluster.tmp / "faults-table.txt")))
    await asyncio.to_thread(report.write_text, f"seed {SEED}\n{table}\n")
    await cluster.close()
    await asyncio.sleep(0.5)
    leaks = cluster.leaks()
    assert not leaks, "after teardown:\n" + "\n".join(leaks)
