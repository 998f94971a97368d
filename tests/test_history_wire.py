"""History windows through real LiteLLM against the fake OpenAI-compatible server.

LiteLLM's own token counter sizes the window of a ``TokenBudget`` (on the six drivers),
and the default window (the model's input limit) counts only when the history may not
fit (through ``agent.run`` and ``agent.arun``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import Agent, AgentSessionMixin, ContextWindowError, TokenBudget
from agent_session.llm import LiteLLMModel, import_litellm
from support.databases import Database
from support.fake_openai import FakeOpenAI, running_fake_openai
from support.sessions import Api, joined_rows


class Base(DeclarativeBase):
    pass


def _row(database: Database, key: Any) -> dict[str, Any]:
    [row] = [r for r in joined_rows(database, WireChat.__table__) if r["id"] == key]
    return row


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    import_litellm()
    with running_fake_openai() as server:
        yield server


class WireChat(AgentSessionMixin[str], Base):
    __tablename__ = "long_wire_chats"
    __agent__ = Agent("openai/gpt-4o-mini")  # replaced per test
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


async def test_a_token_budget_counts_with_litellm_against_a_server(
    database: Database, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.requests.clear()
    database.create_all(Base.metadata)
    agent = Agent(
        "openai/gpt-4o-mini",
        instruction="You help with orders.",
        model_retries=0,
        model_settings={"api_base": fake.base_url, "api_key": "test-key"},
        history=TokenBudget(400, reserve_output=100),
    )
    monkeypatch.setattr(WireChat, "__agent__", agent)
    api = Api(database, WireChat, maker=True)
    reply = "Your order was delivered yesterday and left at the front door. " * 4
    for _ in range(8):
        fake.enqueue_completion(reply)
    chat = await api.start(None, "Where is order 1?")
    for turn in range(7):
        chat = await api.cont(None, chat.id, f"Where is order {turn + 2}?")
    litellm = import_litellm()
    sizes = [
        litellm.token_counter(model="openai/gpt-4o-mini", messages=body["messages"])
        for body in fake.bodies
    ]
    assert len(sizes) == 8 and max(sizes) <= 300
    last = fake.bodies[-1]["messages"]
    assert last[0]["role"] == "system" and last[-1]["content"] == "Where is order 8?"
    assert "Where is order 1?" not in json.dumps(last)
    document = _row(database, chat.id)["context"]
    assert len(document["messages"]) == 1 + 8 * 2  # the stored history stays complete

    # A turn that cannot fit is refused before the request: nothing sent, nothing stored.
    before = _row(database, chat.id)
    with pytest.raises(ContextWindowError):
        await api.cont(None, chat.id, "order " * 400)
    assert len(fake.requests) == 8 and fake.pending == 0
    assert _row(database, chat.id) == before


async def test_the_default_window_counts_only_when_the_history_may_not_fit(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, run: Any
) -> None:
    fake.requests.clear()
    litellm = import_litellm()
    counted: list[int] = []
    real_counter = litellm.token_counter

    def counter(**kw: Any) -> int:
        counted.append(len(kw["messages"]))
        return int(real_counter(**kw))

    monkeypatch.setattr(litellm, "token_counter", counter)
    agent = Agent(
        "openai/gpt-4o-mini",
        instruction="You help with orders.",
        model_retries=0,
        model_settings={"api_base": fake.base_url, "api_key": "test-key"},
    )
    fake.enqueue_completion("Delivered.")
    assert (await run(agent, "Where is order 1?")).output == "Delivered."
    assert counted == []  # 128,000 tokens surely hold a few hundred bytes: nothing counted
    # A model with a small window: the request is counted, and refused before it is sent.
    monkeypatch.setattr(LiteLLMModel, "context_window", lambda self, model: 600)
    with pytest.raises(ContextWindowError, match="the window allows 600"):
        await run(agent, "order " * 1000)
    assert counted and len(fake.requests) == 1
