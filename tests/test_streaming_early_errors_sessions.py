"""Errors known before the model is called are raised by the call that creates a stream.

``continue_session(..., stream=True)`` itself (sync), the ``await`` of its twin (async):
a web handler can still answer 404/422/409 before it sends a status for the stream.
Each case checks the typed error, that no model request was made (the test double
records every request) and that the table is as it was. Runs on the six drivers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import (
    Agent,
    AgentSessionMixin,
    ApprovalPendingError,
    AsyncTurnStream,
    BudgetExceededError,
    ConfigurationError,
    InputValidationError,
    SessionBusyError,
    SessionNotFoundError,
    Tool,
    ToolCall,
    TurnStream,
)
from agent_session.testing import TestModel
from support.databases import Database
from support.sessions import stored_rows


class Persona(BaseModel):
    name: str


def transfer(to: str) -> str:
    """Send money (needs a person's approval)."""
    return f"sent to {to}"


AGENT = Agent(
    TestModel(text="hello", call_tools="none"),
    instruction="You help {{ name }}.",
    instruction_schema=Persona,
    tools=[Tool(transfer, requires_approval=True)],
    max_input_bytes=64,
    model_retries=0,
)
ARGS = {"name": "Ann"}


class Base(DeclarativeBase):
    pass


class EarlyChat(AgentSessionMixin[str], Base):
    __tablename__ = "early_error_chats"
    __agent__ = AGENT
    __status_attribute__ = "status"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(32), default="ann")


async def _stream(database: Database, maker: Any, method: str, *args: Any, **kw: Any) -> Any:
    """``EarlyChat.<method>(maker, ..., stream=True)``, or its awaited async twin."""
    if database.is_async:
        return await getattr(EarlyChat, f"a{method}")(maker, *args, stream=True, **kw)
    return getattr(EarlyChat, method)(maker, *args, stream=True, **kw)


async def _drain(stream: Any) -> None:
    if isinstance(stream, TurnStream):
        with stream:
            for _event in stream:
                pass
        return
    async with stream:
        async for _event in stream:
            pass


async def test_early_errors_are_raised_before_the_stream_exists(database: Database) -> None:
    database.create_all(Base.metadata)
    engine = database.engine()
    maker = async_sessionmaker(engine) if database.is_async else sessionmaker(engine)

    with AGENT.override(model=TestModel(text="hello", call_tools="none")):
        chat = await _stream(database, maker, "start_session", "Hi", instruction_args=ARGS)
        await _drain(chat)
        busy = await _stream(database, maker, "start_session", "Hi", instruction_args=ARGS)
        await _drain(busy)
    with AGENT.override(model=TestModel(replies=[ToolCall("transfer", {"to": "bo"}, id="pay")])):
        paused = await _stream(database, maker, "start_session", "Pay", instruction_args=ARGS)
        await _drain(paused)
    chat_id, busy_id, paused_id = chat.session.id, busy.session.id, paused.session.id
    with database.sync_engine().begin() as conn:  # another worker's turn is running
        table = EarlyChat.__table__
        conn.execute(
            table.update()
            .where(table.c.id == busy_id)
            .values(status="running", status_changed_at=datetime.now().replace(tzinfo=None))
        )
    before = stored_rows(database, EarlyChat.__table__)

    cases: list[tuple[type[Exception], str, tuple[Any, ...], dict[str, Any]]] = [
        # start_session
        (InputValidationError, "start_session", ("x" * 100,), {"instruction_args": ARGS}),
        (InputValidationError, "start_session", ("Hi",), {"instruction_args": {"nom": 1}}),
        (InputValidationError, "start_session", ("Hi",), {"instruction_args": ARGS, "nope": 1}),
        # continue_session
        (SessionNotFoundError, "continue_session", (10_000, "Hi"), {}),
        (SessionNotFoundError, "continue_session", (chat_id, "Hi"), {"where": _others()}),
        (InputValidationError, "continue_session", (chat_id, "x" * 100), {}),
        (InputValidationError, "continue_session", ("not a key", "Hi"), {}),
        (InputValidationError, "continue_session", (chat_id, "Hi"), {"where": "owner = 'ann'"}),
        (ApprovalPendingError, "continue_session", (paused_id, "Hi"), {}),
        (BudgetExceededError, "continue_session", (chat_id, "Hi"), {"max_session_tokens": 1}),
        (SessionBusyError, "continue_session", (busy_id, "Hi"), {}),
        # resume_session
        (SessionNotFoundError, "resume_session", (10_000,), {"approvals": {"pay": True}}),
        (
            SessionNotFoundError,
            "resume_session",
            (paused_id,),
            {"approvals": {"pay": True}, "where": _others()},
        ),
        (InputValidationError, "resume_session", (paused_id,), {"approvals": {"nope": True}}),
        (InputValidationError, "resume_session", (chat_id,), {"approvals": {"pay": True}}),
        (
            BudgetExceededError,
            "resume_session",
            (paused_id,),
            {"approvals": {"pay": True}, "max_session_tokens": 1},
        ),
    ]
    model = TestModel(text="never sent", call_tools="none")
    with AGENT.override(model=model):
        for error, method, args, kw in cases:
            with pytest.raises(error):
                await _stream(database, maker, method, *args, **kw)
            assert model.requests == [], (method, args, kw)
            assert stored_rows(database, EarlyChat.__table__) == before, (method, args, kw)
        # A db of the wrong kind is a configuration error, raised by the call too.
        wrong = sessionmaker(database.sync_engine()) if database.is_async else object()
        with pytest.raises(ConfigurationError):
            await _stream(database, wrong, "continue_session", chat_id, "Hi")

        # What comes from the first model request on is reported inside the stream.
        stream = await _stream(database, maker, "continue_session", chat_id, "Hi")
        assert isinstance(stream, TurnStream | AsyncTurnStream) and model.requests == []
        await _drain(stream)
    assert len(model.requests) == 1
    assert stream.session.last_output == "never sent"

    # The stream starts at the first write (here the claim of the row): a stream that
    # is never read has written nothing, and leaves no running status behind, closed
    # or not; even with "keep" there is nothing to keep.
    before = stored_rows(database, EarlyChat.__table__)
    with AGENT.override(model=model):
        for method, args in (("continue_session", (chat_id, "Hi")), ("start_session", ("Hi",))):
            kw = {"instruction_args": ARGS} if method == "start_session" else {}
            unread = await _stream(database, maker, method, *args, on_cancel="keep", **kw)
            await (unread.aclose() if database.is_async else _closed(unread))
            del unread
            assert stored_rows(database, EarlyChat.__table__) == before
            await _stream(database, maker, method, *args, **kw)  # dropped unclosed
            assert stored_rows(database, EarlyChat.__table__) == before
    assert len(model.requests) == 1


async def _closed(stream: TurnStream[Any, Any]) -> None:
    stream.close()


def _others() -> Any:
    return EarlyChat.owner == "someone else"


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_an_agent_stream_raises_its_early_errors_on_the_call(mode: str) -> None:
    model = TestModel(replies=[ToolCall("transfer", {"to": "bo"}, id="pay")])
    with AGENT.override(model=model):
        paused = AGENT.run("Pay", instruction_args=ARGS)
    model = TestModel(text="never sent", call_tools="none")
    calls: list[tuple[str, dict[str, Any]]] = [
        ("run", {"input": "x" * 100, "instruction_args": ARGS}),
        ("run", {"input": "Hi", "instruction_args": {"nom": 1}}),
        ("resume", {"result": paused, "approvals": {"nope": True}}),
        ("resume", {"result": "not a result", "approvals": {"pay": True}}),
    ]
    with AGENT.override(model=model):
        for method, kw in calls:
            with pytest.raises(InputValidationError):
                if mode == "sync":
                    getattr(AGENT, method)(stream=True, **kw)
                else:
                    await getattr(AGENT, f"a{method}")(stream=True, **kw)
        assert model.requests == []
