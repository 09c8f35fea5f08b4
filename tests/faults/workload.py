"""The runs the fault suite keeps in flight, what each must end as, and the invariants checked
on them once every run has ended (docs/faults.md)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from dagwire.errors import DagwireError
from dagwire.models import RunRecord, RunStatus, TaskStatus
from dagwire.runtime import RunEventKind
from dagwire.toolbox import blob_chunks
from tests.faults.cluster import Cluster

__all__ = ["RunCase", "Workload", "check_run", "make_case"]

#: Retries for tasks that a killed adapter or dispatcher must not fail: enough attempts, with
#: backoff, to outlast a restart and the adapters' re-registration.
RETRY = {"max_attempts": 20, "initial_backoff": 0.2, "max_backoff": 2.0}
BLOB_SIZE = 1_100_000  # above the 1 MiB inline limit: streamed to MinIO, passed by reference
FINAL_WITHIN = 240.0


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class RunCase:
    """One run to make: its spec, and what it must end as."""

    kind: str
    spec: dict[str, Any]
    request_id: str
    #: "succeeded" or "failed"
    expected_status: str
    #: node -> the only status it may end in
    expected_nodes: dict[str, str]
    #: node -> the bytes its one output must hold (where cheap to know)
    expected_bytes: dict[str, bytes] = field(default_factory=dict)
    #: nodes that fail by themselves, and the error their last attempt must carry
    doomed_error: str = ""
    run_id: str = ""
    record: RunRecord | None = None
    started_at: float = 0.0


def _task(
    task_id: str, agent: str, *deps: str, retry: bool = True, **params: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": task_id, "agent": agent}
    if deps:
        out["depends_on"] = list(deps)
    if params:
        out["params"] = params
    if retry:
        out["retry"] = dict(RETRY)
    return out


def make_case(rng: random.Random, index: int) -> RunCase:
    """A chain, a fan-out over a streamed blob, or a run with a task that fails by itself."""
    tag = f"r{index}-{rng.randrange(10**6)}"
    request_id = f"faults-{uuid.uuid4().hex}"
    shape = ("chain", "fanout", "doomed")[index % 3]
    if shape == "chain":
        hello = f"hello {tag}".encode()
        spec = {
            "name": f"faults-chain-{index}",
            "tasks": [
                _task("greet", "echo", text=hello.decode()),
                _task("nap", "sleep", "greet", seconds=0.4),
                _task("shout", "upper", "nap"),
                _task("flaky", "fail", "shout", message="flaky on purpose", times=1),
                _task("nap2", "sleep", "flaky", seconds=0.4),
                _task("both", "concat", "nap2", "greet", sep=" / "),
            ],
        }
        loud = hello.upper()
        expected = {
            "greet": hello,
            "nap": hello,
            "shout": loud,
            "flaky": loud,
            "nap2": loud,
            "both": loud + b" / " + hello,
        }
        return RunCase(
            shape,
            spec,
            request_id,
            "succeeded",
            dict.fromkeys(expected, "succeeded"),
            expected,
        )
    if shape == "fanout":
        seed = rng.randrange(10**6)
        blob = b"".join(blob_chunks(BLOB_SIZE, seed))
        spec = {
            "name": f"faults-fanout-{index}",
            "tasks": [
                _task("big", "blob", size=BLOB_SIZE, seed=seed),
                _task("copy", "sleep", "big", seconds=0.3),
                *(_task(f"leaf{i}", "echo", text=f"{tag}-{i}") for i in range(4)),
                _task("join", "concat", *(f"leaf{i}" for i in range(4)), sep=","),
            ],
        }
        leaves = {f"leaf{i}": f"{tag}-{i}".encode() for i in range(4)}
        expected = {"big": blob, **leaves, "join": b",".join(leaves.values())}
        return RunCase(
            shape,
            spec,
            request_id,
            "succeeded",
            dict.fromkeys([*expected, "copy"], "succeeded"),
            expected,  # `copy` re-encodes the blob as text: its sha256 is checked, not its bytes
        )
    text = f"doomed {tag}".encode()
    spec = {
        "name": f"faults-doomed-{index}",
        "tasks": [
            _task("start", "echo", text=text.decode()),
            {
                **_task("bad", "fail", "start", retry=False, message="fails by itself"),
                "retry": {"max_attempts": 2, "initial_backoff": 0.1},
            },
            _task("after", "upper", "bad"),
            _task("side", "sleep", "start", seconds=0.5),
        ],
    }
    return RunCase(
        shape,
        spec,
        request_id,
        "failed",
        {"start": "succeeded", "bad": "failed", "after": "skipped", "side": "succeeded"},
        {"start": text, "side": text},
        doomed_error="fails by itself",
    )


class Workload:
    """Keeps `concurrency` runs in flight on live orchestrator replicas until stopped."""

    def __init__(self, cluster: Cluster, rng: random.Random, concurrency: int = 3) -> None:
        self.cluster = cluster
        self.rng = rng
        self.concurrency = concurrency
        self.cases: list[RunCase] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._index = 0

    async def start_one(self, case: RunCase) -> None:
        """StartRun on a live replica; on failure, the same request_id on another one."""
        deadline = time.monotonic() + 60
        last: Exception | None = None
        while time.monotonic() < deadline:
            for client in list(self.cluster.live_orchestrators()):
                try:
                    case.run_id = await client.start_run(
                        json.dumps(case.spec), request_id=case.request_id
                    )
                    case.started_at = time.monotonic()
                    return
                except DagwireError as exc:
                    last = exc
            await asyncio.sleep(0.2)
        raise AssertionError(f"StartRun of {case.request_id} failed on every replica: {last!r}")

    async def wait_final(self, case: RunCase, within: float = FINAL_WITHIN) -> RunRecord | None:
        """Poll GetRun on live replicas until the run is final (None after `within`)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for client in list(self.cluster.live_orchestrators()):
                try:
                    record = await client.get_run(case.run_id)
                except DagwireError:
                    continue
                if RunStatus(record.status).is_final:
                    case.record = record
                    return record
                break
            await asyncio.sleep(0.25)
        return None

    async def _lane(self) -> None:
        while not self._stop.is_set():
            case = make_case(self.rng, self._index)
            self._index += 1
            self.cases.append(case)
            try:
                await self.start_one(case)
            except AssertionError as exc:
                self.errors.append(str(exc))
                return
            await self.wait_final(case)

    async def run(self) -> None:
        await asyncio.gather(*(self._lane() for _ in range(self.concurrency)))

    def stop(self) -> None:
        self._stop.set()


async def check_run(cluster: Cluster, case: RunCase) -> tuple[bool, list[str]]:
    """(ended as expected, invariant violations) of one run, each violation one precise line."""
    violations: list[str] = []
    rid = case.run_id
    where = f"run {rid} ({case.kind})"
    record = case.record
    if not rid:
        return False, [f"{case.request_id}: never started"]
    if record is None:
        return False, [f"{where}: not final {FINAL_WITHIN:.0f} s after it started"]
    status = str(record.status)
    expected = status == case.expected_status
    if not expected:
        violations.append(
            f"{where}: ended {status!r}, expected {case.expected_status!r} (error {record.error!r})"
        )
    for node, want in case.expected_nodes.items():
        got = record.nodes.get(node)
        got_status = str(got.status) if got is not None else "<missing>"
        if got_status != want:
            expected = False
            error = got.error if got is not None else None
            violations.append(
                f"{where}: task {node} ended {got_status!r}, expected {want!r} ({error!r})"
            )

    executions = cluster.executions()
    artifacts = cluster.artifacts()
    try:
        records = await executions.list_records(rid)
        by_node: dict[str, list[Any]] = {}
        seen: set[tuple[str, int]] = set()
        for r in records:
            if (r.node_id, r.attempt) in seen:
                violations.append(f"{where}: record {r.node_id}#{r.attempt} duplicated")
            seen.add((r.node_id, r.attempt))
            by_node.setdefault(r.node_id, []).append(r)
            if not TaskStatus(r.status).is_final:
                violations.append(
                    f"{where}: record {r.node_id}#{r.attempt} left {str(r.status)!r} "
                    "after the run ended"
                )
        for node, summary in record.nodes.items():
            attempts = sorted(r.attempt for r in by_node.get(node, []))
            if attempts != list(range(1, len(attempts) + 1)):
                violations.append(f"{where}: task {node} records have attempts {attempts} (a gap)")
            if summary.attempts != len(attempts):
                violations.append(
                    f"{where}: task {node} summary says {summary.attempts} attempt(s), "
                    f"{len(attempts)} record(s) stored"
                )
            succeeded = [r for r in by_node.get(node, []) if str(r.status) == "succeeded"]
            if str(summary.status) == "succeeded":
                if len(succeeded) != 1:
                    violations.append(
                        f"{where}: succeeded task {node} has {len(succeeded)} succeeded records"
                    )
                else:
                    ids = [a.artifact_id for a in summary.artifacts]
                    if list(succeeded[0].output_artifact_ids) != ids:
                        violations.append(
                            f"{where}: task {node} summary artifacts {ids} differ from its "
                            f"succeeded record's {succeeded[0].output_artifact_ids}"
                        )
            elif succeeded:
                violations.append(
                    f"{where}: task {node} ended {str(summary.status)!r} with a succeeded record"
                )
            if str(summary.status) == "failed" and case.expected_nodes.get(node) != "failed":
                last = max(by_node.get(node, []), key=lambda r: r.attempt, default=None)
                violations.append(
                    f"{where}: task {node} failed, but not by itself: last attempt's error "
                    f"{last.error if last else None!r}"
                )
        for node in by_node:
            if node not in record.nodes:
                violations.append(f"{where}: records of unknown task {node}")
        for node, summary in record.nodes.items():
            for art in summary.artifacts:
                digest = hashlib.sha256()
                size = 0
                async for chunk in artifacts.open(art.artifact_id or ""):
                    digest.update(chunk)
                    size += len(chunk)
                if (digest.hexdigest(), size) != (art.sha256, art.size):
                    violations.append(
                        f"{where}: artifact {art.artifact_id} of {node}: bytes have sha256 "
                        f"{digest.hexdigest()} size {size}, recorded {art.sha256} size {art.size}"
                    )
                want = case.expected_bytes.get(node)
                if want is not None and (art.sha256, art.size) != (_sha(want), len(want)):
                    violations.append(
                        f"{where}: artifact of {node} holds other bytes than the task makes "
                        f"(sha256 {art.sha256}, want {_sha(want)})"
                    )
        stored: list[Any] = []
        after = 0
        while True:
            page = await executions.list_events(rid, after=after, limit=1000)
            if not page:
                break
            stored += page
            after = page[-1].sequence
        sequences = [e.sequence for e in stored]
        if sequences != list(range(1, len(sequences) + 1)):
            violations.append(
                f"{where}: stored event sequences are not 1..n: {_compact(sequences)}"
            )
        kinds = [str(e.data.get("kind", "")) for e in stored]
        finished = [i for i, k in enumerate(kinds) if k == RunEventKind.RUN_FINISHED.value]
        if finished != [len(kinds) - 1]:
            violations.append(
                f"{where}: run_finished at positions {finished} of {len(kinds)} stored events"
            )
        client = next(cluster.live_orchestrators())
        try:
            async with asyncio.timeout(30):
                watched = [e.sequence async for e in client.watch_run(rid)]
        except TimeoutError:
            watched = [-1]
        if watched != sequences:
            violations.append(
                f"{where}: WatchRun replays sequences {_compact(watched)}, "
                f"the store holds {_compact(sequences)}"
            )
    finally:
        await executions.aclose()
        await artifacts.aclose()
    return expected, violations


def _compact(seq: list[int]) -> str:
    if len(seq) <= 12:
        return str(seq)
    return f"{seq[:5]} ... {seq[-5:]} ({len(seq)} in all)"
