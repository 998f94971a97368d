"""What a user of the installed wheel does first, through LiteLLM, the OpenAI SDK and
a real HTTP connection to the fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import Agent, AgentSessionMixin, TextDelta, TurnCompleted
from fake_openai import FakeOpenAI, running_fake_openai


class Reply(BaseModel):
    answer: str


def get_order(order_id: str) -> dict[str, str]:
    """Look up an order by id."""
    return {"order_id": order_id, "status": "delivered"}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """The fake server, also as LiteLLM's ``OPENAI_API_BASE`` (the stored turns use it)."""
    with running_fake_openai() as fake:
        monkeypatch.setenv("OPENAI_API_BASE", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "smoke")
        yield fake


def agent(server: FakeOpenAI, **kwargs: Any) -> Agent[Any]:
    settings = {"api_base": server.base_url, "api_key": "smoke"}
    return Agent("openai/smoke-model", model_retries=0, model_settings=settings, **kwargs)


class Base(DeclarativeBase):
    pass


class Chat(AgentSessionMixin[str], Base):
    __tablename__ = "chats"
    __agent__ = Agent("openai/smoke-model", model_retries=0)
    id: Mapped[int] = mapped_column(primary_key=True)


def test_plain_turn(server: FakeOpenAI) -> None:
    server.enqueue_completion("Hello!")
    result = agent(server).run("Hi")
    assert result.output == "Hello!"
    assert server.requests[0].body["messages"][-1] == {"role": "user", "content": "Hi"}


def test_tool_turn(server: FakeOpenAI) -> None:
    server.enqueue_tool_calls([("get_order", '{"order_id": "A-1"}')])
    server.enqueue_completion("A-1 was delivered.")
    result = agent(server, tools=[get_order]).run("Where is A-1?")
    assert result.output == "A-1 was delivered."
    assert [call.result for call in result.tool_calls] == [
        {"order_id": "A-1", "status": "delivered"}
    ]
    assert server.requests[0].body["tools"][0]["function"]["name"] == "get_order"
    assert len(server.requests) == 2


def test_structured_turn(server: FakeOpenAI) -> None:
    server.enqueue_completion('{"answer": "42"}')
    result = agent(server, output_schema=Reply).run("Six times seven?")
    assert result.output == Reply(answer="42")
    assert server.requests[0].body["response_format"]["type"] == "json_schema"


def test_streamed_stored_turn(server: FakeOpenAI, tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'chats.sqlite3'}")
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine)
    server.enqueue_stream("Hello there, streamed.")
    stream = Chat.start_session(maker, "Hi", stream=True)
    with stream:
        events = list(stream)
    texts = [event.text for event in events if isinstance(event, TextDelta)]
    assert len(texts) > 1 and "".join(texts) == "Hello there, streamed."
    assert isinstance(events[-1], TurnCompleted)
    assert server.requests[0].body["stream"] is True
    with maker() as db:
        chat = db.get(Chat, stream.session.id)
        assert chat is not None and chat.last_output == "Hello there, streamed."
    engine.dispose()


def test_async_stored_turn(server: FakeOpenAI, tmp_path: Path) -> None:
    async def main() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'chats.sqlite3'}")
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        maker = async_sessionmaker(engine)
        server.enqueue_completion("First.")
        server.enqueue_completion("Second.")
        chat = await Chat.astart_session(maker, "One")
        chat = await Chat.acontinue_session(maker, chat.id, "Two")
        assert chat.last_output == "Second."
        context = await Chat.aget_context(maker, chat.id)
        assert [m.content for m in context.messages] == ["One", "First.", "Two", "Second."]
        await engine.dispose()

    asyncio.run(main())
    assert len(server.requests) == 2
