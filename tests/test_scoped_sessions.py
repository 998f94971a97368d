"""``where=``: sessions belong to someone.

Every method that takes a key also takes SQL criteria on the model
(``where=Chat.owner == user``). A key outside them behaves exactly like an unknown
key: ``SessionNotFoundError`` with the same message, no model call, nothing written;
and the compare-and-swap write carries the same criteria.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import InputValidationError, SessionNotFoundError, StaleSessionError
from support.databases import Database
from support.stress_worker import Harness, echo, make_chat

MODES = ["session", "sessionmaker"]


@contextlib.asynccontextmanager
async def caller_db(h: Harness, mode: str) -> AsyncIterator[Any]:
    """``None`` (the harness's sessionmaker) or a caller-owned session, rolled back at exit."""
    if mode == "sessionmaker":
        yield None
        return
    async with h.session() as db:
        yield db
        assert not db.new and not db.dirty and not db.deleted
        await h.rollback(db)


async def detached_copy(h: Harness, key: int) -> Any:
    """The row as another request would have loaded it: no trace of this process's writes."""
    async with h.session() as db:
        if h.is_async:
            return await db.get(h.cls, key)
        return db.get(h.cls, key)


@pytest.mark.parametrize("mode", MODES)
async def test_a_key_outside_the_criteria_is_not_found(database: Database, mode: str) -> None:
    h = Harness(database, make_chat())
    chat = h.cls
    alice = await h.start("hello [a0]", owner="alice")
    bob = await h.start("hello [b0]", owner="bob")
    as_alice = chat.owner == "alice"
    unknown = bob.id + 1000

    async with caller_db(h, mode) as db:
        with pytest.raises(SessionNotFoundError) as info:
            await h.cont(unknown, "turn [x]", db, where=as_alice)
    unknown_message = str(info.value).replace(str(unknown), "{key}")
    assert unknown_message == f"no {chat.__name__} session with primary key {{key}}"

    before = h.rows()
    calls = len(h.model.requests)
    bob_copy = await detached_copy(h, bob.id)
    attempts: dict[str, Callable[[Any], Any]] = {
        "continue_session(key)": lambda db: h.cont(bob.id, "turn [x]", db, where=as_alice),
        "continue_session(written instance)": lambda db: h.cont(
            bob, "turn [x]", db, where=as_alice
        ),
        "continue_session(loaded instance)": lambda db: h.cont(
            bob_copy, "turn [x]", db, where=as_alice
        ),
        "continue_session(several criteria)": lambda db: h.cont(
            bob.id, "turn [x]", db, where=[chat.id > 0, as_alice]
        ),
        "get_context(key)": lambda db: h.context(bob.id, db, where=as_alice),
        "get_context(several criteria)": lambda db: h.context(
            bob.id, db, where=(as_alice, chat.id == bob.id)
        ),
    }
    for what, attempt in attempts.items():
        async with caller_db(h, mode) as db:
            with pytest.raises(SessionNotFoundError) as info:
                await attempt(db)
        assert str(info.value) == unknown_message.format(key=bob.id), what
        assert info.value.key == bob.id, what
        assert h.rows() == before, what
        assert len(h.model.requests) == calls, what

    # Within the criteria, every method works as without them.
    async with caller_db(h, mode) as db:
        await h.cont(alice.id, "turn [a1]", db, where=as_alice)
        await h.cont(alice, "turn [a2]", db, where=[as_alice, chat.id == alice.id])
        context = await h.context(alice.id, db, where=as_alice)
        assert context.turns == 3
        if db is not None:
            await h.commit(db)
    assert h.tokens(alice.id) == ["a0", "a1", "a2"]
    assert h.tokens(bob.id) == ["b0"]


@pytest.mark.parametrize("mode", MODES)
async def test_the_write_carries_the_criteria(database: Database, mode: str) -> None:
    """The row leaves the criteria while the model runs (its owner changes): the
    turn's compare-and-swap matches no row, so the turn is lost like a race, and a
    re-run finds no session."""
    moved = {"on": False}
    holder: dict[str, Harness] = {}

    def fn(messages: list[dict[str, Any]]) -> dict[str, str]:
        if moved["on"]:
            h = holder["h"]
            h.update(chat_id, owner="bob")
        return echo(messages)

    async def async_fn(messages: list[dict[str, Any]]) -> dict[str, str]:
        return fn(messages)

    h = Harness(database, make_chat(async_fn if database.is_async else fn))
    holder["h"] = h
    chat_id = (await h.start("hello [a0]", owner="alice")).id
    as_alice = h.cls.owner == "alice"
    before = h.row(chat_id)

    moved["on"] = True
    async with caller_db(h, mode) as db:
        with pytest.raises(StaleSessionError):
            await h.cont(chat_id, "turn [lost]", db, where=as_alice)
    after = h.row(chat_id)
    assert after["owner"] == "bob"
    assert {k: v for k, v in after.items() if k != "owner"} == {
        k: v for k, v in before.items() if k != "owner"
    }

    if mode == "sessionmaker":  # a re-run reloads within the criteria: not found
        h.update(chat_id, owner="alice")
        calls = len(h.model.requests)
        with pytest.raises(SessionNotFoundError):
            await h.cont(chat_id, "turn [lost]", where=as_alice, conflict_retries=1)
        assert len(h.model.requests) == calls + 1
        assert h.row(chat_id)["context"] == before["context"]
    moved["on"] = False
    await h.cont(chat_id, "turn [b1]", where=h.cls.owner == "bob")
    assert h.tokens(chat_id) == ["a0", "b1"]


class OtherBase(DeclarativeBase):
    pass


class Member(OtherBase):
    __tablename__ = "scoped_members"
    name: Mapped[str] = mapped_column(sa.String(40), primary_key=True)
    team: Mapped[str] = mapped_column(sa.String(40))


async def test_a_subquery_on_another_table_is_allowed(database: Database) -> None:
    """The criteria are on the model's columns; what a subquery reads is the caller's."""
    database.create_all(OtherBase.metadata)
    with database.sync_engine().begin() as conn:
        conn.execute(
            sa.insert(Member.__table__),
            [{"name": "alice", "team": "red"}, {"name": "bob", "team": "blue"}],
        )
    h = Harness(database, make_chat())
    alice = await h.start("hello [a0]", owner="alice")
    bob = await h.start("hello [b0]", owner="bob")
    red_team = h.cls.owner.in_(sa.select(Member.name).where(Member.team == "red"))
    await h.cont(alice.id, "turn [a1]", where=red_team)
    with pytest.raises(SessionNotFoundError):
        await h.cont(bob.id, "turn [x]", where=red_team)
    assert h.tokens(alice.id) == ["a0", "a1"]
    assert h.tokens(bob.id) == ["b0"]


async def _awaited(call: Callable[[], Any]) -> Any:
    """Call ``call`` (a sync or an async method) and await what it returns, if needed."""
    value = call()
    return await value if inspect.isawaitable(value) else value


def bad_criteria(chat: Any) -> dict[str, Any]:
    other = sa.table("users", sa.column("id", sa.Integer))
    aliased = sa.orm.aliased(chat)
    return {
        "another table": other.c.id == 1,
        "an alias of the model": aliased.owner == "alice",
        "one of several on another table": [chat.owner == "alice", other.c.id == 1],
        "a Python bool": True,
        "a string": "owner = 'alice'",
        "text()": sa.text("owner = 'alice'"),
        "not a condition": chat.owner,
        "a list holding a non-expression": [chat.owner == "alice", 1],
        # Empty criteria scope nothing: they fail closed rather than open every row.
        "an empty list": [],
        "an empty tuple": (),
        "an empty and_()": _empty(sa.and_),
        "an empty or_()": _empty(sa.or_),
        "true()": sa.true(),
        "a constant condition": sa.literal(1) == 1,
        "a list of one empty and_()": [_empty(sa.and_)],
    }


def _empty(conjunction: Callable[..., Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # and_() / or_() without arguments
        return conjunction()


async def test_bad_criteria_are_refused_before_any_query(database: Database) -> None:
    h = Harness(database, make_chat())
    chat = await h.start("hello [a0]", owner="alice")
    before = h.rows()
    calls = len(h.model.requests)
    statements: list[str] = []

    @sa.event.listens_for(h.sync_engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    resume = h.cls.aresume_session if h.is_async else h.cls.resume_session
    for what, where in bad_criteria(h.cls).items():
        for call in (
            h.cont(chat.id, "turn [x]", where=where),
            h.cont(chat, "turn [x]", where=where),
            h.cont(chat.id, "turn [x]", where=where, stream=True),
            h.context(chat.id, where=where),
            _awaited(lambda where=where: resume(h.maker, chat.id, approvals={}, where=where)),
        ):
            with pytest.raises(InputValidationError) as info:
                await call
            assert info.value.source == "where", what
            assert "where=" in str(info.value), what
    assert statements == []
    assert len(h.model.requests) == calls
    assert h.rows() == before
