"""Turns, streams and approvals through a real PgBouncer in transaction mode.

Each module starts its own PgBouncer 1.18 (Debian's) on 127.0.0.1 in front of the
local PostgreSQL, with two server connections for many clients: every transaction
takes whichever server connection is free, so a client's statements move between
server connections as they do under load. PgBouncer before 1.21 keeps no prepared
statement between transactions there, so:

- with the settings of docs/scaling.md (psycopg: ``prepare_threshold=None``; asyncpg:
  no statement caches and unique statement names), concurrent turns, streams and
  approvals all work, with the sync and async psycopg and with asyncpg;
- with the drivers' default settings, a turn whose statement was prepared on another
  server connection fails with a ``ConfigurationError`` that names the setting, and
  writes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from agent_session import Agent, AgentSessionMixin, ConfigurationError, TextDelta, Tool, ToolCall
from agent_session.testing import FunctionModel
from support.databases import Database, open_database
from support.servers import PgBouncer, pgbouncer
from support.sessions import stream_text

pytestmark = [pytest.mark.pgbouncer, pytest.mark.slow]


def transfer(to: str) -> str:
    """Send money (needs a person's approval)."""
    return f"sent to {to}"


def reply(messages: list[dict[str, Any]]) -> Any:
    last = messages[-1]
    if last["role"] == "user" and str(last["content"]).startswith("pay"):
        return ToolCall("transfer", {"to": "bo"}, id=f"pay-{uuid.uuid4().hex[:8]}")
    users = sum(1 for m in messages if m["role"] == "user")
    return f"reply {users}"


AGENT = Agent(FunctionModel(reply), tools=[Tool(transfer, requires_approval=True)])


class Base(DeclarativeBase):
    pass


class PooledChat(AgentSessionMixin[str], Base):
    __tablename__ = "pgbouncer_chats"
    __agent__ = AGENT
    __status_attribute__ = "status"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    status: Mapped[str] = mapped_column(sa.String(32), default="pending")


# What each driver needs behind a transaction-mode pooler (docs/scaling.md).
PSYCOPG_ARGS: dict[str, Any] = {"prepare_threshold": None}
ASYNCPG_ARGS: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__",
}
DRIVERS = {
    "psycopg": ("postgresql+psycopg", False, PSYCOPG_ARGS),
    "psycopg-async": ("postgresql+psycopg", True, PSYCOPG_ARGS),
    "asyncpg": ("postgresql+asyncpg", True, ASYNCPG_ARGS),
}


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    with pgbouncer(pool_size=2) as server:
        yield server


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    """The run's PostgreSQL database (created directly, not through PgBouncer)."""
    async with open_database("postgresql+psycopg", tmp_path) as db:
        db.create_all(Base.metadata)
        yield db


def _engine(bouncer: PgBouncer, database: Database, driver: str, **connect_args: Any) -> Any:
    drivername, is_async, _ = DRIVERS[driver]
    url = bouncer.url(drivername, str(make_url(database.sync_url).database))
    if is_async:
        return create_async_engine(url, pool_size=6, connect_args=connect_args)
    return sa.create_engine(url, pool_size=6, connect_args=connect_args)


class Calls:
    """The mixin's turn methods, sync (in threads) or async, on one sessionmaker."""

    def __init__(self, engine: Any) -> None:
        self.is_async = isinstance(engine, AsyncEngine)
        self.maker: Any = async_sessionmaker(engine) if self.is_async else sessionmaker(engine)

    async def call(self, name: str, *args: Any, **kw: Any) -> Any:
        if self.is_async:
            return await getattr(PooledChat, "a" + name)(self.maker, *args, **kw)
        return await asyncio.to_thread(getattr(PooledChat, name), self.maker, *args, **kw)

    async def stream(self, key: Any, text: str) -> str:
        if self.is_async:
            return await stream_text(
                await PooledChat.acontinue_session(self.maker, key, text, stream=True)
            )

        def read() -> str:
            with PooledChat.continue_session(self.maker, key, text, stream=True) as stream:
                return "".join(e.text for e in stream if isinstance(e, TextDelta))

        return await asyncio.to_thread(read)


async def _dispose(engine: Any) -> None:
    if isinstance(engine, AsyncEngine):
        await engine.dispose()
    else:
        engine.dispose()


@pytest.mark.parametrize("driver", list(DRIVERS))
async def test_turns_streams_and_approvals_through_pgbouncer(
    bouncer: PgBouncer, database: Database, driver: str
) -> None:
    engine = _engine(bouncer, database, driver, **DRIVERS[driver][2])
    calls = Calls(engine)

    async def one_chat() -> Any:
        chat = await calls.call("start_session", "hello")
        for _ in range(3):
            chat = await calls.call("continue_session", chat.id, "more")
        assert await calls.stream(chat.id, "stream it") == "reply 5"
        paused = await calls.call("continue_session", chat.id, "pay bo")
        assert paused.status == "awaiting_approval"
        [pending] = paused.pending_approvals
        done = await calls.call("resume_session", chat.id, approvals={pending.tool_call_id: True})
        assert (done.status, done.last_output) == ("completed", "reply 6")
        return chat.id

    try:
        keys = await asyncio.gather(*(one_chat() for _ in range(6)))
        for key in keys:
            context = await calls.call("get_context", key)
            roles = [m.role for m in context.messages]
            assert roles == ["user", "assistant"] * 5 + ["user", "assistant", "tool", "assistant"]
            assert [m.content for m in context.messages if m.role == "tool"] == ["sent to bo"]
    finally:
        await _dispose(engine)
    with database.sync_engine().connect() as conn:
        statuses = conn.execute(sa.select(PooledChat.status)).scalars().all()
    assert sorted(statuses) == ["completed"] * 6


@pytest.mark.parametrize("driver", list(DRIVERS))
async def test_turns_in_a_callers_session_through_pgbouncer(
    bouncer: PgBouncer, database: Database, driver: str
) -> None:
    """A caller-owned session keeps its transaction, and so one server connection,
    through the turn; it commits with the caller's own statement."""
    engine = _engine(bouncer, database, driver, **DRIVERS[driver][2])
    try:
        if isinstance(engine, AsyncEngine):
            async with AsyncSession(engine, expire_on_commit=False) as db:
                chat = await PooledChat.astart_session(db, "hello")
                await db.execute(sa.text("SELECT 1"))
                chat = await PooledChat.acontinue_session(db, chat.id, "more")
                await db.commit()
        else:
            with Session(engine, expire_on_commit=False) as db:
                chat = PooledChat.start_session(db, "hello")
                db.execute(sa.text("SELECT 1"))
                chat = PooledChat.continue_session(db, chat.id, "more")
                db.commit()
    finally:
        await _dispose(engine)
    assert _stored(database, chat.id)["status"] == "completed"
    context = PooledChat.get_context(sessionmaker(database.sync_engine()), chat.id)
    assert [m.content for m in context.messages] == ["hello", "reply 1", "more", "reply 2"]


@pytest.mark.parametrize("driver", list(DRIVERS))
async def test_default_driver_settings_fail_with_a_configuration_error(
    database: Database, driver: str
) -> None:
    """A client connection prepares the turn's statements on one server connection;
    while another client holds that one, its next turn runs on the other, which does
    not have them. (A PgBouncer of its own: server connections that other tests left
    prepared statements on would fail the first turns already.)"""
    with pgbouncer(pool_size=2) as fresh:
        await _fail_with_default_settings(fresh, database, driver)


async def _fail_with_default_settings(bouncer: PgBouncer, database: Database, driver: str) -> None:
    engine = _engine(bouncer, database, driver)  # the driver's defaults
    chat_id = uuid.uuid4()
    try:
        if isinstance(engine, AsyncEngine):
            async with engine.connect() as mine, engine.connect() as other:
                for n in range(9):  # psycopg prepares a statement after 5 runs
                    async with AsyncSession(bind=mine, expire_on_commit=False) as db:
                        if n == 0:
                            await PooledChat.astart_session(db, "hello", id=chat_id)
                        else:
                            await PooledChat.acontinue_session(db, chat_id, "more")
                        await db.commit()
                before = _stored(database, chat_id)
                async with other.begin():
                    await other.execute(sa.text("SELECT 1"))  # holds that server connection
                    async with AsyncSession(bind=mine) as db:
                        with pytest.raises(ConfigurationError) as caught:
                            await PooledChat.acontinue_session(db, chat_id, "more")
                        await db.rollback()
        else:
            with engine.connect() as mine, engine.connect() as other:
                for n in range(9):
                    with Session(bind=mine, expire_on_commit=False) as db:
                        if n == 0:
                            PooledChat.start_session(db, "hello", id=chat_id)
                        else:
                            PooledChat.continue_session(db, chat_id, "more")
                        db.commit()
                before = _stored(database, chat_id)
                with other.begin():
                    other.execute(sa.text("SELECT 1"))
                    with Session(bind=mine) as db:
                        with pytest.raises(ConfigurationError) as caught:
                            PooledChat.continue_session(db, chat_id, "more")
                        db.rollback()
    finally:
        await _dispose(engine)
    message = str(caught.value)
    assert "prepared statement" in message and "transaction mode" in message
    if driver == "asyncpg":
        assert '"statement_cache_size": 0' in message
        assert '"prepared_statement_name_func"' in message
    else:
        assert '"prepare_threshold": None' in message
    assert "docs/scaling.md" in message
    assert caught.value.__cause__ is not None
    assert _stored(database, chat_id) == before  # nothing written


def _stored(database: Database, key: uuid.UUID) -> Any:
    with database.sync_engine().connect() as conn:
        row = (
            conn.execute(sa.select(PooledChat.__table__).where(PooledChat.id == key))
            .mappings()
            .one()
        )
    return dict(row)
