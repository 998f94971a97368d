"""Long conversations in stored sessions: windows, compaction and budgets, on the matrix.

Each test runs on the six drivers (``database``): the sync API for sqlite, psycopg and
pymysql, the async twins for aiosqlite, asyncpg and aiomysql. Token counts come from a
deterministic counter (characters of the JSON form / 4), so every window and threshold
is reproducible; the model doubles refuse a request over their context size the way a
server does (``ContextWindowError``). Every failure path checks the typed error and
that the stored row did not change.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import (
    Agent,
    AgentSessionMixin,
    BudgetExceededError,
    ConfigurationError,
    ContextWindowError,
    LastTurns,
    ModelCallError,
    StaleSessionError,
    Summarize,
    TokenBudget,
    Tool,
    ToolCall,
    Usage,
)
from agent_session.context import chat_messages, load_context
from agent_session.history import DEFAULT_SUMMARY_INSTRUCTION, SUMMARY_HEADER, check_request
from agent_session.llm import ModelRequest, import_litellm
from agent_session.testing import FunctionModel, TestModel
from support.databases import Database, open_database
from support.invariants import check_document
from support.sessions import Api, joined_rows

IDS = itertools.count(1)


def count(messages: list[dict[str, Any]]) -> int:
    """A deterministic token counter: a token per 4 characters of the JSON form."""
    return len(json.dumps(messages, ensure_ascii=False)) // 4 + 1


def get_order(order_id: str) -> dict[str, str]:
    """Look up an order by id."""
    return {"order_id": order_id, "status": "delivered", "note": "left at the front door"}


def is_summary_request(request: ModelRequest) -> bool:
    return request.messages[0].get("content") == DEFAULT_SUMMARY_INSTRUCTION


class Shop:
    """A model double: a tool call for each new user message, then a reply; a short
    summary for a summary request; ``ContextWindowError`` over ``context`` tokens."""

    def __init__(self, context: int = 1_000_000, *, tools: bool = True) -> None:
        self.context = context
        self.tools = tools
        self.largest = 0
        self.summaries = 0
        self.fail_summaries = 0
        self.during_summary: Any = None

    def __call__(self, messages: list[dict[str, Any]], request: ModelRequest) -> Any:
        size = count(request.messages)
        self.largest = max(self.largest, size)
        if size > self.context:
            raise ContextWindowError(
                f"the request exceeds the available context size ({size} > {self.context})",
                model="shop",
                status_code=400,
            )
        if is_summary_request(request):
            self.summaries += 1
            if self.during_summary is not None:
                self.during_summary()
            if self.fail_summaries:
                self.fail_summaries -= 1
                raise ModelCallError("summary model is down", model="shop", status_code=400)
            return f"Summary {self.summaries}: the user asked about several orders; all delivered."
        assert check_request(request.messages) is None, check_request(request.messages)
        last = messages[-1]
        if self.tools and last["role"] == "user":
            return ToolCall("get_order", {"order_id": str(next(IDS))}, id=f"call_{next(IDS)}")
        return "The order was delivered and left at the front door. " + "Anything else? " * 3


def _agent(**kw: Any) -> Agent[str]:
    return Agent(
        TestModel(),
        instruction="You help with orders.",
        tools=[get_order],
        model_retries=0,
        **kw,
    )


class Base(DeclarativeBase):
    pass


class WindowChat(AgentSessionMixin[str], Base):
    __tablename__ = "long_window_chats"
    __agent__ = _agent(history=TokenBudget(600, reserve_output=100, counter=count))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


class CompactChat(AgentSessionMixin[str], Base):
    __tablename__ = "long_compact_chats"
    __agent__ = _agent(compaction=Summarize(when_tokens_over=700, keep_last_turns=1, counter=count))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


class BudgetChat(AgentSessionMixin[str], Base):
    __tablename__ = "long_budget_chats"
    __agent__ = _agent(max_session_cost=0.025, max_model_calls=2)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


def _row(database: Database, cls: type[Any], key: Any) -> dict[str, Any]:
    [row] = [r for r in joined_rows(database, cls.__table__) if r["id"] == key]
    return row


def _message_usage(document: dict[str, Any]) -> Usage:
    total = Usage()
    for message in load_context(document).messages:
        if message.meta.usage is not None:
            total = total + message.meta.usage
    return total


# -- windows -----------------------------------------------------------------------------


async def test_a_token_window_never_separates_a_call_from_its_result(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, WindowChat, maker=True)
    shop = Shop(context=500)  # the window's limit (600 - 100): never refused
    model = FunctionModel(shop)
    with WindowChat.__agent__.override(model=model):
        chat = await api.start(None, "where is order 1?")
        for turn in range(7):
            chat = await api.cont(None, chat.id, f"and order {turn + 2}?")
    document = _row(database, WindowChat, chat.id)["context"]
    # The stored history is complete: the system message and 8 turns of 4 messages.
    assert len(document["messages"]) == 1 + 8 * 4 and document["turns"] == 8
    check_document(document, where="stored")
    for request in model.requests:
        assert check_request(request.messages) is None
        assert count(request.messages) <= 500
    # Later requests left the oldest turns out, and the window said so.
    last = model.requests[-1]
    assert last.left_out and last.left_out > 0
    assert "where is order 1?" not in json.dumps(last.messages)
    assert last.messages[0]["content"] == "You help with orders."
    assert shop.largest <= 500


async def test_last_turns_sends_the_last_turns_at_every_tool_step(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, WindowChat, maker=True)
    model = FunctionModel(Shop())
    agent = _agent(history=LastTurns(1))
    WindowChat.__agent__, saved = agent, WindowChat.__agent__
    try:
        with agent.override(model=model):
            chat = await api.start(None, "order 1?")
            chat = await api.cont(None, chat.id, "order 2?")
            chat = await api.cont(None, chat.id, "order 3?")
    finally:
        WindowChat.__agent__ = saved
    # Turn 3's two calls (the tool step included) send turn 2 whole, not turn 1.
    for request in model.requests[-2:]:
        users = [m["content"] for m in request.messages if m["role"] == "user"]
        assert users == ["order 2?", "order 3?"]
        assert check_request(request.messages) is None
    assert len(_row(database, WindowChat, chat.id)["context"]["messages"]) == 1 + 3 * 4


async def test_a_turn_too_large_for_the_window_is_refused_before_any_call(
    database: Database,
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, WindowChat, maker=True)
    model = FunctionModel(Shop())
    with WindowChat.__agent__.override(model=model):
        chat = await api.start(None, "hello")
        before = _row(database, WindowChat, chat.id)
        calls = len(model.requests)
        with pytest.raises(ContextWindowError, match="the newest turn alone needs") as caught:
            await api.cont(None, chat.id, "word " * 2000)
    assert not caught.value.retryable
    assert len(model.requests) == calls  # no call was made
    assert _row(database, WindowChat, chat.id) == before


# -- compaction --------------------------------------------------------------------------


async def _compacted(api: Api, shop: Shop, turns: int) -> Any:
    model = FunctionModel(shop)
    with CompactChat.__agent__.override(model=model):
        chat = await api.start(None, "order 1?")
        for turn in range(turns - 1):
            chat = await api.cont(None, chat.id, f"order {turn + 2}?")
    return chat, model


async def test_compaction_is_stored_with_the_turn_and_sent_after(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, CompactChat, maker=True)
    shop = Shop()
    chat, model = await _compacted(api, shop, 6)
    assert shop.summaries >= 1
    summary_requests = [r for r in model.requests if is_summary_request(r)]
    assert {r.purpose for r in summary_requests} == {"summary"}
    assert all(r.tools is None and r.model == "test-model" for r in summary_requests)
    document = _row(database, CompactChat, chat.id)["context"]
    messages = document["messages"]
    summaries = [m for m in messages if m.get("meta", {}).get("summary")]
    assert summaries and summaries[0]["role"] == "system"
    # Nothing is removed: 6 turns of 4 messages, the system message and the summaries.
    assert len(messages) == 1 + 6 * 4 + len(summaries)
    check_document(document, where="stored")
    context = load_context(document)
    assert context.turns == 6
    # The summary call's usage is counted in the session's totals and in the turn.
    assert context.usage == _message_usage(document)
    assert chat.usage == context.usage
    # A request after the summary sends it with the system message, then what follows.
    with CompactChat.__agent__.override(model=model):
        chat = await api.cont(None, chat.id, "order 7?")
    sent = next(r for r in reversed(model.requests) if not is_summary_request(r)).messages
    assert SUMMARY_HEADER in sent[0]["content"]
    assert sum(1 for m in sent if m["role"] == "system") == 1
    assert "order 1?" not in json.dumps(sent)
    assert check_request(sent) is None


async def test_a_concurrent_writer_beats_the_compaction(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, CompactChat, maker=True)
    shop = Shop()
    shop.fail_summaries = 100  # compaction is due, but no summary yet
    chat, model = await _compacted(api, shop, 6)
    tried = shop.summaries
    assert tried > 0
    before = _row(database, CompactChat, chat.id)
    table = CompactChat.__table__

    def other_writer() -> None:
        with database.sync_engine().begin() as conn:
            conn.execute(sa.update(table).values(context_revision=table.c.context_revision + 1))

    shop.fail_summaries = 0
    shop.during_summary = other_writer
    with CompactChat.__agent__.override(model=model), pytest.raises(StaleSessionError):
        await api.cont(None, chat.id, "order 5?")
    assert shop.summaries == tried + 1
    after = _row(database, CompactChat, chat.id)
    assert after["context"] == before["context"]  # neither the turn nor its summary
    assert after["context_revision"] == before["context_revision"] + 1  # the other writer's


async def test_a_failed_summary_keeps_the_turn_and_compaction_retries(
    database: Database,
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, CompactChat, maker=True)
    shop = Shop()
    shop.fail_summaries = 1
    chat, _ = await _compacted(api, shop, 7)
    document = _row(database, CompactChat, chat.id)["context"]
    assert document["turns"] == 7
    # The first summary call failed: that turn was stored without it; the next one
    # summarized.
    assert shop.summaries >= 2
    assert sum(1 for m in document["messages"] if m.get("meta", {}).get("summary")) >= 1
    assert load_context(document).usage == _message_usage(document)


# -- budgets -----------------------------------------------------------------------------


async def test_budgets_refuse_the_call_and_store_nothing(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, BudgetChat, maker=True)
    model = FunctionModel(Shop(tools=False), cost=0.01)
    with BudgetChat.__agent__.override(model=model):
        chat = await api.start(None, "order 1?")
        chat = await api.cont(None, chat.id, "order 2?")
        assert chat.cost == pytest.approx(0.02)
        before = _row(database, BudgetChat, chat.id)
        calls = len(model.requests)
        # Session tokens, per call: the session has spent more than this already.
        with pytest.raises(BudgetExceededError) as tokens:
            await api.cont(None, chat.id, "order 3?", max_session_tokens=10)
        assert tokens.value.kind == "tokens" and tokens.value.limit == 10
        # Session cost: 0.02 spent, 0.025 allowed: one more turn, then refused.
        chat = await api.cont(None, chat.id, "order 3?")
        before = _row(database, BudgetChat, chat.id)
        calls = len(model.requests)
        with pytest.raises(BudgetExceededError) as cost:
            await api.cont(None, chat.id, "order 4?")
        assert cost.value.kind == "cost" and cost.value.spent == pytest.approx(0.03)
        assert len(model.requests) == calls
        assert _row(database, BudgetChat, chat.id) == before
        # A per-call limit raises it for this call.
        chat = await api.cont(None, chat.id, "order 4?", max_session_cost=1.0)
    assert chat.cost == pytest.approx(0.04)
    assert chat.usage == load_context(_row(database, BudgetChat, chat.id)["context"]).usage


async def test_max_model_calls_bounds_tool_steps_and_stores_nothing(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, BudgetChat, maker=True)
    with BudgetChat.__agent__.override(model=FunctionModel(Shop())):
        chat = await api.start(None, "order 1?")  # a tool step and the reply: 2 calls
    before = _row(database, BudgetChat, chat.id)
    calls = FunctionModel(lambda messages: ToolCall("get_order", {"order_id": "x"}))
    with (
        BudgetChat.__agent__.override(model=calls),
        pytest.raises(BudgetExceededError, match="max_model_calls") as caught,
    ):
        await api.cont(None, chat.id, "loop")
    assert caught.value.kind == "model_calls" and caught.value.limit == 2
    assert len(calls.requests) == 2  # the third call never started
    assert _row(database, BudgetChat, chat.id) == before


# -- chat.usage and chat.cost ----------------------------------------------------------


async def test_usage_and_cost_read_the_stored_totals(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, BudgetChat, maker=True)
    with BudgetChat.__agent__.override(model=FunctionModel(Shop(tools=False), cost=0.001)):
        chat = await api.start(None, "order 1?")
        chat = await api.cont(None, chat.id, "order 2?")
    document = _row(database, BudgetChat, chat.id)["context"]
    assert chat.usage == load_context(document).usage
    assert chat.usage.total_tokens > 0
    assert chat.cost == pytest.approx(0.002)
    fresh = BudgetChat(id=99)
    assert fresh.usage == Usage() and fresh.cost is None


# -- a long conversation against a small model -------------------------------------------


@pytest.fixture(params=["sqlite", "sqlite+aiosqlite"])
async def sqlite_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Database]:
    """SQLite through the sync and the async driver: the long test stays fast."""
    async with open_database(request.param, tmp_path) as db:
        yield db


class SmallChat(AgentSessionMixin[str], Base):
    __tablename__ = "long_small_chats"
    __agent__ = _agent(history=TokenBudget(4096, reserve_output=256, counter=count))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        {"history": TokenBudget(4096, reserve_output=256, counter=count)},
        {"compaction": Summarize(when_tokens_over=2500, keep_last_turns=4, counter=count)},
    ],
    ids=["token-budget", "summarize"],
)
async def test_200_turns_against_a_4096_token_model_never_overflow(
    sqlite_database: Database, config: dict[str, Any]
) -> None:
    database = sqlite_database
    database.create_all(Base.metadata)
    api = Api(database, SmallChat, maker=True)
    agent = _agent(**config)
    shop = Shop(context=4096)
    saved, SmallChat.__agent__ = SmallChat.__agent__, agent
    try:
        with agent.override(model=FunctionModel(shop)):
            chat = await api.start(None, "order 1?")
            for turn in range(199):
                chat = await api.cont(None, chat.id, f"and order {turn + 2}?")
    finally:
        SmallChat.__agent__ = saved
    document = _row(database, SmallChat, chat.id)["context"]
    assert document["turns"] == 200
    assert count(chat_messages(document["messages"])) > 5 * 4096  # it would never fit whole
    assert shop.largest <= 4096
    assert sum(1 for m in document["messages"] if m["role"] == "user") == 200
    if "compaction" in config:
        assert shop.summaries > 0


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"history": 5},
        {"history": "last"},
        {"compaction": LastTurns(2)},
        {"max_session_tokens": -1},
        {"max_session_cost": float("nan")},
        {"max_model_calls": 1.5},
    ],
)
def test_bad_long_conversation_settings_are_refused_at_build(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        _agent(**config)


async def test_a_bad_per_call_budget_is_refused_before_any_query(database: Database) -> None:
    from agent_session import InputValidationError

    database.create_all(Base.metadata)
    api = Api(database, BudgetChat, maker=True)
    with pytest.raises(InputValidationError):
        await api.start(None, "hi", max_session_tokens=-5)
    assert joined_rows(database, BudgetChat.__table__) == []


async def test_the_turn_log_line_says_what_the_window_left_out(
    sync_database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    database = sync_database
    database.create_all(Base.metadata)
    api = Api(database, WindowChat, maker=True)
    with WindowChat.__agent__.override(model=FunctionModel(Shop())):
        chat = await api.start(None, "order 1?")
        for turn in range(5):
            with caplog.at_level(logging.INFO, logger="agent_session.turn"):
                caplog.clear()
                chat = await api.cont(None, chat.id, f"order {turn + 2}?")
    [ended] = [r for r in caplog.records if "ended" in r.getMessage()]
    assert "window left out" in ended.getMessage()
    left_out = ended.agent_session["window_left_out"]  # type: ignore[attr-defined]
    assert isinstance(left_out, int) and left_out > 0


def transfer(to: str, amount: float) -> str:
    """Send money (needs a person's approval)."""
    return f"sent {amount} to {to}"


class ApprovalChat(AgentSessionMixin[str], Base):
    __tablename__ = "long_approval_chats"
    __agent__ = Agent(
        TestModel(),
        instruction="You help with orders.",
        tools=[get_order, Tool(transfer, requires_approval=True)],
        model_retries=0,
        history=LastTurns(1),
        compaction=Summarize(when_tokens_over=300, keep_last_turns=1, counter=count),
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


async def test_a_pause_is_never_compacted_and_its_resume_is(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, ApprovalChat, maker=True)
    shop = Shop()

    def pay(messages: list[dict[str, Any]], request: ModelRequest) -> Any:
        if not is_summary_request(request) and messages[-1]["content"] == "pay bob":
            return ToolCall("transfer", {"to": "bob", "amount": 5}, id="pay")
        return shop(messages, request)

    model = FunctionModel(pay)
    with ApprovalChat.__agent__.override(model=model):
        chat = await api.start(None, "order 1?")
        for turn in range(3):
            chat = await api.cont(None, chat.id, f"order {turn + 2}?")
        summaries = shop.summaries
        stored = _row(database, ApprovalChat, chat.id)["context"]
        chat = await api.cont(None, chat.id, "pay bob")
        paused = _row(database, ApprovalChat, chat.id)["context"]
        assert paused["messages"] == stored["messages"]  # the pause wrote no summary
        assert shop.summaries == summaries and paused["pending"]["approvals"]
        # The resume sends the paused turn whole, with the window's last turn.
        chat = await api.resume(None, chat.id, approvals={"pay": True})
    resumed = model.requests[-2] if is_summary_request(model.requests[-1]) else model.requests[-1]
    assert check_request(resumed.messages) is None
    assert [m["content"] for m in resumed.messages if m["role"] == "user"] == [
        "order 4?",
        "pay bob",
    ]
    document = _row(database, ApprovalChat, chat.id)["context"]
    assert "pending" not in document and document["turns"] == 5
    assert shop.summaries > summaries  # compaction is due, and ran with the resumed turn
    check_document(document, where="stored")


async def test_max_model_calls_counts_the_summary_call(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, CompactChat, maker=True)
    shop = Shop()
    shop.fail_summaries = 100
    chat, model = await _compacted(api, shop, 6)  # compaction is due from now on
    before = _row(database, CompactChat, chat.id)
    tried = shop.summaries
    agent = _agent(
        compaction=CompactChat.__agent__.compaction, max_model_calls=2
    )  # a tool step and the reply: the summary call would be the third
    saved, CompactChat.__agent__ = CompactChat.__agent__, agent
    try:
        with agent.override(model=model), pytest.raises(BudgetExceededError) as caught:
            await api.cont(None, chat.id, "order 7?")
    finally:
        CompactChat.__agent__ = saved
    assert caught.value.kind == "model_calls"
    assert shop.summaries == tried
    assert _row(database, CompactChat, chat.id) == before


async def test_the_summary_call_uses_its_own_model_and_settings(
    sync_database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    database = sync_database
    database.create_all(Base.metadata)
    api = Api(database, CompactChat, maker=True)
    agent = _agent(
        model_settings={"temperature": 0.7},
        compaction=Summarize(
            when_tokens_over=700,
            keep_last_turns=1,
            counter=count,
            model="small-summarizer",
            model_settings={"temperature": 0.0, "max_tokens": 300},
        ),
    )
    shop = Shop()
    model = FunctionModel(shop)
    saved, CompactChat.__agent__ = CompactChat.__agent__, agent
    try:
        with agent.override(model=model), caplog.at_level(logging.INFO, "agent_session.turn"):
            chat = await api.start(None, "order 1?")
            for turn in range(5):
                chat = await api.cont(None, chat.id, f"order {turn + 2}?")
    finally:
        CompactChat.__agent__ = saved
    summary = [r for r in model.requests if is_summary_request(r)]
    turn = [r for r in model.requests if not is_summary_request(r)]
    assert summary and {r.model for r in summary} == {"small-summarizer"}
    assert all(r.settings == {"temperature": 0.0, "max_tokens": 300} for r in summary)
    assert all(r.settings == {"temperature": 0.7} for r in turn)
    assert any("history compacted" in r.getMessage() for r in caplog.records)
    assert chat.last_result is not None
    assert chat.last_result.usage.total_tokens > 0


def test_the_default_window_is_the_models_input_limit_when_litellm_knows_it() -> None:
    from agent_session import _turn

    import_litellm()
    known = Agent("openai/gpt-4o-mini")
    assert _turn.history_window(known) == TokenBudget(128_000)
    assert _turn.history_window(Agent("openai/a-local-model-litellm-does-not-know")) is None
    with known.override(model=TestModel()):
        assert _turn.history_window(known) is None  # a double: everything is sent
    assert _turn.history_window(_agent(history=LastTurns(3))) == LastTurns(3)


async def test_max_model_calls_bounds_agent_run(run: Any) -> None:
    agent = _agent(max_model_calls=1)
    with (
        agent.override(model=FunctionModel(Shop())),
        pytest.raises(BudgetExceededError) as caught,
    ):
        await run(agent, "order 1?")
    assert caught.value.kind == "model_calls" and caught.value.spent == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_streamed_turn_does_not_stream_its_summary(tmp_path: Path, kind: str) -> None:
    """The compaction's summary call is made unstreamed: its text never reaches the reader."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.orm import sessionmaker

    from agent_session import TextDelta

    path = tmp_path / "streamed.sqlite3"
    engine = sa.create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    shop = Shop()
    model = FunctionModel(shop)
    texts: list[str] = []
    with CompactChat.__agent__.override(model=model):
        if kind == "sync":
            maker = sessionmaker(engine)
            chat = CompactChat.start_session(maker, "order 1?")
            for turn in range(2, 8):
                stream = CompactChat.continue_session(maker, chat.id, f"order {turn}?", stream=True)
                with stream:
                    texts += [e.text for e in stream if isinstance(e, TextDelta)]
                chat = stream.session
        else:
            async_engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
            amaker = async_sessionmaker(async_engine)
            chat = await CompactChat.astart_session(amaker, "order 1?")
            for turn in range(2, 8):
                astream = await CompactChat.acontinue_session(
                    amaker, chat.id, f"order {turn}?", stream=True
                )
                async with astream:
                    texts += [e.text async for e in astream if isinstance(e, TextDelta)]
                chat = astream.session
            await async_engine.dispose()
    engine.dispose()
    assert shop.summaries >= 1
    streamed = "".join(texts)
    assert "delivered and left at the front door" in streamed
    assert "Summary" not in streamed
    document = load_context(_stored_context(path, chat.id))
    assert any(m.meta.summary is not None for m in document.messages)


def _stored_context(path: Path, key: Any) -> Any:
    import sqlite3

    with sqlite3.connect(path) as connection:
        (raw,) = connection.execute(
            "SELECT context FROM long_compact_chats WHERE id = ?", (key,)
        ).fetchone()
    return json.loads(raw)
