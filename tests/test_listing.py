"""Listing a user's sessions (``list_sessions`` / ``alist_sessions``) on the six drivers:
newest activity first, cursor pages, columns only, refusals typed; and the columns,
index and settings the mixin declares for it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column, sessionmaker
from sqlmodel import Field, SQLModel

from agent_session import (
    Agent,
    AgentSessionMixin,
    ConfigurationError,
    InputValidationError,
    SessionPage,
    SessionSummary,
)
from agent_session.testing import FunctionModel
from support.databases import Database
from support.sessions import Api, stored_rows

agent = Agent(FunctionModel(lambda messages: f"re: {messages[-1]['content']}"), instruction="Hi.")


class Base(DeclarativeBase):
    pass


class ListedChat(AgentSessionMixin, Base):
    __tablename__ = "listed_chats"
    __agent__ = agent
    __status_attribute__ = "status"
    __last_turn_attribute__ = "last_turn_at"
    __listed_by__ = ("owner",)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(20))


class ListedUuid(AgentSessionMixin, Base):
    """A client-chosen UUID key, no status column, renamed listing columns."""

    __tablename__ = "listed_uuid_chats"
    __agent__ = agent
    __last_turn_attribute__ = "active_at"
    __title_attribute__ = "name"
    __turns_attribute__ = "n_turns"
    __created_attribute__ = "opened_at"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(sa.String(20))


class Unlisted(AgentSessionMixin, Base):
    __tablename__ = "unlisted_chats"
    __agent__ = agent
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(20))


@pytest.fixture(params=[False, True], ids=["session", "maker"])
def api(request: pytest.FixtureRequest, database: Database) -> Api:
    database.create_all(Base.metadata)
    return Api(database, ListedChat, maker=request.param)


async def listing(api: Api, **kw: Any) -> SessionPage:
    async def run(db: Any) -> SessionPage:
        if api.is_async:
            page: SessionPage = await api.model.alist_sessions(db, **kw)
        else:
            page = api.model.list_sessions(db, **kw)
        return page

    if api.maker is not None:
        return await run(api.maker)
    async with api.session() as db:
        return await run(db)


async def committed(api: Api, name: str, *args: Any, **kw: Any) -> Any:
    method = {"start": api.start, "cont": api.cont, "import": api.import_}[name]
    if api.maker is not None:
        return await method(None, *args, **kw)
    async with api.session() as db:
        result = await method(db, *args, **kw)
        await api.commit(db)
        return result


async def test_newest_activity_first_in_pages(api: Api) -> None:
    keys = []
    for n in range(5):
        chat = await committed(api, "start", f"hello   number\n{n}", owner="ann")
        keys.append(chat.id)
    await committed(api, "start", "not ann's", owner="bob")
    await committed(api, "cont", keys[1], "again", where=ListedChat.owner == "ann")

    page = await listing(api, where=ListedChat.owner == "ann", limit=2)
    assert [item.key for item in page.items] == [keys[1], keys[4]]
    first = page.items[0]
    assert isinstance(first, SessionSummary)
    assert first.title == "hello number 1"  # the first user message, whitespace collapsed
    assert first.turns == 2
    assert first.status == "completed"
    assert isinstance(first.last_turn_at, datetime)
    assert first.created_at is not None and first.created_at <= first.last_turn_at
    assert page.next is not None
    page2 = await listing(api, where=ListedChat.owner == "ann", limit=2, before=page.next)
    assert [item.key for item in page2.items] == [keys[3], keys[2]]
    page3 = await listing(api, where=[ListedChat.owner == "ann"], limit=2, before=page2.next)
    assert [item.key for item in page3.items] == [keys[0]]
    assert page3.next is None
    everyone = await listing(api, all=True, limit=50)
    assert len(everyone.items) == 6 and everyone.next is None


async def test_title_the_app_set_and_a_long_one_cut(api: Api) -> None:
    named = await committed(api, "start", "hi", owner="ann", title="My chat")
    long = await committed(api, "start", "x" * 300, owner="ann")
    page = await listing(api, where=ListedChat.owner == "ann")
    titles = {item.key: item.title for item in page.items}
    assert titles == {named.id: "My chat", long.id: "x" * 80}
    assert long.title == "x" * 80 and long.turn_count == 1 and long.last_turn_at is not None


async def test_imported_sessions_are_listed(api: Api) -> None:
    messages = [
        {"role": "user", "content": "imported question"},
        {"role": "assistant", "content": "imported answer"},
    ]
    chat = await committed(api, "import", messages, owner="ann")
    page = await listing(api, where=ListedChat.owner == "ann")
    assert [(i.key, i.title, i.turns) for i in page.items] == [
        (chat.id, "imported question", chat.turn_count)
    ]


@pytest.mark.parametrize(
    ("kw", "source"),
    [
        ({}, "where"),
        ({"where": []}, "where"),
        ({"where": ListedChat.owner == "ann", "limit": 0}, "limit"),
        ({"where": ListedChat.owner == "ann", "limit": 1001}, "limit"),
        ({"where": ListedChat.owner == "ann", "limit": True}, "limit"),
        ({"where": ListedChat.owner == "ann", "before": "not a cursor"}, "before"),
        ({"where": ListedChat.owner == "ann", "before": 12}, "before"),
        ({"all": "yes"}, "all"),
    ],
)
async def test_refusals_are_typed_and_change_nothing(
    api: Api, kw: dict[str, Any], source: str
) -> None:
    await committed(api, "start", "hi", owner="ann")
    before = stored_rows(api.database, ListedChat.__table__)
    with pytest.raises(InputValidationError) as caught:
        await listing(api, **kw)
    assert caught.value.source == source
    assert stored_rows(api.database, ListedChat.__table__) == before


async def test_a_model_without_listing_is_a_configuration_error(api: Api) -> None:
    other = Api(api.database, Unlisted, maker=api.maker is not None)
    with pytest.raises(ConfigurationError, match="__last_turn_attribute__"):
        await listing(other, where=Unlisted.owner == "ann")


async def test_uuid_keys_and_renamed_columns_page(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, ListedUuid, maker=True)
    keys = [(await api.start(None, f"q{n}", owner="ann")).id for n in range(3)]
    first = await listing(api, where=ListedUuid.owner == "ann", limit=2)
    rest = await listing(api, where=ListedUuid.owner == "ann", limit=2, before=first.next)
    assert [i.key for i in first.items + rest.items] == keys[::-1]
    assert first.items[0].title == "q2" and first.items[0].status is None
    assert rest.next is None


async def test_a_listing_reads_no_conversation(api: Api) -> None:
    await committed(api, "start", "hi", owner="ann")
    statements: list[str] = []
    engine = api.engine.sync_engine if api.is_async else api.engine

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        await listing(api, where=ListedChat.owner == "ann")
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1
    assert "context" not in selects[0] and "history" not in selects[0]


def test_the_mixin_declares_the_listing_columns_and_index() -> None:
    table = ListedChat.__table__
    for name in ("title", "turn_count", "created_at", "last_turn_at"):
        assert name in table.c
    (index,) = [i for i in table.indexes if i.name == "ix_listed_chats_listing"]
    assert [c.name for c in index.columns] == ["owner", "last_turn_at", "id"]
    assert "last_turn_at" not in Unlisted.__table__.c


def test_listing_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="__listed_by__"):

        class BadScope(AgentSessionMixin, Base):
            __tablename__ = "bad_scope_chats"
            __agent__ = agent
            __last_turn_attribute__ = "last_turn_at"
            __listed_by__ = ("nope",)
            id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(ConfigurationError, match="__title_attribute__"):

        class BadTitle(AgentSessionMixin, Base):
            __tablename__ = "bad_title_chats"
            __agent__ = agent
            __last_turn_attribute__ = "last_turn_at"
            __title_attribute__ = "not a name"
            id: Mapped[int] = mapped_column(primary_key=True)


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


class ListedDataclass(AgentSessionMixin, DataclassBase):
    __tablename__ = "listed_dataclass_chats"
    __agent__ = agent
    __last_turn_attribute__ = "last_turn_at"
    __listed_by__ = ("owner",)
    owner: Mapped[str] = mapped_column(sa.String(20))
    id: Mapped[int] = mapped_column(primary_key=True, init=False)


def _sqlmodel_class() -> Any:
    """A SQLModel table model, defined by the test that uses it: SQLModel keeps every
    table model on one shared metadata, which other tests create and drop whole."""

    class ListedSQLModel(AgentSessionMixin, SQLModel, table=True):
        __agent__ = agent
        __last_turn_attribute__ = "last_turn_at"
        __listed_by__ = ("owner",)
        id: int | None = Field(default=None, primary_key=True)
        owner: str = Field(max_length=20)

    return ListedSQLModel


@pytest.mark.parametrize("style", ["dataclass", "sqlmodel"])
def test_the_listing_in_the_dataclass_and_sqlmodel_styles(tmp_path: Any, style: str) -> None:
    model = ListedDataclass if style == "dataclass" else _sqlmodel_class()
    table = model.__table__
    own = [table.metadata.tables[name] for name in (table.name, f"{table.name}_history")]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'styles.sqlite3'}")
    try:
        table.metadata.create_all(engine, tables=own)
        assert any(index.name == f"ix_{table.name}_listing" for index in table.indexes)
        maker = sessionmaker(engine, expire_on_commit=False)
        first = model.start_session(maker, "first question", owner="ann")
        second = model.start_session(maker, "second question", owner="ann")
        model.continue_session(maker, first.id, "again")
        page = model.list_sessions(maker, where=model.owner == "ann")
        assert [(i.key, i.title, i.turns) for i in page.items] == [
            (first.id, "first question", 2),
            (second.id, "second question", 1),
        ]
    finally:
        engine.dispose()
        if style == "sqlmodel":
            for owned in reversed(own):
                table.metadata.remove(owned)
