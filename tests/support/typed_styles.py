"""A small app in each declarative style, checked by ``mypy --strict`` in test_typing.py.

Each style's model and the calls an app makes with its own kind of session (a
``Session``, Flask-SQLAlchemy's ``db.session``, SQLModel's sessions): mypy reports
nothing, and every ``assert_type`` holds.
"""

from __future__ import annotations

from typing import Any, assert_type

import sqlalchemy as sa
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    Session,
    declarative_base,
    mapped_column,
    registry,
)
from sqlmodel import Field, SQLModel
from sqlmodel import Session as SQLModelSession
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

from agent_session import Agent, AgentSessionMixin, Context

agent = Agent("openai/gpt-4o-mini")


class Base(DeclarativeBase):
    pass


class ModernChat(AgentSessionMixin[str], Base):
    __tablename__ = "typed_modern"
    __agent__ = agent
    id: Mapped[int] = mapped_column(primary_key=True)


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


class DataclassChat(AgentSessionMixin[str], DataclassBase):
    __tablename__ = "typed_dataclass"
    __agent__ = agent
    id: Mapped[int] = mapped_column(primary_key=True, init=False)


Classic: Any = declarative_base()


class ClassicChat(AgentSessionMixin[str], Classic):  # type: ignore[misc]
    """``declarative_base()`` returns ``Any`` to type checkers (the app's part)."""

    __tablename__ = "typed_classic"
    __agent__ = agent
    id = sa.Column(sa.Integer, primary_key=True)


mapper_registry = registry()


@mapper_registry.mapped
class DecoratedChat(AgentSessionMixin[str]):
    __tablename__ = "typed_decorated"
    __agent__ = agent
    id: Mapped[int] = mapped_column(primary_key=True)


class FlaskBase(DeclarativeBase):
    pass


flask_db = SQLAlchemy(model_class=FlaskBase)


class FlaskChat(AgentSessionMixin[str], flask_db.Model):  # type: ignore[name-defined,misc]
    """``db.Model`` is dynamic to type checkers (the app's part)."""

    __agent__ = agent
    id: Mapped[int] = mapped_column(primary_key=True)


class TypedSQLModelChat(AgentSessionMixin[str], SQLModel, table=True):
    __agent__ = agent
    id: int | None = Field(default=None, primary_key=True)


def declarative(db: Session) -> str | None:
    chat = ModernChat.start_session(db, "hi")
    chat = ModernChat.continue_session(db, chat.id, "again", instruction_args={"a": 1})
    assert_type(chat, ModernChat)
    started = DataclassChat.start_session(db, "hi")
    assert_type(started.last_output, str | None)
    decorated = DecoratedChat.continue_session(db, 7, "hello")
    assert_type(decorated, DecoratedChat)
    classic = ClassicChat.start_session(db, "hi")
    assert_type(classic, ClassicChat)
    assert_type(ModernChat.get_context(db, chat.id), Context)
    return chat.last_output


def flask_view(ticket_id: int) -> str | None:
    chat = FlaskChat.continue_session(flask_db.session, ticket_id, "hello")
    flask_db.session.commit()
    assert_type(chat, FlaskChat)
    return chat.last_output


def sqlmodel_sync(db: SQLModelSession) -> str | None:
    chat = TypedSQLModelChat.start_session(db, "hi")
    assert_type(chat, TypedSQLModelChat)
    return TypedSQLModelChat.continue_session(db, chat.id, "again").last_output


async def sqlmodel_async(
    db: SQLModelAsyncSession,
    maker: async_sessionmaker[SQLModelAsyncSession],
    scoped: async_scoped_session[SQLModelAsyncSession],
) -> str | None:
    chat = await TypedSQLModelChat.astart_session(db, "hi")
    chat = await TypedSQLModelChat.acontinue_session(maker, chat.id, "again")
    chat = await TypedSQLModelChat.acontinue_session(scoped, chat.id, "and again")
    assert_type(chat, TypedSQLModelChat)
    return chat.last_output
