"""The tree of turns in stored sessions: regenerate, edit, switch and rewind on the
six drivers (sync API on three, async twins on three), with a session and a
sessionmaker; refusals leave the database as it was; races end with one winner."""

from __future__ import annotations

import asyncio
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
    SessionNotFoundError,
    StaleSessionError,
    Tool,
    ToolCall,
)
from agent_session.testing import FunctionModel
from support.databases import Database
from support.sessions import Api, stored_rows
from support.tree_model import TreeModel, random_ops

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
            return await call(self.api, None, name, *args, **kw)
        async with self.api.session() as db:
            try:
                result = await call(self.api, db, name, *args, **kw)
            except Exception:
                await self.api.rollback(db)
                raise
            await self.api.commit(db)
            return result

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
    tx = Tx(api)
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
    if api.maker is None:
        pytest.skip("the stream holds its session: covered with a sessionmaker")
    stream = await call(api, None, "regenerate_session", chat.id, stream=True)
    from support.sessions import stream_text

    assert await stream_text(stream) == "r2:one"
    stream = await call(api, None, "edit_session", chat.id, "2.0", "uno", stream=True)
    assert await stream_text(stream) == "r3:uno"
    assert texts(await tx.context(chat.id)) == ["uno", "r3:uno"]


# -- races ---------------------------------------------------------------------------


async def race(database: Database, first: tuple[Any, ...], second: tuple[Any, ...]) -> Any:
    """Run two operations on one session so that both load before either writes."""
    gate: dict[str, Any] = {}

    class RBase(DeclarativeBase):
        pass

    if database.is_async:
        barrier = asyncio.Barrier(2)

        async def fn(messages: list[dict[str, Any]]) -> str:
            if gate.get("on"):
                await asyncio.wait_for(barrier.wait(), 10)
            return reply(messages)

        model = FunctionModel(fn)
    else:
        tbarrier = threading.Barrier(2, timeout=10)

        def sfn(messages: list[dict[str, Any]]) -> str:
            if gate.get("on"):
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
            outcomes.append(await call(api, None, op[0], chat.id, *op[1:]))
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
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    losers = [o for o in outcomes if isinstance(o, Exception)]
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


# -- the model of the tree, over real storage -----------------------------------------


async def test_random_operations_match_the_model_on_sqlite(tmp_path: Any) -> None:
    from support.databases import open_database

    rng = random.Random(4)
    async with open_database("sqlite", tmp_path) as database:
        database.create_all(Base.metadata)
        api = Api(database, TreeChat, maker=True)
        for _ in range(3):
            model, key, ops = TreeModel(), None, random_ops(rng, 30)
            for step, op in enumerate(ops):
                kind, pick, text = op
                # The turn the operation picks, seen before the model applies it.
                on_path = model.active[pick % len(model.active)] if model.active else None
                some = model.nodes[pick % len(model.nodes)] if model.nodes else None
                keep = pick % (len(model.active) + 1) - 1
                if model.apply(op) is None or (key is None and kind != "continue"):
                    continue  # nothing to do yet (a rewind of no session at all)
                if key is None:
                    key = (await call(api, None, "start_session", text)).id
                elif kind == "continue":
                    await call(api, None, "continue_session", key, text)
                elif kind == "regenerate":
                    await call(api, None, "regenerate_session", key)
                elif kind == "edit":
                    assert on_path is not None
                    await call(api, None, "edit_session", key, f"{on_path.number}.0", text)
                elif kind == "switch":
                    assert some is not None
                    await call(api, None, "switch_branch", key, f"{some.number}.1")
                else:
                    leaf = f"{model.active[keep].number}.1" if keep >= 0 else "0.0"
                    await call(api, None, "rewind_session", key, leaf)
                context = await call(api, None, "get_context", key)
                users = [m.content for m in context.messages if m.role == "user"]
                assert users == [n.input for n in model.active], (step, op)
                ids = [m.id for m in context.messages if m.role == "user"]
                assert ids == [f"{n.number}.0" for n in model.active], (step, op)
