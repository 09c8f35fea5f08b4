"""Logging: stderr JSON lines or text, with the fixed keys from `extra=` and the contextvar."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from dagwire.rpc.logs import bind, bound, setup_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = setup_logging("store", level="debug", log_format="json", stream=out)
    yield out
    logging.getLogger().removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_fixed_keys(stream: io.StringIO) -> None:
    logging.getLogger("t").info("hello %s", "world")
    [line] = _lines(stream)
    assert line["message"] == "hello world"
    assert line["level"] == "info"
    assert {k: line[k] for k in ("service", "run_id", "node_id", "attempt", "trace_id")} == {
        "service": "store",
        "run_id": "",
        "node_id": "",
        "attempt": "",
        "trace_id": "",
    }


def test_context_fields_come_from_the_contextvar_and_extra_wins(stream: io.StringIO) -> None:
    with bound(run_id="r1", trace_id="t1"):
        logging.getLogger("t").info("inside", extra={"node_id": "a", "attempt": 2, "run_id": "r2"})
    logging.getLogger("t").info("outside")
    inside, outside = _lines(stream)
    assert (inside["run_id"], inside["node_id"], inside["attempt"], inside["trace_id"]) == (
        "r2",
        "a",
        2,
        "t1",
    )
    assert (outside["run_id"], outside["trace_id"]) == ("", "")


def test_other_extra_fields_are_kept_and_exceptions_included(stream: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("t").exception("failed", extra={"settings": {"a": 1}})
    [line] = _lines(stream)
    assert line["settings"] == {"a": 1}
    assert "RuntimeError: boom" in str(line["exception"])


def test_text_format_is_one_readable_line_with_context() -> None:
    out = io.StringIO()
    handler = setup_logging("dispatcher", log_format="text", stream=out)
    try:
        with bound(trace_id="abc"):
            logging.getLogger("t").warning("slow adapter")
    finally:
        logging.getLogger().removeHandler(handler)
    line = out.getvalue().rstrip("\n")
    assert "WARNING" in line and "[dispatcher] slow adapter" in line and "trace_id=abc" in line


def test_format_defaults_to_json_when_not_a_terminal() -> None:
    out = io.StringIO()
    handler = setup_logging("store", stream=out)
    try:
        logging.getLogger("t").info("x")
    finally:
        logging.getLogger().removeHandler(handler)
    assert json.loads(out.getvalue())["message"] == "x"


def test_unknown_level_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        setup_logging("store", level="loud", stream=io.StringIO())


def test_bind_none_removes_a_key(stream: io.StringIO) -> None:
    with bound():
        bind(run_id="r")
        bind(run_id=None)
        logging.getLogger("t").info("x")
    assert _lines(stream)[0]["run_id"] == ""
