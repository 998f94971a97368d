"""Example models: a support chat stored on the application's own table.

Used by the quickstart, the Alembic environment in ``migrations/`` and the tests.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import Agent, AgentSessionMixin


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
