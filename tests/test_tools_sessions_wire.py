"""Tool sessions through real LiteLLM and the fake server, on the database matrix.

A session's tool turns (one with a call whose arguments were cut off), a pause for
approval and its resume go to an OpenAI-style endpoint; the same stored session then
continues against an Anthropic-style endpoint (LiteLLM translates the stored OpenAI
chat form to ``tool_use``/``tool_result`` blocks), which accepts the replayed history.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import Agent, AgentSessionMixin, Tool, ToolContext
from agent_session.llm import import_litellm
from support.databases import Database
from support.fake_openai import FakeOpenAI, running_fake_openai
from support.sessions import Api, joined_rows

REFUNDS: list[tuple[str, float, str]] = []


def get_order(order_id: str) -> dict[str, str]:
    """Look up an order by id."""
    return {"order_id": order_id, "status": "shipped"}


def refund(ctx: ToolContext[str], order_id: str, amount: float) -> str:
    """Refund part of an order."""
    REFUNDS.append((order_id, amount, ctx.tool_call_id))
    return f"refunded {amount} on {order_id} ({ctx.deps})"


TOOLS = [get_order, Tool(refund, requires_approval=True)]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    import_litellm()
    with running_fake_openai() as server:
        yield server


def _agents(fake: FakeOpenAI) -> tuple[Agent[str], Agent[str]]:
    openai_style = Agent(
        "openai/gpt-4o-mini",
        instruction="You help with orders.",
        tools=TOOLS,
        model_retries=0,
        model_settings={"api_base": fake.base_url, "api_key": "test-key"},
    )
    anthropic_style = Agent(
        "anthropic/claude-3-5-sonnet-20240620",
        instruction="You help with orders.",
        tools=TOOLS,
        model_retries=0,
        model_settings={"api_base": fake.anthropic_base_url, "api_key": "test-key"},
    )
    return openai_style, anthropic_style


class Base(DeclarativeBase):
    pass


class WireChat(AgentSessionMixin[str], Base):
    __tablename__ = "tool_wire_chats"
    __agent__ = Agent("openai/gpt-4o-mini")  # replaced per test
    __status_attribute__ = "status"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    note: Mapped[str | None] = mapped_column(sa.String(32), default=None)


async def test_a_tool_session_replays_to_openai_and_anthropic_endpoints(
    database: Database, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    REFUNDS.clear()
    fake.requests.clear()
    database.create_all(Base.metadata)
    openai_style, anthropic_style = _agents(fake)
    monkeypatch.setattr(WireChat, "__agent__", openai_style)
    api = Api(database, WireChat, maker=True)

    # Turn 1: two calls, the second cut off inside its arguments.
    fake.enqueue_tool_calls(
        [("get_order", {"order_id": "A-1"}, "call_a"), ("get_order", '{"order_id": "A-', "call_b")]
    )
    fake.enqueue_completion("A-1 has shipped; which was the other one?")
    chat = await api.start(None, "Where are my orders?")
    sent = fake.bodies[1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "tool"]
    assert [c["function"]["arguments"] for c in sent[2]["tool_calls"]] == [
        '{"order_id": "A-1"}',
        "{}",
    ]
    assert sent[4]["content"].startswith("Error: the arguments of get_order are not valid JSON")

    # Turn 2: a refund waits for approval, then is approved in a later call.
    fake.enqueue_tool_calls([("refund", {"order_id": "A-1", "amount": 5}, "call_r")])
    chat = await api.cont(None, chat.id, "Refund 5 on A-1, please.")
    assert [p.tool_call_id for p in chat.pending_approvals] == ["call_r"]
    assert joined_rows(database, WireChat.__table__)[0]["status"] == "awaiting_approval"
    assert REFUNDS == []
    fake.enqueue_completion("Refunded 5 on A-1.")
    chat = await api.resume(None, chat.id, approvals={"call_r": True}, deps="shop-7")
    assert chat.last_output == "Refunded 5 on A-1."
    assert REFUNDS == [("A-1", 5.0, "call_r")]
    resumed = fake.bodies[3]["messages"]
    assert resumed[-1] == {
        "role": "tool",
        "tool_call_id": "call_r",
        "name": "refund",
        "content": "refunded 5.0 on A-1 (shop-7)",
    }

    # The same stored session, now sent to an Anthropic-style endpoint.
    monkeypatch.setattr(WireChat, "__agent__", anthropic_style)
    fake.enqueue_completion("You're welcome.", model="claude-3-5-sonnet-20240620")
    chat = await api.cont(None, chat.id, "Thanks!")
    assert chat.last_output == "You're welcome."
    request = fake.requests[-1]
    assert request.path == "/v1/messages"
    blocks = [
        block
        for message in request.body["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
    ]
    uses = [(b["id"], b["input"]) for b in blocks if b["type"] == "tool_use"]
    assert uses == [
        ("call_a", {"order_id": "A-1"}),
        ("call_b", {}),
        ("call_r", {"order_id": "A-1", "amount": 5.0}),
    ]
    answered = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
    assert answered == ["call_a", "call_b", "call_r"]

    # And back to the OpenAI-style endpoint: the history is still accepted.
    monkeypatch.setattr(WireChat, "__agent__", openai_style)
    fake.enqueue_completion("Anything else?")
    chat = await api.cont(None, chat.id, "Bye")
    [row] = joined_rows(database, WireChat.__table__)
    document = row["context"] if isinstance(row["context"], dict) else json.loads(row["context"])
    assert document["turns"] == 4 and row["status"] == "completed"
    assert fake.pending == 0
    assert len(fake.requests) == 6
