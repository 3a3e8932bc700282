"""Keyset pagination: a page ends with an opaque cursor holding the sort key of its last row.

The next page asks for rows strictly after that key in the list's order
(``WHERE (created_at, id) < (:c, :i)``), so every page costs an index range
scan, whatever its depth: never ``OFFSET``, never a whole table in memory.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from .problems import Problem

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: its items and the cursor of the next page (``None``: the last page)."""

    items: list[T]
    next_cursor: str | None = None


def encode_cursor(*values: Any) -> str:
    """An opaque cursor of a sort key (datetimes, strings, numbers)."""
    plain = [{"t": value.isoformat()} if isinstance(value, datetime) else value for value in values]
    return base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, arity: int) -> list[Any]:
    """The sort key in ``cursor``; 400 ``invalid-cursor`` for anything this API did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
        if not isinstance(values, list) or len(values) != arity:
            raise ValueError("wrong arity")
        return [datetime.fromisoformat(v["t"]) if isinstance(v, dict) else v for v in values]
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
        raise Problem("invalid-cursor", f"cursor {cursor[:40]!r} is not valid ({exc})") from None


def page_of(rows: list[Any], *, limit: int, key) -> tuple[list[Any], str | None]:
    """Split ``limit + 1`` fetched rows into the page and the next cursor (``key(row)`` -> sort key)."""
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    return page, encode_cursor(*key(page[-1]))


def naive_utc(moment: datetime) -> datetime:
    """``moment`` as the database stores times: naive UTC (a naive input is taken as UTC)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def time_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """The ``(created_at, id)`` sort key of a list newest first (jobs, runs), or None for page one."""
    if not cursor:
        return None
    moment, key = decode_cursor(cursor, arity=2)
    if not isinstance(moment, datetime) or not isinstance(key, str):
        raise Problem("invalid-cursor", "not a cursor of a list sorted by time")
    return moment, key


def prefixed_filters(params, prefix: str) -> dict[str, str]:
    """``<prefix><name>=<value>`` query parameters as ``{name: value}`` (``args.symbol=AAPL``)."""
    return {
        name[len(prefix) :]: value
        for name, value in params.items()
        if name.startswith(prefix) and name != prefix
    }
