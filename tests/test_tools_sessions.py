"""Tool turns and approvals in stored sessions, on the whole database matrix.

Each test runs on the six drivers (``database``): the sync API for sqlite, psycopg
and pymysql, the async twins for aiosqlite, asyncpg and aiomysql. Tools run in order
in sync code and concurrently in async code. Every failure path checks the typed
error and that the stored row did not change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import (
    Agent,
    AgentSessionMixin,
    ApprovalPendingError,
    Denied,
    InputValidationError,
    ModelCallError,
    SessionNotFoundError,
    StaleSessionError,
    Tool,
    ToolCall,
    ToolContext,
    ToolExecutionError,
    ToolLoopError,
)
from agent_session.testing import FunctionModel, TestModel
from support.databases import Database
from support.invariants import check_document
from support.sessions import Api, joined_rows

RAN: list[tuple[str, Any]] = []
"""Every tool run of the test: (tool, detail)."""
DURING: list[Callable[[ToolContext[Any]], Awaitable[None]]] = []
"""Hooks ``transfer`` awaits while it runs (a second resume, a look at the row)."""


def get_order(ctx: ToolContext[Any], order_id: str) -> dict[str, Any]:
    """Look up an order by id."""
    RAN.append(("get_order", (order_id, ctx.session_key, ctx.deps)))
    return {"order_id": order_id, "status": "delivered"}


async def transfer(ctx: ToolContext[Any], to: str, amount: float) -> str:
    """Send money (needs a person's approval)."""
    for hook in DURING:
        await hook(ctx)
    RAN.append(("transfer", (to, amount, ctx.tool_call_id)))
    return f"sent {amount} to {to}"


def explode() -> None:
    """Always fails."""
    raise RuntimeError("the payment gateway is down")


AGENT = Agent(
    TestModel(),
    instruction="You help with orders.",
    tools=[get_order, Tool(transfer, requires_approval=True), Tool(explode, on_error="raise")],
    max_tool_steps=4,
    model_retries=0,
)


class Base(DeclarativeBase):
    pass


class StatusChat(AgentSessionMixin[str], Base):
    __tablename__ = "tool_status_chats"
    __agent__ = AGENT
    __status_attribute__ = "status"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(32), default="ann")


class PlainChat(AgentSessionMixin[str], Base):
    __tablename__ = "tool_plain_chats"
    __agent__ = AGENT
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(32), default="ann")


@pytest.fixture(autouse=True)
def clean() -> None:
    RAN.clear()
    DURING.clear()


class InlineChat(AgentSessionMixin[str], Base):
    """The single-column layout: every row kept in the context column."""

    __tablename__ = "tool_inline_chats"
    __agent__ = AGENT
    __history_table__ = None
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(32), default="ann")


@pytest.fixture(params=["status", "plain", "inline"])
def chat_cls(request: pytest.FixtureRequest) -> type[Any]:
    return {"status": StatusChat, "plain": PlainChat, "inline": InlineChat}[request.param]


def _row(database: Database, cls: type[Any], key: Any) -> dict[str, Any]:
    [row] = [r for r in joined_rows(database, cls.__table__) if r["id"] == key]
    return row


def _usage_of_messages(document: dict[str, Any]) -> dict[str, int]:
    usages = [m["meta"]["usage"] for m in document["messages"] if "usage" in m.get("meta", {})]
    return {key: sum(u[key] for u in usages) for key in ("prompt_tokens", "completion_tokens")}


def _script(*replies: Any) -> TestModel:
    return TestModel(replies=list(replies))


PAY = ToolCall("transfer", {"to": "bob", "amount": 20}, id="pay")
LOOK = ToolCall("get_order", {"order_id": "42"}, id="look")


async def _paused(api: Api, chat_cls: type[Any]) -> Any:
    """A session whose first turn looked an order up and waits to pay."""
    with AGENT.override(model=_script([LOOK, PAY])):
        return await api.start(None, "pay bob 20 for order 42", deps="D")


# -- tool turns ----------------------------------------------------------------------------


async def test_tool_turns_are_stored_in_chat_form_and_continue(
    database: Database, chat_cls: type[Any]
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, chat_cls, maker=True)
    first = _script(
        [ToolCall("get_order", {"order_id": "1"}), ToolCall("get_order", '{"order_id": "2"')],
        "Order 1 is delivered.",
    )
    with AGENT.override(model=first):
        chat = await api.start(None, "where are 1 and 2?", deps={"user": "ann"})
    second = _script(ToolCall("get_order", {"order_id": "3"}, id="c3"), "And 3 too.")
    with AGENT.override(model=second):
        chat = await api.cont(None, chat.id, "and 3?", deps="D-secret-7f3")

    row = _row(database, chat_cls, chat.id)
    document = row["context"]
    roles = [m["role"] for m in document["messages"]]
    first_turn = ["user", "assistant", "tool", "tool", "assistant"]
    assert roles == ["system", *first_turn, "user", "assistant", "tool", "assistant"]
    assert document["version"] == 4 and document["turns"] == 2 and "pending" not in document
    cut = document["messages"][2]
    assert cut["tool_calls"][1]["function"]["arguments"] == "{}"
    assert list(cut["meta"]["raw_arguments"].values()) == ['{"order_id": "2"']
    # The next request replayed the history with valid arguments.
    replayed = second.requests[0].messages
    assert replayed[2]["tool_calls"][1]["function"]["arguments"] == "{}"
    # Usage: the session's total is the sum of every model call (four of them).
    assert document["usage"] == _usage_of_messages(document)
    assert sum(1 for m in document["messages"] if "usage" in m.get("meta", {})) == 4
    assert [r[1] for r in RAN] == [("1", None, {"user": "ann"}), ("3", chat.id, "D-secret-7f3")]
    assert "D-secret-7f3" not in str(row)  # deps reach the tools, never the row
    if chat_cls is StatusChat:
        assert row["status"] == "completed"
    assert chat.last_output == "And 3 too."
    assert [c.tool_call_id for c in chat.last_result.tool_calls] == ["c3"]
    context = await api.context(None, chat.id)
    assert context.pending is None and len(context.messages) == 10
    check_document(document, where="stored")


async def test_a_tool_loop_stores_nothing(database: Database, chat_cls: type[Any]) -> None:
    database.create_all(Base.metadata)
    api = Api(database, chat_cls, maker=True)
    looping = FunctionModel(lambda messages: ToolCall("get_order", {"order_id": "x"}))
    with AGENT.override(model=looping), pytest.raises(ToolLoopError):
        await api.start(None, "loop")
    assert joined_rows(database, chat_cls.__table__) == []

    with AGENT.override(model=_script("hello")):
        chat = await api.start(None, "hi")
    before = _row(database, chat_cls, chat.id)
    with AGENT.override(model=looping), pytest.raises(ToolLoopError, match="max_tool_steps=4"):
        await api.cont(None, chat.id, "loop")
    after = _row(database, chat_cls, chat.id)
    assert after["context"] == before["context"]
    if chat_cls is StatusChat:
        assert after["status"] == "failed"
    assert len(looping.requests) == 8  # four per turn


async def test_a_raising_tool_fails_the_turn_and_stores_nothing(
    database: Database, chat_cls: type[Any]
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, chat_cls, maker=True)
    at_once = _script(ToolCall("explode", {}))
    with AGENT.override(model=at_once), pytest.raises(ToolExecutionError):
        await api.start(None, "explode at once")
    assert joined_rows(database, chat_cls.__table__) == []
    with AGENT.override(model=_script("hello")):
        chat = await api.start(None, "hi")
    before = _row(database, chat_cls, chat.id)
    explodes = _script(ToolCall("explode", {}), "never")
    with AGENT.override(model=explodes), pytest.raises(ToolExecutionError, match="down") as info:
        await api.cont(None, chat.id, "explode")
    assert isinstance(info.value.__cause__, RuntimeError)
    after = _row(database, chat_cls, chat.id)
    assert after["context"] == before["context"]
    if chat_cls is StatusChat:
        assert after["status"] == "failed"
    else:
        assert after == before


# -- approvals ------------------------------------------------------------------------------


async def test_a_paused_turn_is_stored_apart_and_resumed_by_a_fresh_engine(
    database: Database, chat_cls: type[Any]
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, chat_cls, maker=True)
    chat = await _paused(api, chat_cls)

    assert chat.last_output is None
    assert [(p.tool_call_id, p.tool_name, p.arguments) for p in chat.pending_approvals] == [
        ("pay", "transfer", {"to": "bob", "amount": 20.0})
    ]
    assert RAN == [("get_order", ("42", None, "D"))]
    row = _row(database, chat_cls, chat.id)
    document = row["context"]
    assert [m["role"] for m in document["messages"]] == ["system"]
    assert document["turns"] == 0
    pending = document["pending"]
    assert [m["role"] for m in pending["messages"]] == ["user", "assistant", "tool"]
    assert pending["approvals"][0]["tool_call_id"] == "pay" and pending["steps"] == 1
    if chat_cls is StatusChat:
        assert row["status"] == "awaiting_approval"

    # The process that paused is gone: another engine, another sessionmaker.
    other = Api(database, chat_cls, maker=True, pool_pre_ping=True)
    loaded = await other.context(None, chat.id)
    assert [p.tool_call_id for p in loaded.pending_approvals] == ["pay"]
    final = _script("Sent.")
    with AGENT.override(model=final):
        done = await other.resume(None, chat.id, approvals={"pay": True}, deps="E")

    assert done.last_output == "Sent." and done.pending_approvals == []
    assert RAN[1:] == [("transfer", ("bob", 20.0, "pay"))]
    row = _row(database, chat_cls, chat.id)
    document = row["context"]
    assert "pending" not in document and document["turns"] == 1
    assert [m["role"] for m in document["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    assert [m["tool_call_id"] for m in document["messages"][3:5]] == ["look", "pay"]
    assert document["usage"] == _usage_of_messages(document)
    if chat_cls is StatusChat:
        assert row["status"] == "completed"
    sent = final.requests[0].messages
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "tool"]


async def test_failure_paths_of_a_paused_session_change_nothing(
    database: Database, chat_cls: type[Any]
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, chat_cls, maker=True)
    chat = await _paused(api, chat_cls)
    before = _row(database, chat_cls, chat.id)
    untouched = _script("never")
    with AGENT.override(model=untouched):
        with pytest.raises(ApprovalPendingError, match="resume") as info:
            await api.cont(None, chat.id, "hello?")
        assert [p.tool_call_id for p in info.value.pending] == ["pay"]
        for approvals, match in (
            ({}, "missing decisions"),
            ({"pay": True, "nope": False}, "unknown"),
            ({"pay": 1}, "True, False or Denied"),
        ):
            with pytest.raises(InputValidationError, match=match):
                await api.resume(None, chat.id, approvals=approvals)
        with pytest.raises(SessionNotFoundError):
            await api.resume(
                None, chat.id, approvals={"pay": True}, where=chat_cls.owner == "someone else"
            )
    assert untouched.requests == [] and len(RAN) == 1
    assert _row(database, chat_cls, chat.id) == before


async def test_resuming_twice_and_resuming_nothing(database: Database, chat_cls: type[Any]) -> None:
    database.create_all(Base.metadata)
    api = Api(database, chat_cls, maker=True)
    chat = await _paused(api, chat_cls)
    with AGENT.override(model=_script("Sent.")):
        await api.resume(None, chat.id, approvals={"pay": Denied("not today")})
    done = _row(database, chat_cls, chat.id)
    assert "not today" in done["context"]["messages"][4]["content"]
    assert [r[0] for r in RAN] == ["get_order"]

    with pytest.raises(StaleSessionError, match="already decided"):
        await api.resume(None, chat.id, approvals={"pay": True})
    with pytest.raises(InputValidationError, match="no pending approvals"):
        await api.resume(None, chat.id, approvals={"other": True})
    assert _row(database, chat_cls, chat.id) == done


async def test_two_resumes_of_one_pause_run_the_tool_once(
    database: Database, chat_cls: type[Any]
) -> None:
    """The second resume starts while the first runs the approved tool: it finds the
    pause claimed and gets ``StaleSessionError`` without running anything."""
    database.create_all(Base.metadata)
    api = Api(database, chat_cls, maker=True)
    rival = Api(database, chat_cls, maker=True, pool_pre_ping=True)
    chat = await _paused(api, chat_cls)
    errors: list[Exception] = []

    async def second_resume(ctx: ToolContext[Any]) -> None:
        DURING.clear()
        if chat_cls is StatusChat:
            errors.append(_row(database, chat_cls, chat.id)["status"])  # type: ignore[arg-type]
        try:
            await rival.resume(None, chat.id, approvals={"pay": True})
        except StaleSessionError as exc:
            errors.append(exc)

    DURING.append(second_resume)
    with AGENT.override(model=_script("Sent.")):
        done = await api.resume(None, chat.id, approvals={"pay": True})

    assert done.last_output == "Sent."
    assert [r[0] for r in RAN].count("transfer") == 1
    stale = [e for e in errors if isinstance(e, StaleSessionError)]
    assert len(stale) == 1 and "claimed this pause" in str(stale[0])
    if chat_cls is StatusChat:
        assert errors[0] == "running"
        assert _row(database, chat_cls, chat.id)["status"] == "completed"


async def test_a_failed_resume_puts_the_pause_back(database: Database, chat_cls: type[Any]) -> None:
    database.create_all(Base.metadata)
    api = Api(database, chat_cls, maker=True)
    chat = await _paused(api, chat_cls)
    before = _row(database, chat_cls, chat.id)

    def down(messages: list[dict[str, Any]]) -> Any:
        raise ModelCallError("HTTP 401", model="m", status_code=401)

    with AGENT.override(model=FunctionModel(down)), pytest.raises(ModelCallError):
        await api.resume(None, chat.id, approvals={"pay": True})
    after = _row(database, chat_cls, chat.id)
    assert after["context"] == before["context"]  # unclaimed, still pending
    if chat_cls is StatusChat:
        assert after["status"] == "awaiting_approval"
    # The approved tool ran before the model failed; a later resume runs it again
    # (ctx.tool_call_id is the same, for idempotency).
    with AGENT.override(model=_script("Sent.")):
        await api.resume(None, chat.id, approvals={"pay": True})
    transfers = [r[1] for r in RAN if r[0] == "transfer"]
    assert transfers == [("bob", 20.0, "pay"), ("bob", 20.0, "pay")]


async def test_a_caller_owned_session_pauses_and_resumes(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, StatusChat)
    async with api.session() as db:
        with AGENT.override(model=_script(PAY)):
            chat = await api.start(db, "pay bob", owner="cat")
        await api.commit(db)
        assert chat.status == "awaiting_approval"
        with AGENT.override(model=_script([LOOK], "Done.")):
            chat = await api.resume(
                db, chat, approvals={"pay": True}, where=StatusChat.owner == "cat"
            )
        await api.commit(db)
    row = _row(database, StatusChat, chat.id)
    assert row["status"] == "completed" and row["context"]["turns"] == 1
    assert [r[0] for r in RAN] == ["transfer", "get_order"]


async def test_two_resumes_at_once_one_wins(database: Database, chat_cls: type[Any]) -> None:
    """Two workers resume the same pause at the same moment (tasks, or threads for a
    sync driver): whatever the interleaving, one finishes the turn and the other gets
    ``StaleSessionError``; the approved tool ran once."""
    database.create_all(Base.metadata)
    api = Api(database, chat_cls, maker=True)
    chat = await _paused(api, chat_cls)

    async def resume() -> Any:
        if api.is_async:
            return await chat_cls.aresume_session(api.maker, chat.id, approvals={"pay": True})
        return await asyncio.to_thread(
            chat_cls.resume_session, api.maker, chat.id, approvals={"pay": True}
        )

    with AGENT.override(model=TestModel(text="Sent.")):
        outcomes = await asyncio.gather(resume(), resume(), return_exceptions=True)

    stale = [o for o in outcomes if isinstance(o, StaleSessionError)]
    won = [o for o in outcomes if isinstance(o, chat_cls)]
    assert len(stale) == 1 and len(won) == 1, outcomes
    assert [r[0] for r in RAN].count("transfer") == 1
    row = _row(database, chat_cls, chat.id)
    assert "pending" not in row["context"] and row["context"]["turns"] == 1


async def test_a_claim_left_by_a_crashed_resume_is_taken_over_after_the_running_timeout(
    database: Database, chat_cls: type[Any]
) -> None:
    """A worker that claimed the pause and died leaves ``claimed_at`` behind: other
    resumes get ``StaleSessionError`` (after waiting ``busy_timeout``) until
    ``__running_timeout__`` has passed, then one takes it over."""
    database.create_all(Base.metadata)
    api = Api(database, chat_cls, maker=True)
    chat = await _paused(api, chat_cls)
    document = _row(database, chat_cls, chat.id)["context"]

    def claim(ago: timedelta) -> dict[str, Any]:
        at = (datetime.now(UTC) - ago).isoformat().replace("+00:00", "Z")
        claimed = {**document, "pending": {**document["pending"], "claimed_at": at}}
        values: dict[str, Any] = {"context": claimed}
        if chat_cls is StatusChat:
            values.update(status="running", status_changed_at=datetime.now(UTC) - ago)
        with database.sync_engine().begin() as conn:
            table = chat_cls.__table__
            conn.execute(sa.update(table).where(table.c.id == chat.id).values(**values))
        return _row(database, chat_cls, chat.id)

    before = claim(timedelta(seconds=1))
    with AGENT.override(model=_script("never")):
        with pytest.raises(StaleSessionError, match="claimed this pause"):
            await api.resume(None, chat.id, approvals={"pay": True})
        with pytest.raises(StaleSessionError, match="claimed this pause"):
            await api.resume(None, chat.id, approvals={"pay": True}, busy_timeout=0.05)
    assert _row(database, chat_cls, chat.id) == before
    assert [r[0] for r in RAN] == ["get_order"]

    claim(timedelta(minutes=11))  # older than __running_timeout__ (10 minutes)
    with AGENT.override(model=_script("Sent.")):
        done = await api.resume(None, chat.id, approvals={"pay": True})
    assert done.last_output == "Sent." and [r[0] for r in RAN] == ["get_order", "transfer"]
