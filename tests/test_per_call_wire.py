"""A call's ``model=`` and ``model_settings=`` reach the provider's HTTP request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import Agent, AgentSessionMixin
from agent_session.llm import import_litellm
from support.fake_openai import FakeOpenAI, running_fake_openai


class Base(DeclarativeBase):
    pass


class WireChat(AgentSessionMixin[str], Base):
    __tablename__ = "per_call_wire_chats"
    __agent__ = Agent("openai/model-a")  # given its server's address per test
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    import_litellm()
    with running_fake_openai() as server:
        yield server


def test_per_call_settings_reach_the_provider(
    fake: FakeOpenAI, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {"api_base": fake.base_url, "api_key": "none", "max_tokens": 64}
    monkeypatch.setattr(WireChat, "__agent__", Agent("openai/model-a", model_settings=settings))
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'chats.db'}")
    Base.metadata.create_all(engine)
    fake.enqueue_completion("from b", model="model-b")
    try:
        chat = WireChat.start_session(
            sessionmaker(engine), "Hi", model="openai/model-b", model_settings={"temperature": 0.25}
        )
        stored = WireChat.get_context(sessionmaker(engine), chat.id)
    finally:
        engine.dispose()
    [body] = fake.bodies
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("model-b", 0.25, 64)
    assert chat.last_output == "from b"
    assert stored.messages[-1].meta.model == "model-b"
