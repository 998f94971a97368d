"""How a turn reads and writes its session, on the whole database matrix.

A load reads the head and the session's newest history rows in one statement (a
``UNION ALL`` the ORM loads the model from); a path longer than that, a path that
starts after the session's first row and a window over an edited path read the rows
they still need in a second statement. Every case sends the model exactly the
messages of the active path (or its window), as ``get_context`` shows them. Models
the ORM cannot load from such a union (inheritance, a relationship loaded by a join)
read the head and then its rows, as before. On PostgreSQL the compare-and-swap and
the INSERT of the turn's rows are one statement, which inserts nothing when the swap
loses.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
    with_loader_criteria,
)

from agent_session import Agent, AgentSessionMixin, _store
from agent_session.history import LastTurns
from agent_session.testing import TestModel
from support.databases import Database
from support.sessions import Api, stored_rows

whole = Agent(TestModel(text="fine"), instruction="You help.")
windowed = Agent(TestModel(text="fine"), instruction="You help.", history=LastTurns(2))


class Base(DeclarativeBase):
    pass


class LoadChat(AgentSessionMixin, Base):
    __tablename__ = "load_chats"
    __agent__ = whole
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(16), default="a")


class LoadWindowed(AgentSessionMixin, Base):
    __tablename__ = "load_windowed"
    __agent__ = windowed
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


class LoadOwner(Base):
    __tablename__ = "load_owners"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(16))


class LoadJoined(AgentSessionMixin, Base):
    """A relationship loaded by a join: the ORM loads it with the row, so the row is
    read alone (``Session.get``), then its history rows."""

    __tablename__ = "load_joined"
    __agent__ = whole
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner_id: Mapped[int | None] = mapped_column(sa.ForeignKey("load_owners.id"))
    owner: Mapped[LoadOwner | None] = relationship(lazy="joined")


class LoadKind(AgentSessionMixin, Base):
    """Single-table inheritance: the ORM filters the row by its kind."""

    __tablename__ = "load_kinds"
    __agent__ = whole
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "base",
    }


class LoadSupport(LoadKind):
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "support"}


class LoadSoft(AgentSessionMixin, Base):
    """Soft-deleted rows, hidden by the application's loader criteria."""

    __tablename__ = "load_soft"
    __agent__ = whole
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    deleted: Mapped[bool] = mapped_column(default=False)
    notes: Mapped[str | None] = mapped_column(sa.Text(), deferred=True)


class SoftSession(Session):
    """A session whose queries leave out soft-deleted ``LoadSoft`` rows."""


@sa.event.listens_for(SoftSession, "do_orm_execute")
def _hide_deleted(state: Any) -> None:
    if state.is_select and not state.is_column_load and not state.is_relationship_load:
        state.statement = state.statement.options(
            with_loader_criteria(LoadSoft, LoadSoft.deleted.is_(False), include_aliases=True)
        )


class LoadComposite(AgentSessionMixin, Base):
    """A composite primary key: the history table's key is two columns."""

    __tablename__ = "load_composite"
    __agent__ = whole
    tenant: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


class LoadUuid(AgentSessionMixin, Base):
    __tablename__ = "load_uuid"
    __agent__ = whole
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid(), primary_key=True, default=uuid.uuid4)


@contextmanager
def _statements(api: Api) -> Iterator[list[str]]:
    """Every statement the engine runs inside the block, as sent."""
    seen: list[str] = []
    engine = api.engine.sync_engine if api.is_async else api.engine

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.lstrip())

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def _history_reads(seen: list[str]) -> list[str]:
    """The SELECTs among ``seen`` that read a history table."""
    return [s for s in seen if s.upper().startswith("SELECT") and "_history" in s]


async def _call(api: Api, name: str, *args: Any, **kw: Any) -> Any:
    if api.is_async:
        return await getattr(api.model, f"a{name}")(api.maker, *args, **kw)
    return getattr(api.model, name)(api.maker, *args, **kw)


async def _path_texts(api: Api, key: Any) -> list[str]:
    context = await api.context(None, key)
    return [m.content for m in context.messages if m.role != "system"]


def _requests(cls: Any) -> Any:
    return cls.__agent__.model.requests


@pytest.mark.parametrize("maker", [False, True], ids=["session", "maker"])
async def test_a_path_longer_than_the_newest_rows_reads_the_rest(
    database: Database, monkeypatch: pytest.MonkeyPatch, maker: bool
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, LoadChat, maker=True)
    chat = await api.start(None, "turn 0")
    for turn in range(1, 7):
        chat = await api.cont(None, chat.id, f"turn {turn}")
    monkeypatch.setattr(_store, "NEWEST_ROWS", 3)
    expected = await _path_texts(api, chat.id)
    with _statements(api) as ran:
        if maker:
            chat = await api.cont(None, chat.id, "turn 7")
        else:
            async with api.session() as db:
                chat = await api.cont(db, chat.id, "turn 7")
                await api.commit(db)
    # The union read the newest 3 rows with the head; a second SELECT the 4 before.
    seen = _history_reads(ran)
    assert len(seen) == 2 and "UNION ALL" in seen[0].upper()
    sent = [m["content"] for m in _requests(LoadChat)[-1].messages[1:]]
    assert sent == [*expected, "turn 7"]
    assert (await _path_texts(api, chat.id))[:-1] == sent


async def test_a_short_path_is_read_in_one_statement(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, LoadChat, maker=True)
    chat = await api.start(None, "turn 0")
    for turn in range(1, 4):
        chat = await api.cont(None, chat.id, f"turn {turn}")
    expected = await _path_texts(api, chat.id)
    with _statements(api) as ran:
        chat = await api.cont(None, chat.id, "turn 4")
    seen = _history_reads(ran)
    assert len(seen) == 1 and "UNION ALL" in seen[0].upper()
    sent = [m["content"] for m in _requests(LoadChat)[-1].messages[1:]]
    assert sent == [*expected, "turn 4"]


async def test_a_path_that_starts_after_the_first_row(database: Database) -> None:
    """The first turn regenerated: the old first row is off the path, never sent."""
    database.create_all(Base.metadata)
    api = Api(database, LoadChat, maker=True)
    chat = await api.start(None, "turn 0")
    chat = await _call(api, "edit_session", chat.id, "1.0", "turn 0, edited")
    chat = await api.cont(None, chat.id, "turn 1")
    sent = [m["content"] for m in _requests(LoadChat)[-1].messages[1:]]
    assert sent == ["turn 0, edited", "fine", "turn 1"]
    assert await _path_texts(api, chat.id) == [*sent, "fine"]


async def test_a_window_over_an_edited_path_reads_the_rows_it_needs(
    database: Database,
) -> None:
    """LastTurns(2) after an edit: the newest two rows are the edited turn and a turn
    off the path; the window's older turn is read in a second statement."""
    database.create_all(Base.metadata)
    api = Api(database, LoadWindowed, maker=True)
    chat = await api.start(None, "turn 0")
    for turn in range(1, 4):
        chat = await api.cont(None, chat.id, f"turn {turn}")
    # Turn 3 (row 4) edited: the path is rows 1, 2, 3, 5; row 4 is off it.
    chat = await _call(api, "edit_session", chat.id, "4.0", "turn 3, edited")
    # Rewind to turn 2 (row 3) and branch again: the path is rows 1, 2, 3, 6.
    chat = await _call(api, "rewind_session", chat.id, "3.1")
    with _statements(api) as ran:
        chat = await api.cont(None, chat.id, "turn 3, again")
    seen = _history_reads(ran)
    assert len(seen) == 2
    sent = [m["content"] for m in _requests(LoadWindowed)[-1].messages[1:]]
    assert sent == ["turn 1", "fine", "turn 2", "fine", "turn 3, again"]


@pytest.mark.parametrize("cls", [LoadJoined, LoadSupport], ids=["joined", "inherited"])
async def test_models_the_union_cannot_load_read_the_row_then_its_rows(
    database: Database, cls: Any
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, cls, maker=True)
    chat = await api.start(None, "turn 0")
    chat = await api.cont(None, chat.id, "turn 1")
    with _statements(api) as ran:
        chat = await api.cont(None, chat.id, "turn 2")
    seen = _history_reads(ran)
    assert len(seen) == 1 and "UNION" not in seen[0].upper()
    sent = [m["content"] for m in _requests(cls)[-1].messages[1:]]
    assert sent == ["turn 0", "fine", "turn 1", "fine", "turn 2"]
    assert type(chat) is cls


async def test_a_row_outside_where_is_not_found_with_its_rows_unread(
    database: Database,
) -> None:
    from agent_session import SessionNotFoundError

    database.create_all(Base.metadata)
    api = Api(database, LoadChat, maker=True)
    chat = await api.start(None, "turn 0", owner="a")
    before = await _path_texts(api, chat.id)
    with pytest.raises(SessionNotFoundError):
        await api.cont(None, chat.id, "turn 1", where=LoadChat.owner == "b")
    assert await _path_texts(api, chat.id) == before
    chat = await api.cont(None, chat.id, "turn 1", where=LoadChat.owner == "a")
    assert await _path_texts(api, chat.id) == [*before, "turn 1", "fine"]


async def test_on_postgresql_the_swap_and_its_rows_are_one_statement(
    database: Database,
) -> None:
    """Elsewhere (no data-modifying WITH) the UPDATE, then the INSERT."""
    database.create_all(Base.metadata)
    api = Api(database, LoadChat, maker=True)
    chat = await api.start(None, "turn 0")
    with _statements(api) as ran:
        chat = await api.cont(None, chat.id, "turn 1")
    writes = [s.split()[0].upper() for s in ran if not s.upper().startswith("SELECT")]
    assert writes == (["WITH"] if database.dialect == "postgresql" else ["UPDATE", "INSERT"])
    assert await _path_texts(api, chat.id) == ["turn 0", "fine", "turn 1", "fine"]


@pytest.mark.parametrize("cls", [LoadComposite, LoadUuid], ids=["composite", "uuid"])
async def test_keys_of_several_columns_and_of_other_types_load_in_one_statement(
    database: Database, cls: Any
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, cls, maker=True)
    values = {"tenant": "t", "number": 7} if cls is LoadComposite else {}
    chat = await api.start(None, "turn 0", **values)
    key = ("t", 7) if cls is LoadComposite else chat.id
    chat = await api.cont(None, key, "turn 1")
    with _statements(api) as ran:
        chat = await api.cont(None, key, "turn 2")
    seen = _history_reads(ran)
    assert len(seen) == 1 and "UNION ALL" in seen[0].upper()
    sent = [m["content"] for m in _requests(cls)[-1].messages[1:]]
    assert sent == ["turn 0", "fine", "turn 1", "fine", "turn 2"]
    assert await _path_texts(api, key) == [*sent, "fine"]


async def test_the_applications_loader_criteria_still_hide_a_row(database: Database) -> None:
    """A ``do_orm_execute`` listener's ``with_loader_criteria`` (a soft delete): the row
    it hides is not found by a turn or a read, as with ``Session.get``."""
    from agent_session import SessionNotFoundError

    database.create_all(Base.metadata)
    api = Api(database, LoadSoft, maker=True)
    engine = api.engine
    maker: Any = (
        async_sessionmaker(engine, sync_session_class=SoftSession)
        if api.is_async
        else sessionmaker(engine, class_=SoftSession)
    )
    api.maker = maker
    shown = await api.start(None, "turn 0")
    hidden = await api.start(None, "turn 0")
    with database.sync_engine().begin() as conn:
        conn.execute(
            sa.update(LoadSoft.__table__).where(LoadSoft.id == hidden.id).values(deleted=True)
        )
    before = [r for r in stored_rows(database, LoadSoft.__table__)]
    with pytest.raises(SessionNotFoundError):
        await api.cont(None, hidden.id, "turn 1")
    with pytest.raises(SessionNotFoundError):
        await api.context(None, hidden.id)
    assert [r for r in stored_rows(database, LoadSoft.__table__)] == before
    chat = await api.cont(None, shown.id, "turn 1")
    assert await _path_texts(api, chat.id) == ["turn 0", "fine", "turn 1", "fine"]


async def test_deferred_columns_are_not_read_with_the_row(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, LoadSoft, maker=True)
    chat = await api.start(None, "turn 0", notes="x" * 1000)
    with _statements(api) as ran:
        chat = await api.cont(None, chat.id, "turn 1")
    seen = _history_reads(ran)
    assert len(seen) == 1 and "UNION ALL" in seen[0].upper()
    assert "notes" not in seen[0]
    assert await _path_texts(api, chat.id) == ["turn 0", "fine", "turn 1", "fine"]
