"""What every stored turn decides anew: the current instruction, and the model of the call.

A session's system message is rendered at each turn from the agent's current
``instruction`` and the session's stored ``instruction_args``, so an app deployed with
a new instruction applies it to the sessions it already has; ``pin_instructions=True``
keeps the text a session started with. A deploy is a new class on the same table
with a new ``Agent``, as a new process defines it. ``model=`` and ``model_settings=``
choose the model of one call.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import Agent, AgentSessionMixin, InputValidationError, Tool
from agent_session.testing import FunctionModel, TestModel
from agent_session.tools import ToolCall
from support.databases import Database
from support.sessions import Api, joined_rows, stream_text


class Customer(BaseModel):
    customer: str


class Tiered(BaseModel):
    customer: str
    tier: int


model = FunctionModel(lambda messages: f"noted ({len(messages)} messages)")

V1 = "Version one: answer {{ customer }} in French."
V2 = "Version two: answer {{ customer }} in English."


def _class(base: type, agent: Agent[str], status: bool = False, table: str = "deploy_chats") -> Any:
    """The session class an app defines for ``agent``: each deploy maps the same table."""

    class Chat(AgentSessionMixin[str], base):  # type: ignore[valid-type, misc]
        __tablename__ = table
        __agent__ = agent
        __status_attribute__ = "status" if status else None
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)

    return Chat


class Base1(DeclarativeBase):
    pass


class Base2(DeclarativeBase):
    pass


class Base3(DeclarativeBase):
    pass


class Base4(DeclarativeBase):
    pass


schema = dict(instruction_schema=Customer)
Before = _class(Base1, Agent(model, instruction=V1, **schema), status=True)
After = _class(Base2, Agent(model, instruction=V2, **schema), status=True)
Pinned = _class(Base3, Agent(model, instruction=V2, pin_instructions=True, **schema), status=True)
Refusing = _class(Base4, Agent(model, instruction=V2, instruction_schema=Tiered), status=True)


def _system(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "system"]


async def test_the_current_instruction_is_sent_after_a_deploy(database: Database) -> None:
    database.create_all(Base1.metadata)
    table = Before.__table__
    before, after, pinned = (Api(database, cls, maker=True) for cls in (Before, After, Pinned))
    chat = await before.start(None, "Bonjour", instruction_args={"customer": "Ada"})
    assert _system(model.last_request.messages) == ["Version one: answer Ada in French."]

    # Deployed with a pinned agent: the text the session started with is kept.
    await pinned.cont(None, chat.id, "Still there?")
    assert _system(model.last_request.messages) == ["Version one: answer Ada in French."]

    # Deployed with the new instruction: sent from the next turn on (streamed too), and
    # stored as sent, once, with the stored arguments kept as they were.
    await after.cont(None, chat.id, "Hello")
    assert _system(model.last_request.messages) == ["Version two: answer Ada in English."]
    await stream_text(await after.cont(None, chat.id, "And now?", stream=True))
    assert _system(model.last_request.messages) == ["Version two: answer Ada in English."]
    [row] = joined_rows(database, table)
    assert _system(row["context"]["messages"]) == ["Version two: answer Ada in English."]
    assert row["context"]["instruction_args"] == {"customer": "Ada"}
    context = await after.context(None, chat.id)
    assert context.turns == 4 and context.system == "Version two: answer Ada in English."

    # A pinned agent keeps what the session last had; new arguments still re-render.
    await pinned.cont(None, chat.id, "Pinned again")
    assert _system(model.last_request.messages) == ["Version two: answer Ada in English."]
    await pinned.cont(None, chat.id, "For Bob", instruction_args={"customer": "Bob"})
    assert _system(model.last_request.messages) == ["Version two: answer Bob in English."]


async def test_stored_arguments_the_new_schema_refuses(database: Database) -> None:
    database.create_all(Base1.metadata)
    before, refusing = Api(database, Before, maker=True), Api(database, Refusing, maker=True)
    chat = await before.start(None, "Hi", instruction_args={"customer": "Ada"})
    calls, rows = len(model.requests), joined_rows(database, Refusing.__table__)

    # Refused before any model call, the row as it was (not even claimed ``running``).
    with pytest.raises(InputValidationError, match="instruction_args=") as info:
        await refusing.cont(None, chat.id, "Hello")
    assert info.value.source == "instruction_args"
    assert f"session {chat.id}" in str(info.value) and "tier" in str(info.value)
    assert info.value.errors[0]["loc"] == ("tier",)
    with pytest.raises(InputValidationError, match="instruction_args="):
        await refusing.cont(None, chat.id, "Hello", stream=True)
    assert len(model.requests) == calls
    assert joined_rows(database, Refusing.__table__) == rows

    # The migration: new arguments on the next turn replace the stored ones.
    args = {"customer": "Ada", "tier": 2}
    await refusing.cont(None, chat.id, "Hello", instruction_args=args)
    assert _system(model.last_request.messages) == ["Version two: answer Ada in English."]
    context = await refusing.context(None, chat.id)
    assert context.instruction_args == args and context.turns == 2


# -- a model per call ---------------------------------------------------------------------


def pay(amount: float) -> str:
    """Pay an amount."""
    return f"paid {amount}"


configured = TestModel(name="configured-model")
shop = Agent(
    configured,
    instruction="You help.",
    tools=[Tool(pay, requires_approval=True)],
    model_settings={"max_tokens": 100, "temperature": 0.0},
)


class ShopBase(DeclarativeBase):
    pass


ShopChat = _class(ShopBase, shop, table="per_call_chats")


async def test_a_model_and_settings_per_call(database: Database) -> None:
    database.create_all(ShopBase.metadata)
    api = Api(database, ShopChat, maker=True)
    chosen = TestModel([ToolCall("pay", {"amount": 3}), "done"], name="chosen-model")
    settings = {"temperature": 0.7, "seed": 7}

    # The session is started and resumed on the model chosen for each call, with its
    # settings merged over the agent's; the configured model is never asked.
    chat = await api.start(None, "Pay 3", model=chosen, model_settings=settings)
    assert [p.tool_name for p in chat.pending_approvals] == ["pay"]
    [call] = chat.pending_approvals
    chat = await api.resume(
        None, chat.id, approvals={call.tool_call_id: True}, model=chosen, model_settings=settings
    )
    assert chat.last_output == "done" and configured.requests == []
    for request in chosen.requests:
        assert request.model == "chosen-model"
        assert request.settings == {"max_tokens": 100, "temperature": 0.7, "seed": 7}

    # A LiteLLM model string: under an override the double answers it (as in tests).
    double = TestModel(["streamed"], name="double")
    with shop.override(model=double):
        stream = await api.cont(None, chat.id, "Again", stream=True, model="openai/gpt-4o-mini")
        assert await stream_text(stream) == "streamed"
    assert double.last_request.model == "openai/gpt-4o-mini"
    assert double.last_request.settings == {"max_tokens": 100, "temperature": 0.0}

    # The stored replies record the model that answered each.
    [row] = joined_rows(database, ShopChat.__table__)
    replies = [m for m in row["context"]["messages"] if m["role"] == "assistant"]
    assert [m["meta"]["model"] for m in replies] == ["chosen-model", "chosen-model", "double"]

    # Bad per-call values: refused before any call, nothing written.
    for bad, source in (
        ({"model": 42}, "model"),
        ({"model": "  "}, "model"),
        ({"model_settings": {"stream": True}}, "model_settings"),
        ({"model_settings": {"temperature": -1}}, "model_settings"),
    ):
        with pytest.raises(InputValidationError) as info:
            await api.cont(None, chat.id, "Bad", **bad)
        assert info.value.source == source, bad
    assert joined_rows(database, ShopChat.__table__) == [row]
    assert len(chosen.requests) == 2 and configured.requests == []
