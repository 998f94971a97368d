"""Listing a user's sessions: ``list_sessions`` and its page of summaries.

A listing reads columns only (the key, the title, the status, the creation and last
turn times, the turn count), never the context document or the history; every turn
writes those columns in its own compare-and-swap. Pages are keyset pages on
``(last turn time, primary key)``, newest first, served by the index the mixin
declares (``ix_<table>_listing``). The cursor is opaque: the position after the last
item, as base64 of JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ._operations import Query
from .errors import ConfigurationError, InputValidationError

if TYPE_CHECKING:
    from ._flows import SessionSpec

__all__ = ["MAX_PAGE", "SessionPage", "SessionSummary", "list_flow"]

MAX_PAGE = 1000
"""The largest ``limit`` of one page."""


@dataclass(frozen=True)
class SessionSummary:
    """One session in a listing: its columns, without its conversation."""

    key: Any
    """The primary key (a tuple for a composite key): what ``continue_session`` takes."""
    title: str | None
    """The app's title, else the first user message cut to 80 characters."""
    status: str | None
    """The status column (``None`` on a model without one)."""
    created_at: datetime | None
    """When the conversation started (naive UTC)."""
    last_turn_at: datetime
    """When its newest turn was written (naive UTC)."""
    turns: int
    """Turns run (regenerated and edited ones included)."""


@dataclass(frozen=True)
class SessionPage:
    """A page of ``list_sessions``: ``items`` newest activity first, and ``next``, the
    cursor of the page after it (``before=page.next``; ``None`` on the last page)."""

    items: list[SessionSummary]
    next: str | None


def _bad(why: str, source: str) -> InputValidationError:
    return InputValidationError(f"list_sessions: {why}", errors=[], source=source)


def encode_cursor(last_turn_at: datetime, key: tuple[Any, ...]) -> str:
    raw = json.dumps([last_turn_at.isoformat(), list(key)], separators=(",", ":"), default=str)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: Any, keys: tuple[Any, ...]) -> tuple[datetime, tuple[Any, ...]]:
    """The position a cursor stands for; ``InputValidationError`` for anything else."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > 4096:
        raise _bad(f"before must be a cursor (a page's next), got {cursor!r}", "before")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, values = json.loads(raw)
        at = datetime.fromisoformat(when)
        if not isinstance(values, list) or len(values) != len(keys):
            raise ValueError("wrong key")
        key = tuple(
            column.type.python_type(value)
            if value is not None and not isinstance(value, column.type.python_type)
            else value
            for column, value in zip(keys, values, strict=True)
        )
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, NotImplementedError) as exc:
        raise _bad(f"before is not a cursor of this listing: {cursor[:40]!r}", "before") from exc
    return at, key


def _after(columns: list[Any], values: list[Any]) -> Any:
    """``columns < values`` in lexicographic order, as plain comparisons (every backend
    plans them on the index)."""
    first, *rest = columns
    if not rest:
        return first < values[0]
    return sa.or_(first < values[0], sa.and_(first == values[0], _after(rest, values[1:])))


def list_flow(
    spec: SessionSpec, where: tuple[Any, ...], before: Any, limit: Any, every: Any
) -> Generator[Any, Any, SessionPage]:
    """One page of the sessions that match ``where``, newest last turn first."""
    listing = spec.listing
    cls = spec.cls
    if listing is None:
        raise ConfigurationError(
            f"{cls.__name__} does not list its sessions: set "
            '__last_turn_attribute__ = "last_turn_at" (the mixin adds the listing columns '
            "and their index; migrate the table) to use list_sessions"
        )
    if not isinstance(every, bool):
        raise _bad(f"all must be True or False, got {every!r}", "all")
    if not where and not every:
        raise _bad(
            f"where= is required (e.g. where={cls.__name__}.user_id == user.id); "
            "pass all=True to list every user's sessions",
            "where",
        )
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise _bad(f"limit must be an int from 1 to {MAX_PAGE}, got {limit!r}", "limit")
    table_columns = {
        name: getattr(cls, name)
        for name in (listing.title_attr, listing.turns_attr, listing.created_attr)
    }
    last_turn = getattr(cls, listing.last_turn_attr)
    status = getattr(cls, spec.status_attr) if spec.status_attr is not None else sa.null()
    keys = list(listing.keys)
    criteria = [last_turn.is_not(None), *where]
    if before is not None:
        at, key = decode_cursor(before, listing.keys)
        criteria.append(_after([last_turn, *keys], [at, *key]))
    statement = (
        sa.select(
            *keys,
            table_columns[listing.title_attr],
            status,
            table_columns[listing.created_attr],
            last_turn,
            table_columns[listing.turns_attr],
        )
        .where(*criteria)
        .order_by(last_turn.desc(), *(key.desc() for key in keys))
        .limit(limit + 1)
    )
    rows = yield Query(statement)
    n = len(keys)
    items = [
        SessionSummary(
            key=row[0] if n == 1 else tuple(row[:n]),
            title=row[n],
            status=row[n + 1],
            created_at=row[n + 2],
            last_turn_at=row[n + 3],
            turns=int(row[n + 4] or 0),
        )
        for row in rows[:limit]
    ]
    cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        cursor = encode_cursor(last[n + 3], tuple(last[:n]))
    return SessionPage(items, cursor)
