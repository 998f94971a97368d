"""Run the mixin's sync or async API against a ``Database`` of the matrix with one call.

Tests are written once as ``async def`` and call ``api.start(...)``; for a sync
database the sync classmethod runs, for an async one its ``a``-prefixed twin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from support.databases import Database


class Api:
    """The mixin API of one model class on one database, in one mode."""

    def __init__(self, database: Database, model: Any, *, maker: bool = False, **engine_kw: Any):
        self.database = database
        self.model = model
        self.engine = database.engine(**engine_kw)
        self.is_async = isinstance(self.engine, AsyncEngine)
        self.maker: Any = None
        if maker:
            self.maker = (
                async_sessionmaker(self.engine) if self.is_async else sessionmaker(self.engine)
            )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        """A caller-owned session (sync or async); closed (not committed) at exit."""
        if self.is_async:
            async with AsyncSession(self.engine, expire_on_commit=False) as db:
                yield db
        else:
            with Session(self.engine, expire_on_commit=False) as db:
                yield db

    async def commit(self, db: Any) -> None:
        if self.is_async:
            await db.commit()
        else:
            db.commit()

    async def rollback(self, db: Any) -> None:
        if self.is_async:
            await db.rollback()
        else:
            db.rollback()

    def _db(self, db: Any) -> Any:
        return self.maker if db is None else db

    async def start(self, db: Any, input: Any, **kw: Any) -> Any:
        if self.is_async:
            return await self.model.astart_session(self._db(db), input, **kw)
        return self.model.start_session(self._db(db), input, **kw)

    async def cont(self, db: Any, key: Any, input: Any, **kw: Any) -> Any:
        if self.is_async:
            return await self.model.acontinue_session(self._db(db), key, input, **kw)
        return self.model.continue_session(self._db(db), key, input, **kw)

    async def resume(self, db: Any, key: Any, **kw: Any) -> Any:
        if self.is_async:
            return await self.model.aresume_session(self._db(db), key, **kw)
        return self.model.resume_session(self._db(db), key, **kw)

    async def context(self, db: Any, key: Any, **kw: Any) -> Any:
        if self.is_async:
            return await self.model.aget_context(self._db(db), key, **kw)
        return self.model.get_context(self._db(db), key, **kw)

    async def messages(self, db: Any, key: Any, **kw: Any) -> Any:
        if self.is_async:
            return await self.model.aget_messages(self._db(db), key, **kw)
        return self.model.get_messages(self._db(db), key, **kw)

    async def import_(self, db: Any, messages: Any, **kw: Any) -> Any:
        if self.is_async:
            return await self.model.aimport_session(self._db(db), messages, **kw)
        return self.model.import_session(self._db(db), messages, **kw)

    async def delete(self, db: Any, instance: Any) -> None:
        if self.is_async:
            await db.delete(instance)
            await db.flush()
        else:
            db.delete(instance)
            db.flush()

    async def get(self, db: Any, key: Any) -> Any:
        return (await db.get(self.model, key)) if self.is_async else db.get(self.model, key)


async def stream_text(stream: Any) -> str:
    """Read a turn's stream (sync or async) to its end; the text it sent."""
    from agent_session import TextDelta, TurnStream

    if isinstance(stream, TurnStream):
        with stream:
            return "".join(e.text for e in stream if isinstance(e, TextDelta))
    async with stream:
        return "".join([e.text async for e in stream if isinstance(e, TextDelta)])


def stored_rows(database: Database, table: sa.Table) -> list[dict[str, Any]]:
    """Every row of ``table`` as stored, read through a separate sync connection."""
    with database.sync_engine().connect() as conn:
        pk = list(table.primary_key.columns)
        rows = conn.execute(sa.select(table).order_by(*pk)).mappings().all()
        return [dict(row) for row in rows]


def history_table(table: sa.Table) -> sa.Table | None:
    """The format-4 history table of a session table, if it has one."""
    from agent_session.mixin import history_owner

    for other in table.metadata.tables.values():
        if history_owner(other) is table:
            return other
    return None


def history_rows(database: Database, table: sa.Table) -> list[dict[str, Any]]:
    """Every history row of a session table, as stored (``[]`` without a history table)."""
    history = history_table(table)
    if history is None:
        return []
    with database.sync_engine().connect() as conn:
        pk = list(history.primary_key.columns)
        rows = conn.execute(sa.select(history).order_by(*pk)).mappings().all()
        return [dict(row) for row in rows]


def joined_rows(database: Database, table: sa.Table) -> list[dict[str, Any]]:
    """``stored_rows`` with each format-4 head joined with its history rows: the
    context column then holds the whole active path in ``messages`` (compact, without
    ids), as the library's turns see it (and as version 3 stored it)."""
    import json

    from agent_session.context import is_head, joined_document

    rows = stored_rows(database, table)
    history = history_table(table)
    by_key: dict[Any, list[tuple[Any, ...]]] = {}
    if history is not None:
        names = [c.name for c in history.primary_key.columns if c.name != "seq"]
        for row in history_rows(database, table):
            key = tuple(row[name] for name in names)
            by_key.setdefault(key, []).append((row["seq"], row["parent"], row["data"]))
    keys = [c.name for c in table.primary_key.columns]
    for row in rows:
        for column, head in list(row.items()):
            if isinstance(head, str) and head.startswith('{"version":4'):
                head = json.loads(head)
            if not is_head(head):
                continue
            joined = joined_document(head, by_key.get(tuple(row[k] for k in keys), []))
            joined["messages"] = [
                {k: v for k, v in m.items() if k not in ("id", "parent")}
                for m in joined["messages"]
            ]
            row[column] = joined
    return rows
