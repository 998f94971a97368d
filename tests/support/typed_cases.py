"""Typing cases for ``AgentSessionMixin``, checked by ``mypy --strict`` in test_typing.py.

Every ``assert_type`` is verified by mypy. A ``# type: ignore[code]`` marks a line
mypy must reject: under ``--strict`` an ignore that silences nothing is itself an
error, so each of them proves an error is still reported. The module is also
imported by test_typing.py, which maps its classes and runs a turn on each.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, assert_type

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    InstrumentedAttribute,
    Mapped,
    MappedAsDataclass,
    Session,
    mapped_column,
)

from agent_session import (
    Agent,
    AgentSessionMixin,
    ApprovalPendingError,
    OutputValidationError,
    PendingApproval,
    Result,
    SessionNotFoundError,
    Usage,
)
from agent_session.testing import TestModel


class Base(DeclarativeBase):
    pass


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


class Reply(BaseModel):
    answer: str


reply_agent = Agent(TestModel(), output_schema=Reply)
text_agent = Agent(TestModel(text="plain text"))
assert_type(reply_agent, Agent[Reply])
assert_type(text_agent, Agent[str])


class UntypedChat(AgentSessionMixin, Base):
    """Unparameterized: the output is ``Any``, and ``--strict`` accepts the bare name."""

    __tablename__ = "untyped_chats"
    __agent__ = reply_agent
    id: Mapped[int] = mapped_column(primary_key=True)


class TextChat(AgentSessionMixin[str], Base):
    """A plain-text agent: the output is a ``str``."""

    __tablename__ = "text_chats"
    __agent__ = text_agent
    id: Mapped[int] = mapped_column(primary_key=True)


class DataclassChat(AgentSessionMixin[Reply], DataclassBase):
    """A ``MappedAsDataclass`` model: the mixin's columns are not ``__init__`` arguments."""

    __tablename__ = "dataclass_chats"
    __agent__ = reply_agent
    user_id: Mapped[str] = mapped_column(sa.String(32))
    id: Mapped[int] = mapped_column(primary_key=True, init=False)


class OwnColumnsChat(AgentSessionMixin[Reply], Base):
    """Columns the model declares itself keep their own (compatible) types."""

    __tablename__ = "own_columns_chats"
    __agent__ = reply_agent
    id: Mapped[int] = mapped_column(primary_key=True)
    context: Mapped[Any] = mapped_column(sa.JSON(), nullable=True)


def untyped(db: Session) -> None:
    chat = UntypedChat.start_session(db, "hi")
    assert_type(chat, UntypedChat)
    assert_type(chat.last_output, Any | None)
    assert_type(chat.last_result, Result[Any] | None)
    assert_type(chat.context, dict[str, Any] | None)
    assert_type(UntypedChat.context, InstrumentedAttribute[dict[str, Any] | None])


def text(db: Session) -> str:
    chat = TextChat.start_session(db, "hi")
    chat = TextChat.continue_session(db, chat.id, "again")
    assert_type(chat.last_output, str | None)
    assert_type(chat.last_result, Result[str] | None)
    return chat.last_output.upper()  # type: ignore[union-attr]


def dataclass(db: Session) -> Reply | None:
    chat = DataclassChat(user_id="u1")
    assert_type(chat.context_revision, int)
    started = DataclassChat.start_session(db, "hi", user_id="u1")
    assert_type(started, DataclassChat)
    rows = db.scalars(sa.select(DataclassChat).where(DataclassChat.context_revision > 0))
    assert_type(rows.all()[0].last_output, Reply | None)
    return started.last_output


def own_columns(chat: OwnColumnsChat) -> Any:
    assert_type(chat.last_output, Reply | None)
    return chat.context


def rejected(db: Session, chat: OwnColumnsChat) -> None:
    """Lines mypy must reject (never run)."""
    DataclassChat(user_id="u1", context_revision=3)  # type: ignore[call-arg]
    chat.context_revision = "one"  # type: ignore[assignment]
    print(TextChat.start_session(db, "hi").last_output.answer)  # type: ignore[union-attr]


async def stream_cases() -> None:
    """A turn stream is typed by the agent's output; an agent run stores no session."""
    from agent_session import AsyncTurnStream, StreamEvent, TurnCompleted, TurnStream
    from agent_session._streaming import arun_stream, run_stream

    stream = run_stream(reply_agent, "hi")
    assert_type(stream, TurnStream[Reply, None])
    for event in stream:
        assert_type(event, StreamEvent[Reply])
        if isinstance(event, TurnCompleted):
            assert_type(event.result, Result[Reply])
    assert_type(stream.result, Result[Reply] | None)
    assert_type(stream.session, None)
    astream = await arun_stream(reply_agent, "hi")
    assert_type(astream, AsyncTurnStream[Reply, None])
    async for item in astream:
        assert_type(item, StreamEvent[Reply])
    untyped: StreamEvent = item  # the bare alias means StreamEvent[Any]
    print(untyped)


def error_cases(
    pending: ApprovalPendingError, invalid: OutputValidationError, missing: SessionNotFoundError
) -> None:
    """The errors' attributes are typed as documented."""
    assert_type(pending.pending, list[PendingApproval])
    assert_type(pending.key, Hashable)
    assert_type(invalid.usage, Usage | None)
    assert_type(missing.key, Hashable)


def values_cases(db: Session) -> None:
    """Column values in ``values=`` (or as keywords)."""
    chat = OwnColumnsChat.start_session(db, "hi", values={"id": 1})
    assert_type(chat, OwnColumnsChat)


async def session_stream_cases(db: Session, adb: AsyncSession, chat: OwnColumnsChat) -> None:
    """``stream=True`` on the session methods and on ``Agent.run``: typed by overloads."""
    from agent_session import AsyncTurnStream, TurnStream

    assert_type(OwnColumnsChat.start_session(db, "hi"), OwnColumnsChat)
    stream = OwnColumnsChat.start_session(db, "hi", stream=True, on_cancel="keep")
    assert_type(stream, TurnStream[Reply, OwnColumnsChat])
    assert_type(stream.session, OwnColumnsChat | None)
    assert_type(stream.result, Result[Reply] | None)
    assert_type(
        OwnColumnsChat.continue_session(db, chat, "more", stream=True),
        TurnStream[Reply, OwnColumnsChat],
    )
    assert_type(
        OwnColumnsChat.resume_session(db, chat, approvals={"c1": True}, stream=True),
        TurnStream[Reply, OwnColumnsChat],
    )
    astream = await OwnColumnsChat.acontinue_session(adb, chat, "more", stream=True)
    assert_type(astream, AsyncTurnStream[Reply, OwnColumnsChat])
    assert_type(await OwnColumnsChat.astart_session(adb, "hi"), OwnColumnsChat)
    assert_type(reply_agent.run("hi", stream=True), TurnStream[Reply, None])
    assert_type(reply_agent.run("hi"), Result[Reply])
    assert_type(await reply_agent.arun("hi", stream=True), AsyncTurnStream[Reply, None])


def flag_cases(db: Session, chat: OwnColumnsChat, flag: bool) -> None:
    """``stream=`` given a plain ``bool``: either result."""
    from agent_session import TurnStream

    assert_type(
        OwnColumnsChat.continue_session(db, chat, "more", stream=flag),
        OwnColumnsChat | TurnStream[Reply, OwnColumnsChat],
    )
    assert_type(reply_agent.run("hi", stream=flag), Result[Reply] | TurnStream[Reply, None])


async def tree_cases(db: Session, adb: AsyncSession, chat: OwnColumnsChat) -> None:
    """Regenerate, edit, switch and rewind: typed like a turn."""
    from agent_session import AsyncTurnStream, TurnStream

    assert_type(OwnColumnsChat.regenerate_session(db, chat), OwnColumnsChat)
    assert_type(OwnColumnsChat.edit_session(db, chat, "1.0", "hi"), OwnColumnsChat)
    assert_type(
        OwnColumnsChat.regenerate_session(db, chat, stream=True),
        TurnStream[Reply, OwnColumnsChat],
    )
    assert_type(
        OwnColumnsChat.edit_session(db, chat, "1.0", "hi", stream=True),
        TurnStream[Reply, OwnColumnsChat],
    )
    assert_type(OwnColumnsChat.switch_branch(db, chat, "1.0"), OwnColumnsChat)
    assert_type(OwnColumnsChat.rewind_session(db, chat, "1.1"), OwnColumnsChat)
    astream = await OwnColumnsChat.aedit_session(adb, chat, "1.0", "hi", stream=True)
    assert_type(astream, AsyncTurnStream[Reply, OwnColumnsChat])
    assert_type(await OwnColumnsChat.aregenerate_session(adb, chat), OwnColumnsChat)
    assert_type(await OwnColumnsChat.aswitch_branch(adb, chat, "1.0"), OwnColumnsChat)
    assert_type(await OwnColumnsChat.arewind_session(adb, chat, "0.0"), OwnColumnsChat)
    context = OwnColumnsChat.get_context(db, chat.id, path="all")
    assert_type(context.branches_at("1.0"), list[str])
