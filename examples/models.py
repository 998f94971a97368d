"""Example models: a support chat stored on the application's own table.

Used by the quickstart, the FastAPI example (``fastapi_chat/``), the Alembic
environment in ``migrations/`` and the tests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import uuid
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import Agent, AgentSessionMixin, Tool, ToolCall
from agent_session.llm import Model, ModelRequest, StreamChunk
from agent_session.testing import FunctionModel


class Base(DeclarativeBase):
    pass


class CompanyArgs(BaseModel):
    company_name: str
    tone: str = "friendly"


class UserMessage(BaseModel):
    message: str = Field(min_length=1)


class Reply(BaseModel):
    answer: str
    follow_up_question: str | None = None


def _model_settings() -> dict[str, Any]:
    """``AGENT_SESSION_MAX_TOKENS`` caps each reply (a small local server may need it)."""
    max_tokens = os.environ.get("AGENT_SESSION_MAX_TOKENS")
    return {"max_tokens": int(max_tokens)} if max_tokens else {}


support_agent = Agent(
    # A LiteLLM model string; for an OpenAI-compatible server, "openai/<model>" with
    # OPENAI_API_BASE (and OPENAI_API_KEY, any value if the server wants none) set.
    os.environ.get("AGENT_SESSION_MODEL", "openai/gpt-4o-mini"),
    instruction=(
        "You are a {{ tone }} support assistant for {{ company_name }}. "
        "Answer briefly and suggest one follow-up question."
    ),
    instruction_schema=CompanyArgs,
    input_schema=UserMessage,
    output_schema=Reply,
    output_retries=2,
    model_settings=_model_settings(),
)


class SupportChat(AgentSessionMixin[Reply], Base):
    """One support conversation per row, next to the app's own columns."""

    __tablename__ = "support_chats"
    __agent__ = support_agent
    # Listed per user (``SupportChat.list_sessions(db, where=SupportChat.user_id == ...)``):
    # the mixin adds ``last_turn_at`` and ``turn_count`` (``title`` and ``created_at`` are
    # the app's own) and the index (user_id, last_turn_at, id).
    __last_turn_attribute__ = "last_turn_at"
    __listed_by__ = ("user_id",)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    title: Mapped[str | None] = mapped_column(sa.String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())


class TrackedChat(AgentSessionMixin[Reply], Base):
    """The same agent with the optional status column, for multi-worker deployments."""

    __tablename__ = "tracked_chats"
    __agent__ = support_agent
    __status_attribute__ = "status"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(sa.String(64))


# -- The FastAPI example's chats (examples/fastapi_chat) ---------------------------


def refund(order_id: str, amount: float) -> str:
    """Refund part of an order. A person approves every refund."""
    return f"refunded {amount:.2f} on order {order_id}"


_replies = itertools.count(1)


def _demo_reply(messages: list[dict[str, Any]]) -> Reply | ToolCall:
    """The offline double's answer: it asks for a refund when the user says "refund"."""
    last = messages[-1]
    if last["role"] == "tool":
        return Reply(answer=f"Done: {last['content']}.")
    text = str(last.get("content") or "")
    if "refund" in text.lower():
        return ToolCall("refund", json.dumps({"order_id": "42", "amount": 20.0}))
    return Reply(
        answer=f"(offline reply {next(_replies)}) You said: {text!r}. "
        "Set AGENT_SESSION_MODEL to talk to a real model.",
        follow_up_question="Anything else?",
    )


class DemoModel(FunctionModel):
    """The test double the example runs on offline: it streams its reply word by word,
    ``CHAT_DEMO_DELAY`` seconds apart (default 0.03), as a provider would."""

    def __init__(self, delay: float) -> None:
        super().__init__(_demo_reply, name="offline-demo")
        self.delay = delay

    async def astream(self, request: ModelRequest) -> AsyncGenerator[StreamChunk, None]:
        async for chunk in super().astream(request):
            yield chunk
            if self.delay:
                await asyncio.sleep(self.delay)


def web_model() -> str | Model:
    """``AGENT_SESSION_MODEL`` (a LiteLLM model string) if set, else the offline double."""
    name = os.environ.get("AGENT_SESSION_MODEL")
    if name:
        return name
    return DemoModel(float(os.environ.get("CHAT_DEMO_DELAY", "0.03")))


web_agent = Agent(
    web_model(),
    instruction=(
        "You are the support assistant of Acme Shop. Answer briefly. "
        "Refunds go through the refund tool; a person approves each one."
    ),
    input_schema=UserMessage,
    output_schema=Reply,
    tools=[Tool(refund, requires_approval=True)],
    output_retries=1,
    model_settings=_model_settings(),
)


class WebChat(AgentSessionMixin[Reply], Base):
    """A chat of the FastAPI example: one row per conversation, owned by a user."""

    __tablename__ = "web_chats"
    __agent__ = web_agent
    __status_attribute__ = "status"
    __last_turn_attribute__ = "last_turn_at"  # listed: GET /chats
    __listed_by__ = ("user_id",)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[str] = mapped_column(sa.String(64))  # the listing index leads with it
    title: Mapped[str | None] = mapped_column(sa.String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(server_default=sa.func.now())
    status: Mapped[str] = mapped_column(sa.String(32), server_default="pending")
