"""What the MongoDB-backed stores share about their client: options, names, unavailability."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pymongo.errors import ConnectionFailure

from dagwire.errors import StoreUnavailableError

__all__ = ["client_options", "server_name", "unavailable"]


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


def unavailable(exc: BaseException, server: str, *, what: str = "") -> BaseException:
    """`StoreUnavailableError` for a connection failure (caused by it); other errors unchanged.

    Args:
        exc: what PyMongo raised.
        server: `server_name()` of the URI.
        what: what the store keeps there, for the message (e.g. ``"for artifacts"``).
    """
    if not isinstance(exc, ConnectionFailure):
        return exc
    text = str(exc)
    first = text.splitlines()[0][:300] if text else "no details"
    error = StoreUnavailableError(
        f"MongoDB at {server} is unavailable{' ' + what if what else ''} "
        f"({type(exc).__name__}: {first}); check that the server runs and the URI is right"
    )
    error.__cause__ = exc
    return error
