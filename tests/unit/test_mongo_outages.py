"""Which PyMongo errors mean "the database is unreachable" (runs wait) and which are real
failures (docs/durability.md: outages pause, they do not fail)."""

from __future__ import annotations

import pytest
from pymongo.errors import AutoReconnect, DuplicateKeyError, OperationFailure

from dagwire.errors import StoreUnavailableError
from dagwire.stores._mongo_client import is_outage, raise_unavailable

# what FerretDB 1.24 answered while its PostgreSQL was killed and restarted (fault suite)
POSTMASTER_EXIT = (
    "[msg_insert.go:168 handler.(*Handler).MsgInsert] FATAL: terminating connection due to "
    "unexpected postmaster exit (SQLSTATE 57P01)"
)
DIAL_ERROR = (
    "[collection.go:109 postgresql.(*collection).Query] failed to connect to `user=postgres "
    "database=ferretdb`: 127.0.0.1:36753 (127.0.0.1): dial error: connect: connection refused"
)


@pytest.mark.parametrize("message", [POSTMASTER_EXIT, DIAL_ERROR])
def test_ferretdb_losing_postgresql_is_an_outage(message: str) -> None:
    exc = OperationFailure(message, code=1, details={"codeName": "InternalError"})
    assert is_outage(exc)
    with pytest.raises(StoreUnavailableError, match="MongoDB at db:27017 is unavailable"):
        raise_unavailable(exc, "db:27017")


def test_a_lost_connection_is_an_outage() -> None:
    assert is_outage(AutoReconnect("connection closed"))


@pytest.mark.parametrize(
    "exc",
    [
        DuplicateKeyError("E11000 duplicate key", code=11000),
        OperationFailure("unknown operator: $foo", code=2),
        OperationFailure("document too large", code=1),
    ],
)
def test_a_failed_command_is_not_an_outage_and_is_raised_as_it_is(exc: Exception) -> None:
    assert not is_outage(exc)
    with pytest.raises(type(exc)):
        raise_unavailable(exc, "db:27017")
