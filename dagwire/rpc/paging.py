"""AIP-158 paging helpers shared by the servicers and the typed clients: sizes and opaque tokens."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, Protocol

from dagwire.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PAGE_BYTE_BUDGET
from dagwire.rpc.status import InvalidArgumentError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "PAGE_BYTE_BUDGET",
    "decode_page_token",
    "encode_page_token",
    "fit_to_budget",
    "page_size",
]


#: Bytes a repeated message field adds per item beside the item itself (tag and length, at most).
_ITEM_FRAMING = 6


class _Sized(Protocol):
    def ByteSize(self) -> int: ...


def fit_to_budget(items: Sequence[_Sized], budget: int = PAGE_BYTE_BUDGET) -> int:
    """How many of `items`, from the first, one page holds within `budget` encoded bytes.

    At least one when there is any, so a listing always moves on (one item is always under
    the message limit: docs/limits.md). A page that holds fewer items than it was given ends
    with a next-page token after its last item.
    """
    total = 0
    for count, item in enumerate(items):
        total += item.ByteSize() + _ITEM_FRAMING
        if total > budget and count > 0:
            return count
    return len(items)


def page_size(value: int) -> int:
    """The effective page size of a request: 0 means 50, above 1000 means 1000.

    Args:
        value: the request's ``page_size``.

    Returns:
        A size from 1 to 1000.

    Raises:
        InvalidArgumentError: `value` is negative (names ``page_size``).
    """
    if value < 0:
        raise InvalidArgumentError(
            f"page_size must be 0 (the default of {DEFAULT_PAGE_SIZE}) or positive, got {value}",
            field="page_size",
        )
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(kind: str, scope: str, position: Any) -> str:
    """An opaque token for the page after `position` of a listing.

    Args:
        kind: what is listed (e.g. ``"runs"``), so a token of one listing fails on another.
        scope: the request fields the token is bound to (e.g. the run id or status filter).
        position: where the next page starts (JSON-serializable).

    Returns:
        URL-safe text.
    """
    raw = json.dumps([kind, scope, position], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, kind: str, scope: str) -> Any:
    """The position a token of `encode_page_token` carries.

    Args:
        token: the request's ``page_token`` (not empty).
        kind: the listing the token must belong to.
        scope: the request fields the token must have been made for.

    Returns:
        The position.

    Raises:
        InvalidArgumentError: the token is malformed, or made for another listing or other
            request fields (names ``page_token``).
    """
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        got_kind, got_scope, position = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidArgumentError(
            "page_token is not a token this server issued; pass back next_page_token unchanged",
            field="page_token",
        ) from None
    if got_kind != kind or got_scope != scope:
        raise InvalidArgumentError(
            "page_token was issued for a different request; keep every other request field "
            "unchanged between pages",
            field="page_token",
        )
    return position
