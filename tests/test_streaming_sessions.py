"""Stored sessions streamed: ``start_session``/``continue_session``/``resume_session``
with ``stream=True`` (and their async twins) on the whole database matrix.

Each test runs on the six drivers (``database``): the sync API for sqlite, psycopg and
pymysql, the awaited async twins for aiosqlite, asyncpg and aiomysql, through a
sessionmaker (no connection is checked out while tokens flow). A turn is stored once,
at the end; a stream stopped early or broken stores nothing (``on_cancel="discard"``)
or what was received, marked interrupted (``on_cancel="keep"``). Every failure path
checks the typed error and the stored row.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import (
    Agent,
    AgentSessionMixin,
    ApprovalRequired,
    AsyncTurnStream,
    AttemptDiscarded,
    InputValidationError,
    ModelCallError,
    ModelRequest,
    ModelResponse,
    SessionNotFoundError,
    StaleSessionError,
    StreamEnd,
    TextChunk,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallFinished,
    ToolCallStarted,
    TurnCompleted,
    TurnStream,
    Usage,
    sse,
)
from agent_session.llm import Model, StreamChunk
from agent_session.testing import TestModel
from support.databases import Database
from support.sessions import joined_rows

RAN: list[str] = []


def get_order(order_id: str) -> dict[str, Any]:
    """Look up an order by id."""
    RAN.append(order_id)
    return {"order_id": order_id, "status": "delivered"}


def transfer(to: str, amount: float) -> str:
    """Send money (needs a person's approval)."""
    RAN.append(f"transfer {to}")
    return f"sent {amount} to {to}"


AGENT = Agent(
    TestModel(text="a stored reply"),
    tools=[get_order, Tool(transfer, requires_approval=True)],
    model_retries=0,
)

HOOKED: list[str] = []


class Base(DeclarativeBase):
    pass


class StatusChat(AgentSessionMixin[str], Base):
    __tablename__ = "stream_status_chats"
    __agent__ = AGENT
    __status_attribute__ = "status"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(32), default="ann")


class PlainChat(AgentSessionMixin[str], Base):
    __tablename__ = "stream_plain_chats"
    __agent__ = AGENT
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(32), default="ann")


class HookedChat(AgentSessionMixin[str], Base):
    __tablename__ = "stream_hooked_chats"
    __agent__ = Agent(
        TestModel(text="overridden in the test"),
        tools=[get_order],
        after_model_call=lambda request, response: HOOKED.append("model"),
        on_tool_call=lambda result: HOOKED.append(f"tool {result.name}"),
        on_error=lambda exc: HOOKED.append(f"error {type(exc).__name__}"),
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


@pytest.fixture(autouse=True)
def clean() -> None:
    RAN.clear()
    HOOKED.clear()


@pytest.fixture(params=["status", "plain"])
def chat_cls(request: pytest.FixtureRequest) -> type[Any]:
    return StatusChat if request.param == "status" else PlainChat


# -- helpers ---------------------------------------------------------------------------


class Scripted(Model):
    """Streams scripted chunks (an exception in a script is raised there, a float is
    a pause in async code); counts the streams closed before their end."""

    name = "scripted"

    def __init__(self, *scripts: list[Any]) -> None:
        self.scripts = list(scripts)
        self.closed_early = 0
        self.chunks_given = 0

    def complete(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("a streamed turn must not call complete")

    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("a streamed turn must not call acomplete")

    def stream(self, request: ModelRequest) -> Generator[StreamChunk, None, None]:
        ended = False
        try:
            for item in self.scripts.pop(0):
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, float):
                    continue
                self.chunks_given += 1
                yield item
            ended = True
        finally:
            self.closed_early += not ended

    async def astream(self, request: ModelRequest) -> AsyncGenerator[StreamChunk, None]:
        ended = False
        try:
            for item in self.scripts.pop(0):
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, float):
                    await asyncio.sleep(item)
                    continue
                self.chunks_given += 1
                yield item
            ended = True
        finally:
            self.closed_early += not ended


def _reply(text: str, prompt: int = 10, completion: int = 5) -> list[Any]:
    usage = Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
    response = ModelResponse(text=text, usage=usage, model="m", finish_reason="stop")
    *words, last = text.split(" ")
    return [*(TextChunk(f"{word} ") for word in words), TextChunk(last), StreamEnd(response)]


def _calls_reply(*calls: ToolCall, text: str = "") -> list[Any]:
    usage = Usage(prompt_tokens=20, completion_tokens=8, total_tokens=28)
    response = ModelResponse(
        text=text, usage=usage, model="m", finish_reason="tool_calls", tool_calls=calls
    )
    return [*([TextChunk(text)] if text else []), StreamEnd(response)]


def _maker(database: Database) -> Any:
    engine = database.engine()
    return async_sessionmaker(engine) if database.is_async else sessionmaker(engine)


async def _call(database: Database, cls: type[Any], method: str, *args: Any, **kw: Any) -> Any:
    """``cls.<method>(maker, ...)``, or its awaited async twin on an async database."""
    maker = _maker(database)
    if database.is_async:
        return await getattr(cls, f"a{method}")(maker, *args, **kw)
    return getattr(cls, method)(maker, *args, **kw)


async def _collect(stream: Any, on_event: Any = None) -> list[Any]:
    events: list[Any] = []
    if isinstance(stream, TurnStream):
        with stream:
            for event in stream:
                events.append(event)
                if on_event is not None:
                    await on_event(event)
        return events
    async with stream:
        async for event in stream:
            events.append(event)
            if on_event is not None:
                await on_event(event)
    return events


async def _stop_after(stream: Any, count: int, how: str) -> None:
    """Read ``count`` events, then stop: ``break`` (leaving ``with``), ``close``, or an
    error raised in the ``with`` block."""
    seen = 0
    if isinstance(stream, TurnStream):
        if how == "close":
            for _event in stream:
                seen += 1
                if seen == count:
                    stream.close()
            return
        with stream:
            for _event in stream:
                seen += 1
                if seen == count:
                    if how == "raise":
                        raise LookupError("the consumer failed")
                    break
        return
    assert isinstance(stream, AsyncTurnStream)
    if how == "close":
        async for _event in stream:
            seen += 1
            if seen == count:
                await stream.aclose()
        return
    async with stream:
        async for _event in stream:
            seen += 1
            if seen == count:
                if how == "raise":
                    raise LookupError("the consumer failed")
                break


def _row(database: Database, cls: type[Any], key: Any = None) -> dict[str, Any]:
    rows = joined_rows(database, cls.__table__)
    [row] = [r for r in rows if key is None or r["id"] == key]
    return row


async def _started(database: Database, cls: type[Any], text: str = "Hello") -> Any:
    with AGENT.override(model=TestModel(replies=[text])):
        return await _call(database, cls, "start_session", "Hi")


def _pool_counter(database: Database, engine: Any) -> dict[str, int]:
    """Connections checked out of ``engine``'s pool right now (by pool events)."""
    count = {"out": 0}
    target = engine.sync_engine if database.is_async else engine
    sa.event.listen(target, "checkout", lambda *a: count.__setitem__("out", count["out"] + 1))
    sa.event.listen(target, "checkin", lambda *a: count.__setitem__("out", count["out"] - 1))
    return count


# -- stored once -----------------------------------------------------------------------


async def test_a_streamed_start_is_inserted_once_with_no_connection_while_tokens_flow(
    database: Database, chat_cls: type[Any]
) -> None:
    database.create_all(Base.metadata)
    count = _pool_counter(database, database.engine())
    checked_out: list[int] = []

    async def look(event: Any) -> None:
        if isinstance(event, TextDelta):
            checked_out.append(count["out"])

    with AGENT.override(model=Scripted(_reply("Hello there, Ann"))):
        stream = await _call(database, chat_cls, "start_session", "Hi", stream=True, owner="bo")
        assert joined_rows(database, chat_cls.__table__) == []  # nothing runs before reading
        events = await _collect(stream, look)

    assert checked_out == [0, 0, 0]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello there, Ann"
    assert isinstance(events[-1], TurnCompleted)
    chat = stream.session
    assert isinstance(chat, chat_cls) and stream.result is chat.last_result
    assert chat.last_output == "Hello there, Ann" and stream.usage.total_tokens == 15
    row = _row(database, chat_cls)
    assert row["id"] == chat.id and row["owner"] == "bo" and row["context_revision"] == 1
    assert [m["content"] for m in row["context"]["messages"]] == ["Hi", "Hello there, Ann"]
    assert row["context"]["usage"] == {"prompt_tokens": 10, "completion_tokens": 5}
    if chat_cls is StatusChat:
        assert row["status"] == "completed"


async def test_a_streamed_continue_is_stored_once(database: Database, chat_cls: type[Any]) -> None:
    database.create_all(Base.metadata)
    chat = await _started(database, chat_cls)
    before = _row(database, chat_cls)
    count = _pool_counter(database, database.engine())
    checked_out: list[int] = []

    async def look(event: Any) -> None:
        checked_out.append(count["out"])

    with AGENT.override(model=Scripted(_reply("It ships today"))):
        stream = await _call(database, chat_cls, "continue_session", chat.id, "Where?", stream=True)
        events = await _collect(stream, look)

    assert set(checked_out) == {0}
    assert [type(e) for e in events] == [TextDelta, TextDelta, TextDelta, TurnCompleted]
    assert events[-1].result is stream.result and stream.session.id == chat.id
    after = _row(database, chat_cls)
    claims = 1 if chat_cls is StatusChat else 0
    assert after["context_revision"] == before["context_revision"] + 1 + claims
    assert after["context"]["turns"] == 2
    assert [m["content"] for m in after["context"]["messages"][-2:]] == [
        "Where?",
        "It ships today",
    ]


async def test_a_streamed_tool_turn_pauses_and_a_streamed_resume_finishes_it(
    database: Database, chat_cls: type[Any]
) -> None:
    database.create_all(Base.metadata)
    look = ToolCall("get_order", {"order_id": "42"}, id="look")
    pay = ToolCall("transfer", {"to": "bob", "amount": 20}, id="pay")
    with AGENT.override(model=Scripted(_calls_reply(look, text="Checking."), _calls_reply(pay))):
        stream = await _call(database, chat_cls, "start_session", "pay bob", stream=True)
        events = await _collect(stream)

    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "TextDelta",
        "ToolCallStarted",
        "ToolCallFinished",
        "ApprovalRequired",
        "TurnCompleted",
    ]
    started, finished, approval = events[1], events[2], events[3]
    assert isinstance(started, ToolCallStarted) and started.tool_call_id == "look"
    assert isinstance(finished, ToolCallFinished) and finished.status == "ok"
    assert isinstance(approval, ApprovalRequired)
    assert [p.tool_call_id for p in approval.pending] == ["pay"]
    chat = stream.session
    assert [p.tool_call_id for p in chat.pending_approvals] == ["pay"]
    assert RAN == ["42"]
    paused = _row(database, chat_cls)
    assert paused["context"]["pending"]["approvals"][0]["tool_call_id"] == "pay"
    if chat_cls is StatusChat:
        assert paused["status"] == "awaiting_approval"

    with AGENT.override(model=Scripted(_reply("Sent."))):
        stream = await _call(
            database, chat_cls, "resume_session", chat.id, approvals={"pay": True}, stream=True
        )
        events = await _collect(stream)

    assert [type(e).__name__ for e in events] == [
        "ToolCallStarted",
        "ToolCallFinished",
        "TextDelta",
        "TurnCompleted",
    ]
    assert RAN == ["42", "transfer bob"]
    done = _row(database, chat_cls)
    assert "pending" not in done["context"] and done["context"]["turns"] == 1
    roles = [m["role"] for m in done["context"]["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert stream.session.last_output == "Sent."
    if chat_cls is StatusChat:
        assert done["status"] == "completed"


async def test_hooks_see_a_streamed_turn(database: Database) -> None:
    database.create_all(Base.metadata)
    script = TestModel(replies=[ToolCall("get_order", {"order_id": "7"}), "It was delivered."])
    with HookedChat.__agent__.override(model=script):
        stream = await _call(database, HookedChat, "start_session", "where is 7?", stream=True)
        events = await _collect(stream)
    assert isinstance(events[-1], TurnCompleted)
    assert HOOKED == ["model", "tool get_order", "model"]
    assert stream.session.last_output == "It was delivered."


async def test_sse_of_a_stored_session_ends_with_its_key(database: Database) -> None:
    database.create_all(Base.metadata)
    with AGENT.override(model=Scripted(_reply("Hello there"))):
        stream = await _call(database, StatusChat, "start_session", "Hi", stream=True)
        if isinstance(stream, TurnStream):
            frames = list(sse.encode(stream))
        else:
            frames = [frame async for frame in sse.aencode(stream)]
    key = _row(database, StatusChat)["id"]
    assert frames[0] == 'event: text_delta\ndata: {"text":"Hello "}\n\n'
    assert frames[-2].startswith("event: turn_completed\n")
    assert frames[-1] == f'event: completed\ndata: {{"session_key":{key}}}\n\n'


async def test_sse_of_a_broken_session_stream_ends_with_an_error_frame(
    database: Database,
) -> None:
    database.create_all(Base.metadata)
    chat = await _started(database, StatusChat)
    before = _row(database, StatusChat)
    broken = ModelCallError("the connection dropped", model="m", retryable=False)
    with AGENT.override(model=Scripted([TextChunk("It "), broken])):
        stream = await _call(database, StatusChat, "continue_session", chat.id, "Go", stream=True)
        if isinstance(stream, TurnStream):
            frames = list(sse.encode(stream))
        else:
            frames = [frame async for frame in sse.aencode(stream)]
    assert frames[0] == 'event: text_delta\ndata: {"text":"It "}\n\n'
    assert frames[-1].startswith('event: error\ndata: {"type":"ModelCallError","message":')
    assert "completed" not in "".join(frames)
    after = _row(database, StatusChat)
    assert after["context"] == before["context"] and after["status"] == "failed"


# -- stopped early, broken, raced ----------------------------------------------------


@pytest.mark.parametrize("how", ["break", "close", "raise"])
async def test_a_stream_stopped_early_stores_nothing(
    database: Database, chat_cls: type[Any], how: str
) -> None:
    database.create_all(Base.metadata)
    chat = await _started(database, chat_cls)
    before = _row(database, chat_cls)
    model = Scripted(_reply("one two three four five six"))

    with AGENT.override(model=model):
        stream = await _call(database, chat_cls, "continue_session", chat.id, "Go", stream=True)
        if how == "raise":
            with pytest.raises(LookupError, match="the consumer failed"):
                await _stop_after(stream, 2, how)
        else:
            await _stop_after(stream, 2, how)

    assert model.closed_early == 1 and model.chunks_given == 2  # closed at once
    assert stream.session is None and stream.result is None
    after = _row(database, chat_cls)
    assert after["context"] == before["context"]
    if chat_cls is StatusChat:
        assert after["status"] == "failed"
        assert after["context_revision"] == before["context_revision"] + 2  # claim, status
    else:
        assert after["context_revision"] == before["context_revision"]


async def test_a_stopped_streamed_start_inserts_nothing(
    database: Database, chat_cls: type[Any]
) -> None:
    database.create_all(Base.metadata)
    model = Scripted(_reply("one two three"))
    with AGENT.override(model=model):
        stream = await _call(database, chat_cls, "start_session", "Hi", stream=True)
        await _stop_after(stream, 1, "break")
    assert model.closed_early == 1
    assert joined_rows(database, chat_cls.__table__) == []


@pytest.mark.parametrize("on_cancel", ["discard", "keep"])
async def test_a_cancelled_task_stores_nothing_or_what_was_received(
    async_database: Database, on_cancel: str
) -> None:
    async_database.create_all(Base.metadata)
    chat = await _started(async_database, StatusChat)
    before = _row(async_database, StatusChat)
    model = Scripted([TextChunk("It "), 30.0, *_reply("never")])
    first = asyncio.Event()
    with AGENT.override(model=model):
        stream = await StatusChat.acontinue_session(
            _maker(async_database), chat.id, "Go", stream=True, on_cancel=on_cancel
        )

    async def consume() -> None:
        async with stream:
            async for _event in stream:
                first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert model.closed_early == 1
    after = _row(async_database, StatusChat)
    if on_cancel == "discard":
        assert after["context"] == before["context"] and after["status"] == "failed"
    else:
        assert after["status"] == "completed"
        last = after["context"]["messages"][-1]
        assert (last["content"], last["meta"]["interrupted"]) == ("It ", True)


async def test_a_stream_broken_mid_way_stores_nothing(
    database: Database, chat_cls: type[Any]
) -> None:
    database.create_all(Base.metadata)
    chat = await _started(database, chat_cls)
    before = _row(database, chat_cls)
    broken = ModelCallError("the connection dropped", model="m", retryable=False)
    with AGENT.override(model=Scripted([TextChunk("It "), broken])):
        stream = await _call(database, chat_cls, "continue_session", chat.id, "Go", stream=True)
        with pytest.raises(ModelCallError, match="the connection dropped") as caught:
            await _collect(stream)

    assert caught.value.usage == Usage()  # type: ignore[attr-defined]
    assert stream.usage == Usage() and stream.session is None
    after = _row(database, chat_cls)
    assert after["context"] == before["context"]
    if chat_cls is StatusChat:
        assert after["status"] == "failed"


async def test_a_lost_race_reruns_and_announces_the_discarded_attempt(database: Database) -> None:
    database.create_all(Base.metadata)
    chat = await _started(database, PlainChat)
    bumped: list[bool] = []

    async def other_writer(event: Any) -> None:
        if isinstance(event, TextDelta) and not bumped:
            bumped.append(True)
            with database.sync_engine().begin() as conn:
                table = PlainChat.__table__
                conn.execute(table.update().values(context_revision=table.c.context_revision + 1))

    model = Scripted(_reply("first try", 10, 2), _reply("second try", 12, 2))
    with AGENT.override(model=model):
        stream = await _call(
            database, PlainChat, "continue_session", chat.id, "Go", stream=True, conflict_retries=1
        )
        events = await _collect(stream, other_writer)

    assert AttemptDiscarded("rerun", 1) in events
    assert isinstance(events[-1], TurnCompleted) and events[-1].result.text == "second try"
    row = _row(database, PlainChat)
    assert row["context_revision"] == 3  # the insert, the other writer, this turn once
    assert [m["content"] for m in row["context"]["messages"]][-2:] == ["Go", "second try"]
    assert row["context"]["turns"] == 2


async def test_a_lost_race_without_retries_is_stale_and_stores_nothing(
    database: Database,
) -> None:
    database.create_all(Base.metadata)
    chat = await _started(database, PlainChat)
    before = _row(database, PlainChat)

    async def other_writer(event: Any) -> None:
        if isinstance(event, TurnCompleted):
            raise AssertionError("the turn must not complete")
        if isinstance(event, TextDelta) and event.text == "first ":
            with database.sync_engine().begin() as conn:
                conn.execute(PlainChat.__table__.update().values(context_revision=9))

    with AGENT.override(model=Scripted(_reply("first try"))):
        stream = await _call(database, PlainChat, "continue_session", chat.id, "Go", stream=True)
        with pytest.raises(StaleSessionError):
            await _collect(stream, other_writer)
    after = _row(database, PlainChat)
    assert after["context"] == before["context"] and after["context_revision"] == 9


async def test_where_applies_to_a_streamed_continue(database: Database) -> None:
    database.create_all(Base.metadata)
    chat = await _started(database, StatusChat)
    before = _row(database, StatusChat)
    model = Scripted(_reply("yours"))
    with AGENT.override(model=model):
        with pytest.raises(SessionNotFoundError):  # raised by the call, before any stream
            await _call(
                database,
                StatusChat,
                "continue_session",
                chat.id,
                "Go",
                stream=True,
                where=StatusChat.owner == "someone else",
            )
        assert _row(database, StatusChat) == before
        assert model.scripts  # the model was never asked

        stream = await _call(
            database,
            StatusChat,
            "continue_session",
            chat.id,
            "Go",
            stream=True,
            where=StatusChat.owner == "ann",
        )
        await _collect(stream)
    assert _row(database, StatusChat)["context"]["turns"] == 2


# -- on_cancel="keep" ------------------------------------------------------------------


async def test_keep_stores_what_was_received_marked_interrupted(
    database: Database, chat_cls: type[Any]
) -> None:
    database.create_all(Base.metadata)
    chat = await _started(database, chat_cls)
    before = _row(database, chat_cls)
    model = Scripted(_reply("one two three four"))
    with AGENT.override(model=model):
        stream = await _call(
            database, chat_cls, "continue_session", chat.id, "Go", stream=True, on_cancel="keep"
        )
        await _stop_after(stream, 2, "break")

    assert model.closed_early == 1
    after = _row(database, chat_cls)
    last = after["context"]["messages"][-1]
    assert last["role"] == "assistant" and last["content"] == "one two "
    assert last["meta"]["interrupted"] is True
    assert after["context"]["turns"] == before["context"]["turns"] + 1
    assert stream.result is not None and stream.result.interrupted
    assert stream.session.last_output is None
    if chat_cls is StatusChat:
        assert after["status"] == "completed"
    # The session goes on, the interrupted reply in its history.
    with AGENT.override(model=TestModel(replies=["Go on"])):
        chat = await _call(database, chat_cls, "continue_session", chat.id, "More")
    sent = [m["content"] for m in chat.last_result.messages]
    assert sent[-3:] == ["one two ", "More", "Go on"]
    assert chat.last_output == "Go on"


async def test_keep_counts_the_usage_and_keeps_only_complete_tool_steps(
    database: Database, chat_cls: type[Any]
) -> None:
    database.create_all(Base.metadata)
    look = ToolCall("get_order", {"order_id": "42"}, id="look")
    model = Scripted(_calls_reply(look), _reply("Order 42 was delivered"))
    with AGENT.override(model=model):
        stream = await _call(
            database, chat_cls, "start_session", "where is 42?", stream=True, on_cancel="keep"
        )
        await _stop_after(stream, 4, "break")  # started, finished, two deltas

    row = _row(database, chat_cls)
    messages = row["context"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[-1]["content"] == "Order 42 " and messages[-1]["meta"]["interrupted"]
    # The usage of the calls that completed (the tool step's) is counted.
    assert row["context"]["usage"] == {"prompt_tokens": 20, "completion_tokens": 8}

    # Stopped while the calls of a reply are announced: that step has no results yet
    # and is left out; the text of its reply is kept.
    model = Scripted(_calls_reply(look, text="Checking "))
    with AGENT.override(model=model):
        stream = await _call(
            database, chat_cls, "start_session", "where?", stream=True, on_cancel="keep"
        )
        await _stop_after(stream, 2, "break")  # the text, then ToolCallStarted
    second = [r for r in joined_rows(database, chat_cls.__table__) if r["id"] != row["id"]]
    [stored] = second
    roles = [(m["role"], m.get("content")) for m in stored["context"]["messages"]]
    assert roles == [("user", "where?"), ("assistant", "Checking ")]
    assert RAN == ["42"]


async def test_keep_needs_a_stream(database: Database) -> None:
    database.create_all(Base.metadata)
    with pytest.raises(InputValidationError, match="on_cancel"):
        await _call(database, StatusChat, "start_session", "Hi", on_cancel="keep")
    with pytest.raises(InputValidationError, match="on_cancel"):
        await _call(database, StatusChat, "start_session", "Hi", stream=True, on_cancel="kept")
    assert joined_rows(database, StatusChat.__table__) == []


async def test_keep_still_discards_a_broken_stream(database: Database) -> None:
    database.create_all(Base.metadata)
    chat = await _started(database, StatusChat)
    before = _row(database, StatusChat)
    broken = ModelCallError("the connection dropped", model="m", retryable=False)
    with AGENT.override(model=Scripted([TextChunk("It "), broken])):
        stream = await _call(
            database, StatusChat, "continue_session", chat.id, "Go", stream=True, on_cancel="keep"
        )
        with pytest.raises(ModelCallError):
            await _collect(stream)
    after = _row(database, StatusChat)
    assert after["context"] == before["context"] and after["status"] == "failed"


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_an_agent_run_and_its_resume_stream(mode: str) -> None:
    pay = ToolCall("transfer", {"to": "bob", "amount": 20}, id="pay")
    with AGENT.override(model=TestModel(replies=[pay, "Sent."])):
        if mode == "sync":
            with AGENT.run("pay bob", stream=True) as stream:
                events = list(stream)
            assert stream.result is not None
            with AGENT.resume(stream.result, approvals={"pay": True}, stream=True) as resumed:
                more = list(resumed)
        else:
            async with await AGENT.arun("pay bob", stream=True) as astream:
                events = [event async for event in astream]
            assert astream.result is not None
            paused = astream.result
            async with await AGENT.aresume(paused, approvals={"pay": True}, stream=True) as ar:
                more = [event async for event in ar]
    assert [type(e).__name__ for e in events][-2:] == ["ApprovalRequired", "TurnCompleted"]
    assert [type(e).__name__ for e in more] == [
        "ToolCallStarted",
        "ToolCallFinished",
        "TextDelta",
        "TurnCompleted",
    ]
    assert more[-1].result.output == "Sent." and RAN == ["transfer bob"]
