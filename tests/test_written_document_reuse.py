"""A document this library just wrote is not reloaded or re-validated on the next turn.

The stored revision is checked instead (one small SELECT). Whenever the instance
cannot vouch for the row (another writer, a rollback, a replaced value), the row
is loaded and validated as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import Agent, AgentSessionMixin
from agent_session.testing import FunctionModel
from support.databases import Database
from support.sessions import Api, joined_rows


def reply(messages: list[dict[str, Any]]) -> str:
    return f"reply to {messages[-1]['content']}"


class Base(DeclarativeBase):
    pass


class Chat(AgentSessionMixin, Base):
    __tablename__ = "reuse_chats"
    __agent__ = Agent(FunctionModel(reply), instruction="Be brief.")
    id: Mapped[int] = mapped_column(primary_key=True)


@contextmanager
def selects(api: Api) -> Iterator[list[str]]:
    """The SELECT statements run on the API's engine inside the block."""
    engine = api.engine.sync_engine if isinstance(api.engine, AsyncEngine) else api.engine
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def users(document: dict[str, Any]) -> list[str]:
    return [m["content"] for m in document["messages"] if m["role"] == "user"]


@pytest.mark.parametrize("maker", [False, True], ids=["session", "sessionmaker"])
async def test_next_turn_checks_only_the_revision(database: Database, maker: bool) -> None:
    database.create_all(Base.metadata)
    api = Api(database, Chat, maker=maker)
    async with api.session() as db:
        target = None if maker else db
        chat = await api.start(target, "one")
        with selects(api) as seen:
            chat = await api.cont(target, chat, "two")
        await api.commit(db)
    assert len(seen) == 1
    assert "context_revision" in seen[0]
    assert "reuse_chats.context," not in seen[0] and "reuse_chats.context " not in seen[0]
    [row] = joined_rows(database, Chat.__table__)
    assert users(row["context"]) == ["one", "two"] and row["context_revision"] == 2


async def test_a_newer_revision_from_another_writer_is_loaded(database: Database) -> None:
    database.create_all(Base.metadata)
    mine, other = Api(database, Chat), Api(database, Chat)
    async with mine.session() as db:
        chat = await mine.start(db, "one")
        await mine.commit(db)
        async with other.session() as db2:  # another worker adds a turn
            await other.cont(db2, chat.id, "two (other worker)")
            await other.commit(db2)
        chat = await mine.cont(db, chat, "three")
        await mine.commit(db)
    [row] = joined_rows(database, Chat.__table__)
    assert users(row["context"]) == ["one", "two (other worker)", "three"]
    assert row["context_revision"] == 3


async def test_after_a_rollback_the_row_is_reloaded(database: Database) -> None:
    """A rolled-back write must never be taken for the stored row.

    Here the revision numbers collide: the rolled-back turn wrote revision 2, and
    another worker then commits a different revision 2.
    """
    database.create_all(Base.metadata)
    mine, other = Api(database, Chat), Api(database, Chat)
    async with mine.session() as db:
        chat = await mine.start(db, "one")
        await mine.commit(db)
        key = chat.id
        chat = await mine.cont(db, chat, "rolled back")
        await mine.rollback(db)
        async with other.session() as db2:
            await other.cont(db2, key, "two (other worker)")
            await other.commit(db2)
        chat = await mine.cont(db, chat, "three")
        await mine.commit(db)
    [row] = joined_rows(database, Chat.__table__)
    assert users(row["context"]) == ["one", "two (other worker)", "three"]


async def test_a_replaced_context_value_is_not_trusted(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, Chat)
    async with api.session() as db:
        chat = await api.start(db, "one")
        await api.commit(db)
        chat.context = dict(chat.context)  # replaced by the application: reload the row
        with selects(api) as seen:
            chat = await api.cont(db, chat, "two")
        await api.commit(db)
    assert any("context," in s or "context " in s for s in seen)
    [row] = joined_rows(database, Chat.__table__)
    assert users(row["context"]) == ["one", "two"]


async def test_last_output_follows_the_row_not_the_last_turn(database: Database) -> None:
    database.create_all(Base.metadata)
    mine, other = Api(database, Chat), Api(database, Chat)
    async with mine.session() as db:
        chat = await mine.start(db, "one")
        await mine.commit(db)
        assert chat.last_output == "reply to one"
        async with other.session() as db2:
            await other.cont(db2, chat.id, "two")
            await other.commit(db2)
        if mine.is_async:
            await db.refresh(chat)
        else:
            db.refresh(chat)
        assert chat.last_output == "reply to two"
        assert chat.last_result is not None  # still the turn this instance ran
        assert chat.last_result.output == "reply to one"
