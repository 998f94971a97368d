"""Class-definition-time checks of AgentSessionMixin, and dataclass-mapped models."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column

from agent_session import Agent, AgentSessionMixin, ConfigurationError
from agent_session.testing import TestModel
from support.databases import Database
from support.sessions import Api, stored_rows

agent = Agent(TestModel(text="hi there"))


def test_missing_agent_is_a_configuration_error_at_definition() -> None:
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match=r"NoAgent.*__agent__"):

        class NoAgent(AgentSessionMixin, Base):
            __tablename__ = "no_agent"
            id: Mapped[int] = mapped_column(primary_key=True)


def test_agent_must_be_an_agent() -> None:
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match=r"WrongAgent.__agent__ must be an Agent"):

        class WrongAgent(AgentSessionMixin, Base):
            __tablename__ = "wrong_agent"
            __agent__ = "openai/gpt-4o"  # type: ignore[assignment]
            id: Mapped[int] = mapped_column(primary_key=True)


def test_declared_context_column_must_be_json() -> None:
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match=r"TextContext.context .* must be JSON-typed"):

        class TextContext(AgentSessionMixin, Base):
            __tablename__ = "text_context"
            __agent__ = agent
            id: Mapped[int] = mapped_column(primary_key=True)
            context: Mapped[str] = mapped_column(sa.Text())


def test_declared_json_subtypes_are_accepted() -> None:
    class Base(DeclarativeBase):
        pass

    class OwnJsonb(AgentSessionMixin, Base):
        __tablename__ = "own_jsonb"
        __agent__ = agent
        id: Mapped[int] = mapped_column(primary_key=True)
        context: Mapped[dict[str, object] | None] = mapped_column(JSONB(), nullable=True)

    assert isinstance(OwnJsonb.__table__.c.context.type, JSONB)


def test_abstract_intermediate_classes_need_no_agent() -> None:
    class Base(DeclarativeBase):
        pass

    class Abstract(AgentSessionMixin, Base):
        __abstract__ = True

    class Concrete(Abstract):
        __tablename__ = "concrete_chats"
        __agent__ = agent
        id: Mapped[int] = mapped_column(primary_key=True)

    assert {"context", "context_revision"} <= set(Concrete.__table__.c.keys())


def test_status_columns_are_added_on_request() -> None:
    class Base(DeclarativeBase):
        pass

    class Tracked(AgentSessionMixin, Base):
        __tablename__ = "tracked"
        __agent__ = agent
        __status_attribute__ = "status"
        id: Mapped[int] = mapped_column(primary_key=True)

    columns = Tracked.__table__.c
    assert isinstance(columns.context.type, sa.JSON)
    assert not columns.context_revision.nullable
    assert columns.status.server_default is not None
    assert isinstance(columns.status_changed_at.type, sa.DateTime)


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


class DataclassChat(AgentSessionMixin, DataclassBase):
    __tablename__ = "dataclass_chats"
    __agent__ = agent
    user_id: Mapped[str] = mapped_column(sa.String(32))
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default_factory=uuid.uuid4)


async def test_mapped_as_dataclass_models_work(database: Database) -> None:
    database.create_all(DataclassBase.metadata)
    api = Api(database, DataclassChat)
    async with api.session() as db:
        chat = await api.start(db, "hello", user_id="u7")
        chat = await api.cont(db, chat, "again")
        await api.commit(db)
    assert chat.last_output == "hi there"
    fresh = DataclassChat(user_id="x")  # the mixin's columns are not __init__ arguments
    assert fresh.context is None and fresh.context_revision == 0
    [row] = stored_rows(database, DataclassChat.__table__)
    assert row["user_id"] == "u7" and row["context_revision"] == 2


class TypedDataclassChat(AgentSessionMixin[str], DataclassBase):
    """The generic form of the mixin on a ``MappedAsDataclass`` base, with an abstract
    intermediate class and single-table inheritance below it."""

    __tablename__ = "typed_dataclass_chats"
    __agent__ = agent
    user_id: Mapped[str] = mapped_column(sa.String(32))
    kind: Mapped[str] = mapped_column(sa.String(16), init=False)
    id: Mapped[int] = mapped_column(primary_key=True, init=False)
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "chat",
    }


class TypedDataclassSubChat(TypedDataclassChat):
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "sub"}


async def test_generic_mixin_on_dataclass_and_inherited_models(database: Database) -> None:
    database.create_all(DataclassBase.metadata)
    for model in (TypedDataclassChat, TypedDataclassSubChat):
        api = Api(database, model)
        async with api.session() as db:
            chat = await api.start(db, "hello", user_id="u8")
            chat = await api.cont(db, chat, "again")
            await api.commit(db)
        assert type(chat) is model and chat.last_output == "hi there"
    rows = stored_rows(database, TypedDataclassChat.__table__)
    assert sorted((row["kind"], row["context_revision"]) for row in rows) == [
        ("chat", 2),
        ("sub", 2),
    ]
    assert TypedDataclassSubChat(user_id="x").context is None
