"""Error messages show keys as their users write them.

``3fa85f64-5717-4562-b3fc-2c963f66afa6``, not ``UUID('3fa85f64-...')``; a start that
fails has no key yet and says "new ... session", never "session None". The ``key``
attribute of the exceptions keeps the real value.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import (
    Agent,
    AgentSessionMixin,
    ContextError,
    IdempotencyKeyReusedError,
    SessionNotFoundError,
    StaleSessionError,
    StorageError,
)
from agent_session.testing import FunctionModel
from support.databases import Database
from support.sessions import Api, stored_rows

KEY = uuid.UUID("3fa85f64-5717-4562-b3fc-2c963f66afa6")
SHOWN = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


class Answer(BaseModel):
    answer: str


interfere: dict[str, Any] = {"during_call": None}


def reply(messages: list[dict[str, Any]]) -> Answer:
    action = interfere["during_call"]
    if action is not None:
        action()
    return Answer(answer="ok")


class Base(DeclarativeBase):
    pass


class Ticket(AgentSessionMixin, Base):
    __tablename__ = "uuid_tickets"
    __agent__ = Agent(FunctionModel(reply), output_schema=Answer)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


@pytest.fixture
def api(database: Database) -> Any:
    database.create_all(Base.metadata)
    interfere["during_call"] = None
    yield Api(database, Ticket, maker=True)
    interfere["during_call"] = None


def assert_shows_key(error: Exception) -> None:
    message = str(error)
    assert SHOWN in message, message
    assert "UUID(" not in message, message
    assert getattr(error, "key", None) == KEY


async def test_not_found_shows_the_key(api: Api) -> None:
    for call in (api.cont(None, KEY, "hi"), api.context(None, KEY), api.cont(None, SHOWN, "hi")):
        with pytest.raises(SessionNotFoundError) as info:
            await call
        assert_shows_key(info.value)
        assert isinstance(info.value.key, uuid.UUID)
    assert stored_rows(api.database, Ticket.__table__) == []


async def test_stale_shows_the_key(api: Api) -> None:
    await api.start(None, "hi", id=KEY)
    table = Ticket.__table__

    def another_writer() -> None:
        with api.database.sync_engine().begin() as conn:
            conn.execute(sa.update(table).values(context_revision=table.c.context_revision + 1))

    interfere["during_call"] = another_writer
    with pytest.raises(StaleSessionError) as info:
        await api.cont(None, KEY, "again")
    assert_shows_key(info.value)
    [row] = stored_rows(api.database, table)
    assert row["context_revision"] == 2  # the other writer's bump, not this turn
    assert row["context"]["turns"] == 1


async def test_context_error_shows_the_key(api: Api) -> None:
    await api.start(None, "hi", id=KEY)
    table = Ticket.__table__
    with api.database.sync_engine().begin() as conn:
        conn.execute(sa.update(table).values(context={"version": 99}))
    before = stored_rows(api.database, table)
    for call in (api.context(None, KEY), api.cont(None, KEY, "again")):
        with pytest.raises(ContextError) as info:
            await call
        assert_shows_key(info.value)
    assert stored_rows(api.database, table) == before


@pytest.mark.parametrize("mode", ["session", "sessionmaker"])
async def test_a_failed_start_never_says_none(api: Api, mode: str) -> None:
    await api.start(None, "hi", id=KEY)
    before = stored_rows(api.database, Ticket.__table__)
    async with api.session() as session:
        db = session if mode == "session" else None
        # the primary key is taken, by a start with another input
        with pytest.raises(IdempotencyKeyReusedError) as reused:
            await api.start(db, "hello", id=KEY)
        if db is not None:
            await api.rollback(db)
    assert str(reused.value).startswith(f"session {SHOWN} already exists"), str(reused.value)
    assert "None" not in str(reused.value) and reused.value.key == KEY
    assert stored_rows(api.database, Ticket.__table__) == before

    # taken while the model answered (another writer's row): the insert fails
    other = uuid.uuid4()

    def take_the_key() -> None:
        with api.database.sync_engine().begin() as conn:
            conn.execute(Ticket.__table__.insert().values(id=other))

    interfere["during_call"] = take_the_key
    async with api.session() as session:
        db = session if mode == "session" else None
        with pytest.raises((StorageError, IdempotencyKeyReusedError)) as info:
            await api.start(db, "hi", id=other)
        if db is not None:
            await api.rollback(db)
    interfere["during_call"] = None
    message = str(info.value)
    if isinstance(info.value, StorageError):  # a caller's session cannot read after it
        assert message.startswith("new Ticket session: database error while inserting"), message
        assert info.value.key is None
    assert "None" not in message


def test_show_key() -> None:
    from agent_session.errors import show_key

    assert show_key(KEY) == SHOWN
    assert show_key(42) == "42"
    assert show_key("abc") == "abc"
    assert show_key((1, "a")) == "(1, 'a')"
    assert show_key((KEY, 7)) == f"({SHOWN}, 7)"
    assert show_key(("only",)) == "('only',)"
