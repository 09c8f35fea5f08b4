"""Documents of `MongoExecutionStore`: records and runs to BSON-safe dicts and back.

Two things FerretDB 1.x (and MongoDB) cannot keep as given are encoded, reversibly:

- user-supplied map keys (`spec`, `user_vars`, artifact `metadata`): ``%`` becomes ``%25``,
  ``.`` ``%2E``, NUL ``%00``, a leading ``$`` ``%24``, and the empty key ``%``; so no stored key
  contains ``.``, starts with ``$`` or is empty;
- strings containing NUL (PostgreSQL's ``jsonb`` under FerretDB refuses ``\\u0000``): stored
  as ``{"%nul": [the parts between NULs]}``. No escaped user key can be ``%nul`` (its ``%``
  would be ``%25``), so the marker is unambiguous.

Artifacts kept inline (`TieredArtifactStore`) are one ``artifacts`` document each, with their
content as BSON binary and their `metadata` keys escaped as above.

Timestamps are kept twice: ``<name>_us`` (integer microseconds since the epoch, exact, used
for sorting and for reading back) and ``<name>`` (a BSON date, milliseconds, for people).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from dagwire.models import Artifact, ExecutionRecord, RunRecord
from dagwire.stores._validate import (
    check_run_status,
    check_task_status,
    check_text,
    from_micros,
    to_micros,
    utf8_safe,
)

__all__ = [
    "Doc",
    "artifact_doc",
    "artifact_from_doc",
    "decode_value",
    "encode_value",
    "execution_doc",
    "execution_id",
    "record_from_doc",
    "run_doc",
    "run_from_doc",
]

Doc = dict[str, Any]

_NUL_MARKER = "%nul"
_RUN_TIMES = ("created_at", "finished_at", "lease_expires_at")


def _escape_key(key: str) -> str:
    if key == "":
        return "%"
    escaped = key.replace("%", "%25").replace(".", "%2E").replace("\x00", "%00")
    if escaped.startswith("$"):
        escaped = "%24" + escaped[1:]
    return escaped


def _unescape_key(key: str) -> str:
    return "" if key == "%" else unquote(key)


def encode_value(value: Any) -> Any:
    """`value` (JSON-like) with every map key escaped and every NUL-bearing string wrapped."""
    if isinstance(value, str):
        return {_NUL_MARKER: value.split("\x00")} if "\x00" in value else value
    if isinstance(value, dict):
        encoded: Doc = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"map keys must be str, not {type(key).__name__}: {key!r}")
            encoded[_escape_key(key)] = encode_value(item)
        return encoded
    if isinstance(value, list | tuple):
        return [encode_value(item) for item in value]
    return value


def decode_value(value: Any) -> Any:
    """The inverse of `encode_value`."""
    if isinstance(value, dict):
        if len(value) == 1 and _NUL_MARKER in value:
            return "\x00".join(value[_NUL_MARKER])
        return {_unescape_key(key): decode_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_value(item) for item in value]
    return value


def execution_id(run_id: str, node_id: str, attempt: int) -> str:
    """The deterministic `_id` of one attempt: a compact JSON array (unambiguous for any ids)."""
    return json.dumps([run_id, node_id, attempt], separators=(",", ":"), ensure_ascii=False)


def _time_fields(name: str, value: datetime | None) -> Doc:
    if value is None:
        return {name: None, f"{name}_us": None}
    micros = to_micros(value, name)
    return {name: from_micros(micros), f"{name}_us": micros}


def execution_doc(record: ExecutionRecord) -> Doc:
    """The `executions` document of `record`, validated.

    Raises:
        ValueError: a field is invalid (naive datetime, unknown status, NUL in an id, ...).
    """
    check_text(record.run_id, "run_id")
    check_text(record.node_id, "node_id")
    check_text(record.agent, "agent")
    check_text(record.trace_id, "trace_id")
    if isinstance(record.attempt, bool) or not isinstance(record.attempt, int):
        raise ValueError(f"attempt must be an int, got {record.attempt!r}")
    if not -(1 << 63) <= record.attempt < (1 << 63):
        raise ValueError(f"attempt is out of range: {record.attempt!r}")
    inputs = [check_text(i, "input_artifact_ids[]") for i in record.input_artifact_ids]
    outputs = [check_text(i, "output_artifact_ids[]") for i in record.output_artifact_ids]
    error = None if record.error is None else utf8_safe(str(record.error))
    return {
        "_id": execution_id(record.run_id, record.node_id, record.attempt),
        "run_id": record.run_id,
        "node_id": record.node_id,
        "attempt": record.attempt,
        "agent": record.agent,
        "status": str(check_task_status(record.status)),
        **_time_fields("started_at", record.started_at),
        **_time_fields("finished_at", record.finished_at),
        "error": encode_value(error),
        "trace_id": record.trace_id,
        "input_artifact_ids": inputs,
        "output_artifact_ids": outputs,
    }


def record_from_doc(doc: Doc) -> ExecutionRecord:
    """The `ExecutionRecord` an `executions` document holds."""
    finished = doc.get("finished_at_us")
    return ExecutionRecord(
        run_id=doc["run_id"],
        node_id=doc["node_id"],
        attempt=doc["attempt"],
        agent=doc["agent"],
        status=check_task_status(doc["status"]),
        started_at=from_micros(doc["started_at_us"]),
        finished_at=None if finished is None else from_micros(finished),
        error=decode_value(doc.get("error")),
        trace_id=doc.get("trace_id") or "",
        input_artifact_ids=list(doc.get("input_artifact_ids") or []),
        output_artifact_ids=list(doc.get("output_artifact_ids") or []),
    )


def run_doc(run: RunRecord) -> Doc:
    """The `runs` document of `run`, validated.

    Raises:
        ValueError: a field is invalid (naive datetime, unknown status, bad run id, map keys
            that are not strings).
    """
    check_text(run.run_id, "run_id")
    status = str(check_run_status(run.status))
    times: Doc = {}
    for name in _RUN_TIMES:
        times.update(_time_fields(name, getattr(run, name)))
    body = run.to_json()
    for name in _RUN_TIMES:
        del body[name]
    doc: Doc = {"_id": run.run_id, **encode_value(body), **times}
    doc["status"] = status
    return doc


def run_from_doc(doc: Doc) -> RunRecord:
    """The `RunRecord` a `runs` document holds."""
    body: Doc = {}
    for key, value in doc.items():
        if key == "_id" or key.endswith("_us") or key in _RUN_TIMES:
            continue
        body[_unescape_key(key)] = decode_value(value)
    for name in _RUN_TIMES:
        micros = doc.get(f"{name}_us")
        body[name] = None if micros is None else from_micros(micros)
    return RunRecord.from_json(body)


def artifact_doc(artifact: Artifact, content: bytes) -> Doc:
    """The ``artifacts`` document of a stored artifact (`artifact_id`, `sha256`, `size` and
    `created_at` filled, fields already checked), with `content` inline as BSON binary."""
    if artifact.artifact_id is None or artifact.created_at is None:
        raise ValueError("artifact_doc needs a stored artifact (artifact_id and created_at set)")
    return {
        "_id": artifact.artifact_id,
        "run_id": artifact.run_id,
        "node_id": artifact.node_id,
        "name": artifact.name,
        "media_type": artifact.media_type,
        "metadata": encode_value(artifact.metadata),
        "sha256": artifact.sha256,
        "size": artifact.size,
        **_time_fields("created_at", artifact.created_at),
        "content": content,
    }


def artifact_from_doc(doc: Doc) -> Artifact:
    """The `Artifact` an ``artifacts`` document holds; `content` is None when the read left
    it out (a projection without ``content``)."""
    content = doc.get("content")
    return Artifact(
        name=doc["name"],
        content=None if content is None else bytes(content),
        media_type=doc["media_type"],
        metadata=decode_value(doc["metadata"]),
        artifact_id=doc["_id"],
        run_id=doc["run_id"],
        node_id=doc["node_id"],
        sha256=doc["sha256"],
        size=doc["size"],
        created_at=from_micros(doc["created_at_us"]),
    )
