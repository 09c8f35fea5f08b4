"""What the MongoDB-backed stores share about their client: options, names, unavailability."""

from __future__ import annotations

import re
from typing import Any, NoReturn
from urllib.parse import urlsplit

from pymongo.errors import ConnectionFailure, OperationFailure

from dagwire.errors import StoreUnavailableError

__all__ = [
    "OUTAGE_ERRORS",
    "client_options",
    "is_outage",
    "raise_unavailable",
    "server_name",
    "unavailable",
]

#: What PyMongo raises when the database may be down: catch these, then `raise_unavailable`.
OUTAGE_ERRORS = (ConnectionFailure, OperationFailure)

#: FerretDB answers a command whose PostgreSQL connection failed with InternalError (code 1)
#: and the PostgreSQL error in the message: SQLSTATE class 08 (connection exception) or 57P0x
#: (the server shut down or crashed), or the driver's dial error while PostgreSQL restarts.
_BACKEND_DOWN = re.compile(
    r"SQLSTATE (08\w{3}|57P0\d)|failed to connect to|terminating connection|"
    r"connection refused|conn closed|unexpected EOF|the database system is (starting|shutting)",
    re.IGNORECASE,
)


def client_options(
    *, server_selection_timeout_ms: int, socket_timeout_ms: int, appname: str
) -> dict[str, Any]:
    """`AsyncMongoClient` keyword arguments: lazy connect, aware datetimes, bounded waits."""
    return {
        "serverSelectionTimeoutMS": server_selection_timeout_ms,
        "connectTimeoutMS": min(server_selection_timeout_ms, 10_000),
        "socketTimeoutMS": socket_timeout_ms,
        "tz_aware": True,
        "connect": False,
        "appname": appname,
    }


def server_name(uri: str) -> str:
    """The host part of `uri`, without credentials (for error messages)."""
    try:
        netloc = urlsplit(uri).netloc
    except ValueError:
        return "<invalid URI>"
    return netloc.rpartition("@")[2] or uri


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says the database (or, through FerretDB, its PostgreSQL) is unreachable,
    as opposed to a command that failed on its own merits."""
    if isinstance(exc, ConnectionFailure):
        return True
    if isinstance(exc, OperationFailure) and exc.code in (1, None):
        return bool(_BACKEND_DOWN.search(str(exc)))
    return False


def raise_unavailable(exc: BaseException, server: str, *, what: str = "") -> NoReturn:
    """Raise `StoreUnavailableError` for an outage (caused by `exc`), else `exc` itself."""
    translated = unavailable(exc, server, what=what)
    if translated is exc:
        raise exc
    raise translated from exc


def unavailable(exc: BaseException, server: str, *, what: str = "") -> BaseException:
    """`StoreUnavailableError` for a connection failure (caused by it); other errors unchanged.

    Args:
        exc: what PyMongo raised.
        server: `server_name()` of the URI.
        what: what the store keeps there, for the message (e.g. ``"for artifacts"``).
    """
    if not is_outage(exc):
        return exc
    text = str(exc)
    first = text.splitlines()[0][:300] if text else "no details"
    error = StoreUnavailableError(
        f"MongoDB at {server} is unavailable{' ' + what if what else ''} "
        f"({type(exc).__name__}: {first}); check that the server runs and the URI is right"
    )
    error.__cause__ = exc
    return error
