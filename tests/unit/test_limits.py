"""Each wire and storage limit is one named constant in `dagwire.limits` (docs/limits.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dagwire.limits as limits
from dagwire import settings
from dagwire.rpc import dispatcher_client, paging, store_client
from dagwire.runtime import _attempts
from dagwire.sdk import servicer as sdk_servicer
from dagwire.stores import _artifacts, _files, s3, tiered
from dagwire_services.store import servicer as store_servicer

ROOT = Path(__file__).resolve().parents[2]
LIMIT_NAME = re.compile(r"INLINE|MESSAGE|CHUNK|PAGE_SIZE|BATCH_BYTES|MAX_SPEC", re.IGNORECASE)
#: Names that match but are no wire limit: the length of an error text, a test agent's layout.
NOT_LIMITS = {"_MAX_MESSAGE_CHARS", "digests_per_chunk"}


def _number_literal(node: ast.expr) -> bool:
    """A literal number or arithmetic on literal numbers only (`1 << 20`, `64 * 1024`)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float) and not isinstance(node.value, bool)
    if isinstance(node, ast.BinOp):
        return _number_literal(node.left) and _number_literal(node.right)
    if isinstance(node, ast.UnaryOp):
        return _number_literal(node.operand)
    return False


def test_no_limit_is_defined_with_a_literal_outside_dagwire_limits() -> None:
    offenders: list[str] = []
    for base in ("dagwire", "services", "clients/python"):
        for path in sorted((ROOT / base).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith("dagwire/v1/") or relative == "dagwire/limits.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), relative)):
                targets: list[ast.expr] = []
                if isinstance(node, ast.Assign):
                    targets, value = node.targets, node.value
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    targets, value = [node.target], node.value
                else:
                    continue
                for target in targets:
                    if (
                        isinstance(target, ast.Name)
                        and LIMIT_NAME.search(target.id)
                        and target.id not in NOT_LIMITS
                        and _number_literal(value)
                    ):
                        offenders.append(f"{relative}:{node.lineno} {target.id}")
    assert offenders == []


def test_every_old_name_is_the_one_constant() -> None:
    assert tiered.INLINE_LIMIT == s3.INLINE_LIMIT == limits.STORED_INLINE_BYTES
    assert dispatcher_client.INLINE_LIMIT == limits.WIRE_INLINE_OUTPUT_BYTES
    assert sdk_servicer.INLINE_LIMIT == limits.WIRE_INLINE_OUTPUT_BYTES
    assert _attempts.OUTCOME_INLINE_BYTES == store_client.OUTCOME_INLINE_BYTES
    assert store_client.OUTCOME_INLINE_BYTES == limits.OUTCOME_INLINE_BYTES
    assert settings.DEFAULT_MAX_MESSAGE_BYTES == limits.DEFAULT_MAX_MESSAGE_BYTES
    chunks = {
        store_client.CHUNK_BYTES,
        s3.CHUNK_SIZE,
        _artifacts.READ_CHUNK_SIZE,
        store_servicer.MAX_CHUNK_BYTES,
    }
    assert chunks == {limits.ARTIFACT_CHUNK_BYTES}
    assert _files.CHUNK_SIZE == limits.FILE_IO_CHUNK_BYTES
    assert (paging.DEFAULT_PAGE_SIZE, paging.MAX_PAGE_SIZE) == (
        limits.DEFAULT_PAGE_SIZE,
        limits.MAX_PAGE_SIZE,
    )


def test_limits_fit_together() -> None:
    assert limits.PAGE_BYTE_BUDGET < limits.DEFAULT_MAX_MESSAGE_BYTES
    assert limits.WIRE_BATCH_BYTES < limits.DEFAULT_MAX_MESSAGE_BYTES
    assert limits.WIRE_INLINE_OUTPUT_BYTES < limits.DEFAULT_MAX_MESSAGE_BYTES
    assert limits.STORED_INLINE_BYTES <= limits.WIRE_INLINE_OUTPUT_BYTES
    assert limits.MAX_SPEC_BYTES < limits.DEFAULT_MAX_MESSAGE_BYTES
    assert limits.ARTIFACT_CHUNK_BYTES < 1 << 20


def test_fit_to_budget_ends_a_page_before_the_item_that_passes_the_budget() -> None:
    from dagwire.rpc.paging import fit_to_budget
    from dagwire.v1 import common_pb2

    runs = [common_pb2.Run(run_id=str(i), error="x" * 1000) for i in range(10)]
    each = runs[0].ByteSize()
    assert fit_to_budget(runs, budget=10 * (each + 6)) == 10
    assert fit_to_budget(runs, budget=3 * (each + 6)) == 3
    assert fit_to_budget(runs, budget=1) == 1  # one item always goes, so listings move on
    assert fit_to_budget([], budget=1) == 0
