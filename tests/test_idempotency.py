"""A retried request is not a second turn: ``idempotency_key=`` on continue, resume,
regenerate and edit (streams too), and a start retried with the primary key its client
chose, on the six drivers with a session and a sessionmaker. A retry is answered from
the stored turn without a model call and writes nothing; the same key with another
input is an ``IdempotencyKeyReusedError`` (409) and leaves both tables as they were."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import (
    Agent,
    AgentSessionMixin,
    IdempotencyKeyReusedError,
    InputValidationError,
    SessionBusyError,
    Tool,
    ToolCall,
)
from agent_session._idempotency import KEPT
from agent_session.http import problem
from agent_session.testing import FunctionModel
from support.databases import Database
from support.sessions import Api, stored_rows, stream_text

calls: list[str] = []


def refund(order: str) -> str:
    """Refund an order."""
    return f"refunded {order}"


def reply(messages: list[dict[str, Any]]) -> Any:
    last = messages[-1]
    if last["role"] == "user" and "refund" in last["content"]:
        calls.append(last["content"])
        return ToolCall("refund", {"order": "42"})
    calls.append(str(last["content"]))
    return f"r{len(calls)}:{last['content']}"


agent = Agent(
    FunctionModel(reply), instruction="Be brief.", tools=[Tool(refund, requires_approval=True)]
)


class Base(DeclarativeBase):
    pass


class KeyedChat(AgentSessionMixin, Base):
    __tablename__ = "keyed_chats"
    __agent__ = agent
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(sa.String(20), default="me")


class KeyedTask(AgentSessionMixin, Base):
    """With a status column."""

    __tablename__ = "keyed_tasks"
    __agent__ = agent
    __status_attribute__ = "status"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


@pytest.fixture(params=[False, True], ids=["session", "maker"])
def api(request: pytest.FixtureRequest, database: Database) -> Api:
    database.create_all(Base.metadata)
    return Api(database, KeyedChat, maker=request.param)


async def tx(api: Api, name: str, *args: Any, **kw: Any) -> Any:
    """``name`` on the sync API or its a-twin, in its own committed transaction."""

    async def run(db: Any) -> Any:
        if api.is_async:
            return await getattr(api.model, f"a{name}")(db, *args, **kw)
        return getattr(api.model, name)(db, *args, **kw)

    if api.maker is not None:
        return await run(api.maker)
    async with api.session() as db:
        try:
            result = await run(db)
        except Exception:
            await api.rollback(db)
            raise
        await api.commit(db)
        return result


def both_tables(api: Api) -> list[Any]:
    table = api.model.__table__
    history = table.metadata.tables[f"{table.name}_history"]
    return [stored_rows(api.database, table), stored_rows(api.database, history)]


async def test_a_retried_continue_is_answered_from_the_stored_turn(api: Api) -> None:
    chat = await tx(api, "start_session", "one")
    first = await tx(api, "continue_session", chat.id, "two", idempotency_key="k-2")
    assert first.last_output == "r2:two"
    stored = both_tables(api)
    again = await tx(api, "continue_session", chat.id, "two", idempotency_key="k-2")
    assert calls == ["one", "two"]  # no second model call
    assert both_tables(api) == stored  # nothing written
    assert again.last_output == "r2:two"
    assert again.last_result is not None and again.last_result.output == "r2:two"
    assert again.last_result.input.model_dump() == {"message": "two"}

    # a newer turn; the old key still answers with ITS turn
    await tx(api, "continue_session", chat.id, "three", idempotency_key="k-3")
    old = await tx(api, "continue_session", chat.id, "two", idempotency_key="k-2")
    assert old.last_output == "r2:two"
    assert calls == ["one", "two", "three"]


async def test_the_same_key_with_another_input_is_a_typed_409(api: Api) -> None:
    chat = await tx(api, "start_session", "one")
    await tx(api, "continue_session", chat.id, "two", idempotency_key="k")
    stored = both_tables(api)
    for name, args in [
        ("continue_session", (chat.id, "not two")),
        ("regenerate_session", (chat.id,)),
        ("edit_session", (chat.id, "2.0", "two")),
    ]:
        with pytest.raises(IdempotencyKeyReusedError) as caught:
            await tx(api, name, *args, idempotency_key="k")
        assert isinstance(caught.value, InputValidationError)
        assert caught.value.idempotency_key == "k" and caught.value.key == chat.id
        assert problem(caught.value)[0] == 409
    assert both_tables(api) == stored
    assert calls == ["one", "two"]


async def test_regenerate_and_edit_retried(api: Api) -> None:
    chat = await tx(api, "start_session", "one")
    regen = await tx(api, "regenerate_session", chat.id, idempotency_key="r")
    again = await tx(api, "regenerate_session", chat.id, idempotency_key="r")
    assert regen.last_output == again.last_output == "r2:one"
    edited = await tx(api, "edit_session", chat.id, "2.0", "uno", idempotency_key="e")
    stored = both_tables(api)
    again = await tx(api, "edit_session", chat.id, "2.0", "uno", idempotency_key="e")
    assert edited.last_output == again.last_output == "r3:uno"
    assert both_tables(api) == stored
    assert calls == ["one", "one", "uno"]


async def test_a_retried_resume_and_a_retried_paused_turn(api: Api) -> None:
    chat = await tx(api, "start_session", "one")
    paused = await tx(api, "continue_session", chat.id, "refund please", idempotency_key="c")
    [pending] = paused.pending_approvals
    retried = await tx(api, "continue_session", chat.id, "refund please", idempotency_key="c")
    assert [p.tool_call_id for p in retried.pending_approvals] == [pending.tool_call_id]
    decided = {pending.tool_call_id: True}
    done = await tx(api, "resume_session", chat.id, approvals=decided, idempotency_key="a")
    stored = both_tables(api)
    again = await tx(api, "resume_session", chat.id, approvals=decided, idempotency_key="a")
    assert done.last_output == again.last_output
    assert both_tables(api) == stored
    with pytest.raises(IdempotencyKeyReusedError):
        await tx(
            api,
            "resume_session",
            chat.id,
            approvals={pending.tool_call_id: False},
            idempotency_key="a",
        )


async def test_a_retried_stream_sends_no_model_events(api: Api) -> None:
    if api.maker is None:
        pytest.skip("the stream holds its session: covered with a sessionmaker")
    chat = await tx(api, "start_session", "one")
    stream = await tx(api, "continue_session", chat.id, "two", idempotency_key="s", stream=True)
    assert await stream_text(stream) == "r2:two"
    stream = await tx(api, "continue_session", chat.id, "two", idempotency_key="s", stream=True)
    assert await stream_text(stream) == ""
    assert stream.session.last_output == "r2:two"
    assert calls == ["one", "two"]


async def test_a_start_retried_with_its_chosen_key(api: Api) -> None:
    key = uuid.uuid4()
    chat = await tx(api, "start_session", "hello", id=key)
    stored = both_tables(api)
    again = await tx(api, "start_session", "hello", id=key)
    assert again.id == key and again.last_output == chat.last_output == "r1:hello"
    assert calls == ["hello"]
    with pytest.raises(IdempotencyKeyReusedError) as caught:
        await tx(api, "start_session", "goodbye", id=key)
    assert caught.value.key == key and problem(caught.value)[0] == 409
    assert both_tables(api) == stored


@pytest.mark.parametrize("bad", ["", "x" * 256, 12, "\ud800"])
async def test_a_bad_key_is_refused_before_anything(api: Api, bad: Any) -> None:
    chat = await tx(api, "start_session", "one")
    stored = both_tables(api)
    with pytest.raises(InputValidationError) as caught:
        await tx(api, "continue_session", chat.id, "two", idempotency_key=bad)
    assert caught.value.source == "idempotency_key"
    assert both_tables(api) == stored and calls == ["one"]


async def test_a_key_whose_turn_still_runs_is_busy(sync_database: Database) -> None:
    """Two requests with one key: while the first turn runs (the model is called),
    the second finds the session claimed; retried afterwards, it gets the stored turn."""
    sync_database.create_all(Base.metadata)
    engine = sync_database.engine()
    maker = sessionmaker(engine, expire_on_commit=False)
    seen: list[Any] = []

    for model in (KeyedChat, KeyedTask):
        calls.clear()
        chat = model.start_session(maker, "one")

        def meanwhile(
            messages: list[dict[str, Any]], *, model: Any = model, key: Any = chat.id
        ) -> str:
            try:
                model.continue_session(maker, key, "two", idempotency_key="k")
            except SessionBusyError as exc:
                seen.append(exc)
            return "slow reply"

        slow = Agent(FunctionModel(meanwhile), instruction="Be brief.")
        model.continue_session(maker, chat.id, "two", idempotency_key="k", model=slow.model)
        retried = model.continue_session(maker, chat.id, "two", idempotency_key="k")
        assert retried.last_output == "slow reply"
        assert calls == ["one"]
    assert len(seen) == 2


async def test_the_newest_keys_are_kept(database: Database) -> None:
    if database.name != "sqlite":
        pytest.skip("one database is enough for the count")
    database.create_all(Base.metadata)
    api = Api(database, KeyedChat, maker=True)
    chat = await tx(api, "start_session", "one")
    for n in range(KEPT + 1):
        await tx(api, "continue_session", chat.id, f"q{n}", idempotency_key=f"k{n}")
    [row] = stored_rows(database, KeyedChat.__table__)
    assert len(row["context"]["keys"]) == KEPT
    await tx(api, "continue_session", chat.id, f"q{KEPT}", idempotency_key=f"k{KEPT}")
    assert len(calls) == KEPT + 2  # the newest key answered
    await tx(api, "continue_session", chat.id, "q0", idempotency_key="k0")
    assert len(calls) == KEPT + 3  # the oldest forgotten: run again


@pytest.mark.parametrize("stored_key", ["k", "other"])
def test_a_lost_write_finds_its_key_stored_by_the_winner(tmp_path: Any, stored_key: str) -> None:
    """The write of a keyed turn loses to a writer that stored this call's key (its retry,
    which took the session over): the call answers from the winner's turn instead of
    raising ``StaleSessionError``; a winner without the key is a plain lost race."""
    from agent_session import StaleSessionError
    from agent_session._idempotency import fingerprint

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'lost.sqlite3'}")
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine, expire_on_commit=False)
    chat = KeyedChat.start_session(maker, "one")
    table = KeyedChat.__table__

    def winner(messages: list[dict[str, Any]]) -> str:
        with engine.begin() as conn:
            head, revision = conn.execute(
                sa.select(table.c.context, table.c.context_revision)
            ).one()
            head = {k: v for k, v in head.items() if k != "claimed_at"}
            head["keys"] = [[stored_key, fingerprint("continue", "two", None), 1]]
            conn.execute(table.update().values(context=head, context_revision=revision + 1))
        return "the loser's reply"

    slow = FunctionModel(winner)
    if stored_key == "k":
        answered = KeyedChat.continue_session(
            maker, chat.id, "two", idempotency_key="k", model=slow
        )
        assert answered.last_output == "r1:one"  # the turn the key names
    else:
        with pytest.raises(StaleSessionError):
            KeyedChat.continue_session(maker, chat.id, "two", idempotency_key="k", model=slow)
    engine.dispose()
