"""A small typed app: help-desk conversations, checked with ``mypy --strict``.

The model class names its output type, ``AgentSessionMixin[Answer]``, so
``chat.last_output`` is an ``Answer | None`` and ``chat.last_result`` a
``Result[Answer] | None``; the mixin's columns (``context``, ``context_revision``)
are typed ``Mapped`` attributes, usable in queries. The ``assert_type`` calls are
checked by mypy (``tests/test_typing.py``) and are no-ops when the file runs.

Runs offline with a test double (a real model needs only a different ``Agent``):

    python examples/typed_app.py
"""

from __future__ import annotations

import asyncio
from typing import Any, assert_type

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, Session, mapped_column

from agent_session import Agent, AgentSessionMixin, Context, Result
from agent_session.testing import TestModel


class Base(DeclarativeBase):
    pass


class Product(BaseModel):
    product: str


class Question(BaseModel):
    message: str


class Answer(BaseModel):
    answer: str
    confidence: float


help_agent = Agent(
    "openai/gpt-4o-mini",
    instruction="You answer questions about {{ product }}. Say how confident you are.",
    instruction_schema=Product,
    input_schema=Question,
    output_schema=Answer,
)
assert_type(help_agent, Agent[Answer])


class HelpChat(AgentSessionMixin[Answer], Base):
    """One help-desk conversation per row."""

    __tablename__ = "help_chats"
    __agent__ = help_agent

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(64), index=True)


def ask(db: Session, user_id: str, question: str, chat_id: int | None = None) -> HelpChat:
    """Start a conversation, or continue ``chat_id``; flushes, the caller commits."""
    if chat_id is None:
        chat = HelpChat.start_session(
            db, {"message": question}, instruction_args={"product": "Acme Router"}, user_id=user_id
        )
    else:
        chat = HelpChat.continue_session(db, chat_id, {"message": question})
    assert_type(chat, HelpChat)
    return chat


def confident_answer(chat: HelpChat, threshold: float = 0.5) -> str | None:
    """The newest answer if the model was confident enough."""
    reply = chat.last_output
    assert_type(reply, Answer | None)
    if reply is None:  # only before the first reply
        return None
    return reply.answer if reply.confidence >= threshold else None


def turn_cost(chat: HelpChat) -> float:
    """What the turn this instance just ran cost (0.0 when unknown or none ran)."""
    result = chat.last_result
    assert_type(result, Result[Answer] | None)
    if result is None or result.cost is None:
        return 0.0
    assert_type(result.output, Answer)
    return result.cost


def transcript(db: Session, chat_id: int) -> list[str]:
    """The stored conversation as ``role: text`` lines."""
    context = HelpChat.get_context(db, chat_id)
    assert_type(context, Context)
    return [f"{m.role}: {m.content}" for m in context.messages if isinstance(m.content, str)]


def long_conversations(db: Session, min_revision: int) -> list[HelpChat]:
    """Rows written at least ``min_revision`` times, busiest first."""
    assert_type(HelpChat.context_revision, InstrumentedAttribute[int])
    query = (
        sa.select(HelpChat)
        .where(HelpChat.context_revision >= min_revision)
        .order_by(HelpChat.context_revision.desc(), HelpChat.id)
    )
    return list(db.scalars(query))


def stored_turns(chat: HelpChat) -> int:
    """The number of turns in the raw stored document (no validation)."""
    document = chat.context
    assert_type(document, dict[str, Any] | None)
    assert_type(chat.context_revision, int)
    return int(document["turns"]) if document is not None else 0


async def ask_async(
    maker: async_sessionmaker[AsyncSession], user_id: str, question: str
) -> tuple[int, Answer | None]:
    """The async twin, with a sessionmaker: no connection is held during the model call."""
    chat = await HelpChat.astart_session(
        maker, question, instruction_args=Product(product="Acme Router"), user_id=user_id
    )
    assert_type(chat, HelpChat)
    chat = await HelpChat.acontinue_session(maker, chat, "And the 5 GHz band?")
    context = await HelpChat.aget_context(maker, chat.id)
    assert_type(context, Context)
    return context.turns, chat.last_output


def main() -> None:
    model = TestModel()  # builds a schema-valid Answer for every turn
    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with help_agent.override(model=model), Session(engine) as db:
        chat = ask(db, "u1", "How do I reset the router?")
        chat = ask(db, "u1", "It still blinks red.", chat_id=chat.id)
        db.commit()
        print("answer:", confident_answer(chat, threshold=0.0))
        print("cost of the last turn:", turn_cost(chat))
        print("stored turns:", stored_turns(chat))
        print("long conversations:", [c.id for c in long_conversations(db, 2)])
        print("\n".join(transcript(db, chat.id)))
    engine.dispose()

    async def run_async() -> tuple[int, Answer | None]:
        async_engine = create_async_engine("sqlite+aiosqlite://")
        async with async_engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        try:
            return await ask_async(async_sessionmaker(async_engine), "u2", "Is WPA3 supported?")
        finally:
            await async_engine.dispose()

    with help_agent.override(model=model):
        turns, last = asyncio.run(run_async())
    print("async turns:", turns, "last answer:", last.answer if last else None)


if __name__ == "__main__":
    main()
