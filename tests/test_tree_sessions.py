"""The tree of turns in stored sessions: regenerate, edit, switch and rewind on the
six drivers (sync API on three, async twins on three), with a session and a
sessionmaker; refusals leave the database as it was; races end with one winner."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import (
    Agent,
    AgentSessionMixin,
    ApprovalPendingError,
    InputValidationError,
    LastTurns,
    SessionNotFoundError,
    StaleSessionError,
    Summarize,
    Tool,
    ToolCall,
)
from agent_session.history import DEFAULT_SUMMARY_INSTRUCTION
from agent_session.llm import ModelRequest
from agent_session.testing import FunctionModel
from support.databases import Database
from support.sessions import Api, stored_rows, stream_text
from support.tree_model import TreeModel, check_stored_trees, random_ops

calls: list[str] = []


def reply(messages: list[dict[str, Any]]) -> str:
    """``r<n>:<the user's text>``, n counting every model call of the test."""
    calls.append(messages[-1]["content"])
    return f"r{len(calls)}:{messages[-1]['content']}"


agent = Agent(FunctionModel(reply, cost=0.5), instruction="Be brief.")


class Base(DeclarativeBase):
    pass


class TreeChat(AgentSessionMixin, Base):
    __tablename__ = "tree_chats"
    __agent__ = agent
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(20), default="me")


class TreeInline(AgentSessionMixin, Base):
    """The single-column layout: the head keeps every row."""

    __tablename__ = "tree_inline"
    __agent__ = agent
    __history_table__ = None
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(20), default="me")


class TreeTask(AgentSessionMixin, Base):
    """With a status column."""

    __tablename__ = "tree_tasks"
    __agent__ = agent
    __status_attribute__ = "status"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


@pytest.fixture(params=[False, True], ids=["session", "maker"])
def api(request: pytest.FixtureRequest, database: Database) -> Api:
    database.create_all(Base.metadata)
    return Api(database, TreeChat, maker=request.param)


async def call(api: Api, db: Any, name: str, *args: Any, **kw: Any) -> Any:
    """``name`` (``regenerate_session``...) on the sync API, or its twin on the async one."""
    db = api.maker if db is None else db
    if api.is_async:
        return await getattr(api.model, f"a{name}")(db, *args, **kw)
    return getattr(api.model, name)(db, *args, **kw)


class Tx:
    """A call's database: the sessionmaker itself, or a session committed after it."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def __call__(self, name: str, *args: Any, **kw: Any) -> Any:
        if self.api.maker is not None:
            result = await call(self.api, None, name, *args, **kw)
        else:
            async with self.api.session() as db:
                try:
                    result = await call(self.api, db, name, *args, **kw)
                except Exception:
                    await self.api.rollback(db)
                    raise
                await self.api.commit(db)
        self.check()
        return result

    def check(self) -> None:
        """Every stored tree whole, every active path paired (after every call)."""
        model = self.api.model
        history = model.metadata.tables.get(f"{model.__tablename__}_history")
        check_stored_trees(self.api.database, model.__table__, history)

    async def context(self, key: Any, **kw: Any) -> Any:
        if self.api.maker is not None:
            return await self.api.context(None, key, **kw)
        async with self.api.session() as db:
            return await self.api.context(db, key, **kw)


def texts(context: Any) -> list[Any]:
    return [m.content for m in context.messages if m.role != "system"]


def everything(api: Api) -> list[Any]:
    """Both tables as stored, to compare before and after a refusal."""
    history = Base.metadata.tables["tree_chats_history"]
    return [stored_rows(api.database, TreeChat.__table__), stored_rows(api.database, history)]


async def test_regenerate_edit_switch_and_rewind(api: Api) -> None:
    await scenario(Tx(api))


async def test_the_single_column_layout_keeps_the_same_tree(database: Database) -> None:
    database.create_all(Base.metadata)
    await scenario(Tx(Api(database, TreeInline, maker=True)))


async def scenario(tx: Tx) -> None:
    chat = await tx("start_session", "one")
    await tx("continue_session", chat.id, "two")
    chat = await tx("regenerate_session", chat.id)
    assert chat.last_output == "r3:two"
    active = await tx.context(chat.id)
    assert texts(active) == ["one", "r1:one", "two", "r3:two"]
    assert [m.id for m in active.messages] == ["0.0", "1.0", "1.1", "3.0", "3.1"]
    tree = await tx.context(chat.id, path="all")
    assert texts(tree) == ["one", "r1:one", "two", "r2:two", "two", "r3:two"]
    assert tree.branches_at("3.0") == ["2.0", "3.0"]
    assert tree.branches_at("2.1") == ["2.1", "3.1"]
    assert tree.branches_at("1.1") == ["1.1"]
    assert [m.parent for m in tree.messages][1:] == [None, "1.0", "1.1", "2.0", "1.1", "3.0"]

    chat = await tx("edit_session", chat.id, "1.0", "uno")
    assert chat.last_output == "r4:uno"
    assert texts(await tx.context(chat.id)) == ["uno", "r4:uno"]

    chat = await tx("switch_branch", chat.id, "2.1")
    assert texts(await tx.context(chat.id)) == ["one", "r1:one", "two", "r2:two"]
    assert chat.last_output == "r2:two"
    chat = await tx("switch_branch", chat.id, "1.0")  # the newest leaf under turn 1
    assert texts(await tx.context(chat.id)) == ["one", "r1:one", "two", "r3:two"]

    page = await tx("get_messages", chat.id, limit=3)  # paged reads follow the active path
    assert [m.content for m in page] == ["r1:one", "two", "r3:two"]
    assert [m.id for m in page] == ["1.1", "3.0", "3.1"]

    chat = await tx("rewind_session", chat.id, "1.1")
    assert texts(await tx.context(chat.id)) == ["one", "r1:one"]
    assert chat.last_output == "r1:one"
    chat = await tx("continue_session", chat.id, "three")
    assert texts(await tx.context(chat.id)) == ["one", "r1:one", "three", "r5:three"]
    chat = await tx("rewind_session", chat.id, "0.0")
    assert texts(await tx.context(chat.id)) == []
    assert chat.last_output is None

    final = await tx.context(chat.id, path="all")
    assert len(final.messages) == 1 + 2 * 5  # nothing was deleted
    assert final.turns == 5 and final.cost == pytest.approx(2.5)
    per_turn = [m.meta.usage.total_tokens for m in final.messages if m.meta.usage]
    assert final.usage.total_tokens == sum(per_turn) > 0
    assert calls == ["one", "two", "two", "uno", "three"]


async def test_refusals_leave_the_database_unchanged(api: Api) -> None:
    tx = Tx(api)
    chat = await tx("start_session", "one")
    await tx("continue_session", chat.id, "two")
    await tx("regenerate_session", chat.id)  # turns 1, 2 and its sibling 3
    before, made = everything(api), len(calls)
    mine = TreeChat.owner == "me"
    refused: list[tuple[type[Exception], str, tuple[Any, ...], dict[str, Any]]] = [
        (InputValidationError, "edit_session", (chat.id, "9.0", "x"), {}),
        (InputValidationError, "edit_session", (chat.id, "x", "x"), {}),
        (InputValidationError, "edit_session", (chat.id, "1.1", "x"), {}),  # a reply
        (InputValidationError, "edit_session", (chat.id, "2.0", "x"), {}),  # another branch
        (InputValidationError, "edit_session", (chat.id, "1.0", ""), {"model_settings": 3}),
        (InputValidationError, "rewind_session", (chat.id, "1.0"), {}),  # not a turn's last
        (InputValidationError, "rewind_session", (chat.id, "2.1"), {}),  # another branch
        (InputValidationError, "switch_branch", (chat.id, "2.2"), {}),
        (InputValidationError, "switch_branch", (chat.id, "12"), {}),
        (InputValidationError, "regenerate_session", (chat.id,), {"conflict_retries": -1}),
        (InputValidationError, "get_context", (chat.id,), {"path": "everything"}),
        (SessionNotFoundError, "regenerate_session", (12345,), {}),
        (SessionNotFoundError, "edit_session", (12345, "1.0", "x"), {}),
        (SessionNotFoundError, "switch_branch", (12345, "1.0"), {}),
        (SessionNotFoundError, "rewind_session", (12345, "1.1"), {}),
        (SessionNotFoundError, "switch_branch", (chat.id, "2.1"), {"where": ~mine}),
        (SessionNotFoundError, "edit_session", (chat.id, "1.0", "x"), {"where": ~mine}),
    ]
    for error, name, args, kw in refused:
        with pytest.raises(error):
            await tx(name, *args, **kw)
        assert everything(api) == before, (name, args)
    assert len(calls) == made
    # where= that matches: the same operations work.
    await tx("switch_branch", chat.id, "2.1", where=mine)
    assert texts(await tx.context(chat.id))[-1] == "r2:two"


async def test_a_session_with_no_turn_has_nothing_to_regenerate(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, TreeChat, maker=True)
    async with api.session() as db:
        db.add(TreeChat(owner="me"))
        await api.commit(db)
    with pytest.raises(InputValidationError, match="no stored turn to regenerate"):
        await call(api, None, "regenerate_session", 1)
    with pytest.raises(InputValidationError):
        await call(api, None, "rewind_session", 1, "0.0")
    assert calls == []


def refund(order: str) -> str:
    """Refund an order."""
    return f"refunded {order}"


def tool_reply(messages: list[dict[str, Any]]) -> Any:
    if messages[-1]["role"] == "user" and "refund" in messages[-1]["content"]:
        return ToolCall("refund", {"order": "42"})
    return reply(messages)


async def test_a_paused_session_refuses_every_tree_operation(database: Database) -> None:
    class PBase(DeclarativeBase):
        pass

    class Paused(AgentSessionMixin, PBase):
        __tablename__ = "tree_paused"
        __agent__ = Agent(FunctionModel(tool_reply), tools=[Tool(refund, requires_approval=True)])
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)

    database.create_all(PBase.metadata)
    api = Api(database, Paused, maker=True)
    chat = await call(api, None, "start_session", "hello")
    await call(api, None, "continue_session", chat.id, "refund please")
    assert chat.id is not None
    before = stored_rows(database, Paused.__table__)
    for name, args in [
        ("regenerate_session", ()),
        ("edit_session", ("1.0", "hi")),
        ("switch_branch", ("1.0",)),
        ("rewind_session", ("1.1",)),
    ]:
        with pytest.raises(ApprovalPendingError):
            await call(api, None, name, chat.id, *args)
    assert stored_rows(database, Paused.__table__) == before


async def test_the_status_column_reports_them_like_turns(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, TreeTask, maker=True)
    task = await call(api, None, "start_session", "one")
    task = await call(api, None, "regenerate_session", task.id)
    [row] = stored_rows(database, TreeTask.__table__)
    assert row["status"] == "completed" and row["context_revision"] == 3  # claim, write
    task = await call(api, None, "edit_session", task.id, "2.0", "uno")
    task = await call(api, None, "rewind_session", task.id, "0.0")
    [row] = stored_rows(database, TreeTask.__table__)
    assert row["status"] == "completed" and row["context_revision"] == 6


async def test_regenerate_and_edit_stream(api: Api) -> None:
    tx = Tx(api)
    chat = await tx("start_session", "one")
    async with api.session() as db:
        mine = None if api.maker is not None else db  # a caller-owned Session, or the maker
        stream = await call(api, mine, "regenerate_session", chat.id, stream=True)
        assert await stream_text(stream) == "r2:one"
        stream = await call(api, mine, "edit_session", chat.id, "2.0", "uno", stream=True)
        assert await stream_text(stream) == "r3:uno"
        assert stream.session is not None and stream.session.last_output == "r3:uno"
        await api.commit(db)
    assert texts(await tx.context(chat.id)) == ["uno", "r3:uno"]
    tx.check()


# -- races ---------------------------------------------------------------------------


async def race(
    database: Database, first: tuple[Any, ...], second: tuple[Any, ...], retries: int = 0
) -> Any:
    """Run two operations on one session so that both load before either writes."""
    gate: dict[str, Any] = {}
    lock = threading.Lock()

    def first_calls() -> bool:
        """Whether this is one of the two calls that meet (a re-run goes straight on)."""
        with lock:
            gate["calls"] = gate.get("calls", 0) + 1
            return bool(gate["calls"] <= 2)

    class RBase(DeclarativeBase):
        pass

    if database.is_async:
        barrier = asyncio.Barrier(2)

        async def fn(messages: list[dict[str, Any]]) -> str:
            if gate.get("on") and first_calls():
                await asyncio.wait_for(barrier.wait(), 10)
            return reply(messages)

        model = FunctionModel(fn)
    else:
        tbarrier = threading.Barrier(2, timeout=10)

        def sfn(messages: list[dict[str, Any]]) -> str:
            if gate.get("on") and first_calls():
                tbarrier.wait()
            return reply(messages)

        model = FunctionModel(sfn)

    class Raced(AgentSessionMixin, RBase):
        __tablename__ = "tree_raced"
        __agent__ = Agent(model)
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)

    database.create_all(RBase.metadata)
    api = Api(database, Raced, maker=True)
    chat = await call(api, None, "start_session", "one")
    await call(api, None, "continue_session", chat.id, "two")
    gate["on"] = True
    outcomes: list[Any] = []

    async def run(op: tuple[Any, ...]) -> None:
        try:
            outcomes.append(
                await call(api, None, op[0], chat.id, *op[1:], conflict_retries=retries)
            )
        except Exception as exc:
            outcomes.append(exc)

    if api.is_async:
        await asyncio.gather(run(first), run(second))
    else:

        def thread(op: tuple[Any, ...]) -> None:
            asyncio.run(run(op))

        threads = [threading.Thread(target=thread, args=(op,)) for op in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    gate["on"] = False
    check_stored_trees(database, Raced.__table__, RBase.metadata.tables["tree_raced_history"])
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    losers = [o for o in outcomes if isinstance(o, Exception)]
    if retries:  # the loser ran again on the winner's history
        assert len(winners) == 2, outcomes
        tree = await call(api, None, "get_context", chat.id, path="all")
        assert len(tree.messages) == 2 * 4
        return None
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert isinstance(losers[0], StaleSessionError), losers
    context = await call(api, None, "get_context", chat.id)
    tree = await call(api, None, "get_context", chat.id, path="all")
    assert context.messages[-1].content == winners[0].last_output
    # One path: every turn once, each reply right after its message.
    roles = [m.role for m in context.messages]
    assert roles == ["user", "assistant"] * (len(roles) // 2)
    assert len(tree.messages) == 2 * 3  # the loser stored nothing
    return texts(context)


@pytest.mark.parametrize(
    "ops",
    [
        (("edit_session", "1.0", "a"), ("edit_session", "1.0", "b")),
        (("edit_session", "2.0", "a"), ("continue_session", "b")),
        (("regenerate_session",), ("continue_session", "b")),
    ],
    ids=["two-edits", "edit-and-turn", "regenerate-and-turn"],
)
async def test_races_end_with_one_winner(database: Database, ops: Any) -> None:
    await race(database, *ops)


async def test_a_lost_edit_runs_again_with_conflict_retries(database: Database) -> None:
    await race(database, ("edit_session", "2.0", "a"), ("continue_session", "b"), retries=1)


async def test_a_switch_during_a_turn_makes_the_turn_stale(database: Database) -> None:
    class SBase(DeclarativeBase):
        pass

    during: list[Any] = []

    async def fn(messages: list[dict[str, Any]]) -> str:
        for step in during:
            await step()
        return reply(messages)

    class Switched(AgentSessionMixin, SBase):
        __tablename__ = "tree_switched"
        __agent__ = Agent(FunctionModel(fn))
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)

    database.create_all(SBase.metadata)
    api = Api(database, Switched, maker=True)
    chat = await call(api, None, "start_session", "one")
    await call(api, None, "regenerate_session", chat.id)  # turns 1 and 2, siblings

    async def switch() -> None:
        during.clear()
        if api.is_async:
            await call(api, None, "switch_branch", chat.id, "1.1")
        else:  # the sync turn runs this coroutine on its own loop: a sync call
            Switched.switch_branch(api.maker, chat.id, "1.1")

    during.append(switch)
    with pytest.raises(StaleSessionError):
        await call(api, None, "continue_session", chat.id, "two")
    context = await call(api, None, "get_context", chat.id)
    assert texts(context) == ["one", "r1:one"]  # the switch won; the turn stored nothing
    history = SBase.metadata.tables["tree_switched_history"]
    check_stored_trees(database, Switched.__table__, history)


# -- the model of the tree, over real storage -----------------------------------------


@pytest.mark.parametrize(
    ("cls", "seed"), [(TreeChat, 4), (TreeInline, 5)], ids=["history-table", "single-column"]
)
async def test_random_operations_match_the_model_on_sqlite(
    tmp_path: Any, cls: Any, seed: int
) -> None:
    from support.databases import open_database

    rng = random.Random(seed)
    async with open_database("sqlite", tmp_path) as database:
        database.create_all(Base.metadata)
        api = Api(database, cls, maker=True)
        tx = Tx(api)  # checks every stored tree after each call
        for _ in range(4):
            model, key, ops = TreeModel(), None, random_ops(rng, 40)
            for step, op in enumerate(ops):
                kind, pick, text = op
                # The turn the operation picks, seen before the model applies it.
                on_path = model.active[pick % len(model.active)] if model.active else None
                some = model.nodes[pick % len(model.nodes)] if model.nodes else None
                keep = pick % (len(model.active) + 1) - 1
                if model.apply(op) is None or (key is None and kind != "continue"):
                    continue  # nothing to do yet (a rewind of no session at all)
                if key is None:
                    key = (await tx("start_session", text)).id
                elif kind == "continue":
                    await tx("continue_session", key, text)
                elif kind == "regenerate":
                    await tx("regenerate_session", key)
                elif kind == "edit":
                    assert on_path is not None
                    await tx("edit_session", key, f"{on_path.number}.0", text)
                elif kind == "switch":
                    assert some is not None
                    await tx("switch_branch", key, f"{some.number}.1")
                else:
                    leaf = f"{model.active[keep].number}.1" if keep >= 0 else "0.0"
                    await tx("rewind_session", key, leaf)
                context = await tx.context(key)
                users = [m.content for m in context.messages if m.role == "user"]
                assert users == [n.input for n in model.active], (step, op)
                ids = [m.id for m in context.messages if m.role == "user"]
                assert ids == [f"{n.number}.0" for n in model.active], (step, op)


# -- windows, summaries, older documents ----------------------------------------------


def count(messages: list[dict[str, Any]]) -> int:
    """A deterministic token counter: a token per 4 characters of the JSON form."""
    return len(json.dumps(messages, ensure_ascii=False)) // 4 + 1


def summarizing(messages: list[dict[str, Any]], request: ModelRequest) -> str:
    if request.messages[0].get("content") == DEFAULT_SUMMARY_INSTRUCTION:
        return "SUMMARY of the talk so far"
    return reply(messages)


def sent(model: FunctionModel) -> list[list[Any]]:
    """The contents of each request a turn sent (summary requests left out)."""
    return [
        [m.get("content") for m in r.messages]
        for r in model.requests
        if r.messages[0].get("content") != DEFAULT_SUMMARY_INSTRUCTION
    ]


def summarized(contents: list[Any]) -> bool:
    return any("SUMMARY of the talk so far" in str(c) for c in contents)


async def test_an_edit_before_a_summary_sends_the_messages(database: Database) -> None:
    class SBase(DeclarativeBase):
        pass

    model = FunctionModel(summarizing)

    class Summed(AgentSessionMixin, SBase):
        __tablename__ = "tree_summed"
        __agent__ = Agent(
            model,
            instruction="Be brief.",
            compaction=Summarize(when_tokens_over=60, keep_last_turns=1, counter=count),
        )
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)

    database.create_all(SBase.metadata)
    api = Api(database, Summed, maker=True)
    tx = Tx(api)
    chat = await tx("start_session", "one " * 10)
    for text in ["two " * 10, "three " * 10, "four " * 10]:
        chat = await tx("continue_session", chat.id, text)
    [row] = stored_rows(database, Summed.__table__)
    assert row["context"]["summary"]["anchor"] >= 2  # turns 1.. are summarized
    assert summarized(sent(model)[-1])

    ids = {m.content: m.id for m in (await tx.context(chat.id)).messages}
    chat = await tx("edit_session", chat.id, ids["one " * 10], "uno")
    assert sent(model)[-1] == ["Be brief.", "uno"]
    [row] = stored_rows(database, Summed.__table__)
    assert "summary" not in row["context"]  # it summarized turns of the other branch
    chat = await tx("continue_session", chat.id, "cinq")
    assert not summarized(sent(model)[-1])

    # Back on the summarized branch, its summary applies again.
    chat = await tx("switch_branch", chat.id, ids["four " * 10])
    [row] = stored_rows(database, Summed.__table__)
    assert row["context"].get("summary") is not None
    chat = await tx("continue_session", chat.id, "six")
    assert summarized(sent(model)[-1])


async def test_last_turns_regenerate_and_edit_send_the_window_before_them(
    database: Database,
) -> None:
    class WBase(DeclarativeBase):
        pass

    model = FunctionModel(reply)

    class Windowed(AgentSessionMixin, WBase):
        __tablename__ = "tree_windowed"
        __agent__ = Agent(model, instruction="Be brief.", history=LastTurns(1))
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)

    database.create_all(WBase.metadata)
    tx = Tx(Api(database, Windowed, maker=True))
    chat = await tx("start_session", "one")
    chat = await tx("continue_session", chat.id, "two")
    chat = await tx("continue_session", chat.id, "three")
    chat = await tx("regenerate_session", chat.id)
    assert sent(model)[-1] == ["Be brief.", "two", "r2:two", "three"]
    chat = await tx("edit_session", chat.id, "2.0", "deux")
    assert sent(model)[-1] == ["Be brief.", "one", "r1:one", "deux"]
    assert texts(await tx.context(chat.id)) == ["one", "r1:one", "deux", "r5:deux"]


async def test_a_document_of_an_earlier_version_keeps_the_regenerated_turn(
    database: Database,
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, TreeChat, maker=True)
    at = "2026-01-01T00:00:00Z"
    old = {
        "version": 3,
        "created_at": at,
        "updated_at": at,
        "turns": 2,
        "usage": {"prompt_tokens": 4, "completion_tokens": 2},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "one", "meta": {"created_at": at}},
            {"role": "assistant", "content": "old one"},
            {"role": "user", "content": "two", "meta": {"created_at": at}},
            {"role": "assistant", "content": "old two"},
        ],
    }
    async with api.session() as db:
        db.add(TreeChat(id=7, owner="me", context=old, context_revision=1))
        await api.commit(db)
    tx = Tx(api)
    chat = await tx("regenerate_session", 7)
    assert chat.last_output == "r1:two"
    tree = await tx.context(7, path="all")
    assert texts(tree) == ["one", "old one", "two", "old two", "two", "r1:two"]
    assert tree.branches_at("3.1") == ["2.1", "3.1"]
    assert tree.turns == 3


async def test_a_broken_tree_is_seen_by_the_check(database: Database) -> None:
    """``check_stored_trees`` finds a row that hangs from nothing."""
    database.create_all(Base.metadata)
    tx = Tx(Api(database, TreeChat, maker=True))
    chat = await tx("start_session", "one")
    await tx("continue_session", chat.id, "two")
    history = Base.metadata.tables["tree_chats_history"]
    with database.sync_engine().begin() as conn:
        conn.execute(sa.update(history).where(history.c.seq == 2).values(parent=5))
    with pytest.raises((AssertionError, KeyError)):
        tx.check()


# -- tools, hooks --------------------------------------------------------------------

RAN: list[str] = []


def look_up(order: str) -> str:
    """Look an order up."""
    RAN.append(order)
    return f"order {order}: delivered"


def tool_then_reply(messages: list[dict[str, Any]]) -> Any:
    last = messages[-1]
    if last["role"] == "user" and "order" in last["content"]:
        return ToolCall("look_up", {"order": last["content"].split()[-1]})
    if last["role"] == "user" and "refund" in last["content"]:
        return ToolCall("refund", {"order": "42"})
    return reply(messages)


async def test_regenerate_runs_the_tools_again_and_pauses_again(database: Database) -> None:
    class TBase(DeclarativeBase):
        pass

    class Tooled(AgentSessionMixin, TBase):
        __tablename__ = "tree_tooled"
        __agent__ = Agent(
            FunctionModel(tool_then_reply),
            tools=[look_up, Tool(refund, requires_approval=True)],
        )
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)

    database.create_all(TBase.metadata)
    RAN.clear()
    tx = Tx(Api(database, Tooled, maker=True))
    chat = await tx("start_session", "where is order 7")
    chat = await tx("regenerate_session", chat.id)
    assert RAN == ["7", "7"]
    tree = await tx.context(chat.id, path="all")
    assert [m.role for m in tree.messages] == ["user", "assistant", "tool", "assistant"] * 2
    assert tree.branches_at("2.3") == ["1.3", "2.3"]

    chat = await tx("continue_session", chat.id, "refund please")
    assert chat.pending_approvals
    chat = await tx(
        "resume_session", chat.id, approvals={chat.pending_approvals[0].tool_call_id: True}
    )
    chat = await tx("regenerate_session", chat.id)
    assert chat.pending_approvals  # the regenerated turn waits for its approval again
    with pytest.raises(ApprovalPendingError):
        await tx("switch_branch", chat.id, "1.0")
    chat = await tx(
        "resume_session", chat.id, approvals={chat.pending_approvals[0].tool_call_id: True}
    )
    active = await tx.context(chat.id)
    assert [m.id for m in active.messages if m.role == "user"] == ["2.0", "4.0"]


async def test_hooks_and_logs_see_regenerate_and_edit_as_turns(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[list[Any]] = []

    class HBase(DeclarativeBase):
        pass

    class Hooked(AgentSessionMixin, HBase):
        __tablename__ = "tree_hooked"
        __agent__ = Agent(
            FunctionModel(reply),
            before_model_call=lambda request: seen.append([m["content"] for m in request.messages]),
        )
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)

    database.create_all(HBase.metadata)
    tx = Tx(Api(database, Hooked, maker=True))
    chat = await tx("start_session", "one")
    with caplog.at_level(logging.INFO, logger="agent_session"):
        chat = await tx("regenerate_session", chat.id)
        chat = await tx("edit_session", chat.id, "2.0", "uno")
    assert seen == [["one"], ["one"], ["uno"]]
    chat = await tx("rewind_session", chat.id, "0.0")  # the root, with no system message
    assert (await tx.context(chat.id)).messages == []
    chat = await tx("continue_session", chat.id, "again")
    assert seen[-1] == ["again"]
    calls_logged = " ".join(r.getMessage() for r in caplog.records)
    assert "regenerate_session" in calls_logged and "edit_session" in calls_logged
