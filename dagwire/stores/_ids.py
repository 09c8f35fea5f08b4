"""Artifact ids: time-ordered UUIDv7 strings (the one generator lives in `dagwire.ids`)."""

from __future__ import annotations

from dagwire.ids import new_id

__all__ = ["new_id"]
