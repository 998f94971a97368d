"""AgentSessionMixin on the whole database matrix: start, continue, read, round-trips."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import (
    CONTEXT_VERSION,
    Agent,
    AgentSessionMixin,
    Context,
    InputValidationError,
    ModelCallError,
    OutputValidationError,
    SessionNotFoundError,
    TemplateError,
)
from agent_session.context import split_document
from agent_session.testing import FunctionModel, TestModel
from support.databases import Database
from support.sessions import Api, stored_rows


class Company(BaseModel):
    company_name: str


class Nested(BaseModel):
    label: str
    scores: list[float]
    extra: dict[str, Any]


class Reply(BaseModel):
    answer: str
    nested: Nested | None = None


def echo(messages: list[dict[str, Any]]) -> Reply:
    users = [m for m in messages if m["role"] == "user"]
    return Reply(
        answer=f"echo {len(users)}: {users[-1]['content'][:40]}",
        nested=Nested(
            label="ünïcødé ✓ 🚀", scores=[1.5, 2.25], extra={"deep": {"list": [1, None]}}
        ),
    )


structured_agent = Agent(
    FunctionModel(echo, cost=0.001),
    instruction="You help {{ company_name }}.",
    instruction_schema=Company,
    output_schema=Reply,
)
text_agent = Agent(TestModel(text="plain answer"))


class Base(DeclarativeBase):
    pass


class Chat(AgentSessionMixin, Base):
    __tablename__ = "mixin_chats"
    __agent__ = structured_agent
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[str] = mapped_column(sa.String(32))


class Note(AgentSessionMixin, Base):
    """A plain-text agent, an integer key and a renamed context attribute."""

    __tablename__ = "mixin_notes"
    __agent__ = text_agent
    __context_attribute__ = "conversation"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


@pytest.fixture
def api(database: Database) -> Api:
    database.create_all(Base.metadata)
    return Api(database, Chat)


async def test_three_turns_round_trip(api: Api) -> None:
    async with api.session() as db:
        chat = await api.start(
            db, {"message": "Hello!"}, instruction_args={"company_name": "Acme"}, user_id="u1"
        )
        assert isinstance(chat, Chat)
        assert chat.last_output.answer == "echo 1: Hello!"
        assert chat.last_result is not None and chat.last_result.attempts == 1
        await api.commit(db)
        chat = await api.cont(db, chat, {"message": "Follow up"})
        chat = await api.cont(db, chat.id, "Third, by primary key and plain string")
        await api.commit(db)
        key = chat.id

    async with api.session() as db:
        ctx = await api.context(db, key)
    assert isinstance(ctx, Context)
    assert [m.role for m in ctx.messages] == ["system"] + ["user", "assistant"] * 3
    assert ctx.messages[0].content == "You help Acme."
    assert ctx.instruction_args == {"company_name": "Acme"}
    assert ctx.turns == 3
    assert ctx.messages[-1].parse_output(structured_agent).answer.startswith("echo 3: Third")
    assert ctx.messages[1].parse_input(structured_agent).message == "Hello!"
    assert ctx.cost == pytest.approx(0.003)
    per_turn = [m.meta.usage for m in ctx.messages if m.role == "assistant"]
    assert ctx.usage.total_tokens == sum(u.total_tokens for u in per_turn if u) > 0
    [row] = stored_rows(api.database, Chat.__table__)
    assert row["user_id"] == "u1"
    assert row["context_revision"] == 3
    assert row["context"]["version"] == CONTEXT_VERSION == 4


async def test_history_is_sent_and_instruction_rendered_once(database: Database) -> None:
    database.create_all(Base.metadata)
    seen: list[list[dict[str, Any]]] = []

    def model(messages: list[dict[str, Any]]) -> Reply:
        seen.append(messages)
        return Reply(answer=f"a{len(seen)}")

    api = Api(database, Chat)
    with structured_agent.override(model=FunctionModel(model)):
        async with api.session() as db:
            chat = await api.start(
                db, "one", instruction_args={"company_name": "{{ 7*7 }}"}, user_id="u"
            )
            chat = await api.cont(db, chat, "two")
            await api.commit(db)
    assert seen[1] == [
        {"role": "system", "content": "You help {{ 7*7 }}."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": '{"answer":"a1","nested":null}'},
        {"role": "user", "content": "two"},
    ]


async def test_last_output_on_a_freshly_loaded_row(api: Api) -> None:
    async with api.session() as db:
        chat = await api.start(db, "hi", instruction_args={"company_name": "A"}, user_id="u")
        await api.commit(db)
        key = chat.id
    async with api.session() as db:
        loaded = (await db.get(Chat, key)) if api.is_async else db.get(Chat, key)
        assert loaded.last_result is None
        assert isinstance(loaded.last_output, Reply)
        assert loaded.last_output.nested.label == "ünïcødé ✓ 🚀"


async def test_flush_never_commit(api: Api) -> None:
    async with api.session() as db:
        chat = await api.start(db, "hi", instruction_args={"company_name": "A"}, user_id="u")
        assert chat.id is not None
        await api.rollback(db)
    assert stored_rows(api.database, Chat.__table__) == []


async def test_unknown_key_is_a_lookup_error(api: Api) -> None:
    missing = uuid.uuid4()
    async with api.session() as db:
        with pytest.raises(SessionNotFoundError) as info:
            await api.context(db, missing)
        assert isinstance(info.value, LookupError)
        assert info.value.key == missing
        with pytest.raises(SessionNotFoundError):
            await api.cont(db, missing, "hello")
    assert stored_rows(api.database, Chat.__table__) == []


def failing_model(exc: Exception) -> FunctionModel:
    def fn(messages: list[dict[str, Any]]) -> str:
        raise exc

    return FunctionModel(fn)


START_FAILURES = [
    pytest.param({"input": {"wrong": 1}}, InputValidationError, id="invalid-input"),
    pytest.param({"instruction_args": {}}, InputValidationError, id="missing-instruction-arg"),
    pytest.param(
        {"model": lambda: failing_model(ModelCallError("boom", model="m", status_code=500))},
        ModelCallError,
        id="model-error",
    ),
    pytest.param(
        {"model": lambda: TestModel(replies=["not json"] * 3)},
        OutputValidationError,
        id="invalid-output",
    ),
]


@pytest.mark.parametrize(("case", "error"), START_FAILURES)
async def test_start_failure_adds_nothing(api: Api, case: dict[str, Any], error: type) -> None:
    model = case.get("model", lambda: FunctionModel(echo))()
    with structured_agent.override(model=model):
        async with api.session() as db:
            with pytest.raises(error):
                await api.start(
                    db,
                    case.get("input", "hi"),
                    instruction_args=case.get("instruction_args", {"company_name": "A"}),
                    user_id="u",
                )
            await api.commit(db)
    assert stored_rows(api.database, Chat.__table__) == []


@pytest.mark.parametrize(("case", "error"), START_FAILURES[:1] + START_FAILURES[2:])
async def test_continue_failure_changes_nothing(
    api: Api, case: dict[str, Any], error: type
) -> None:
    async with api.session() as db:
        chat = await api.start(db, "hi", instruction_args={"company_name": "A"}, user_id="u")
        await api.commit(db)
    before = stored_rows(api.database, Chat.__table__)
    with structured_agent.override(model=case.get("model", lambda: FunctionModel(echo))()):
        async with api.session() as db:
            with pytest.raises(error):
                await api.cont(db, chat.id, case.get("input", "again"))
            await api.commit(db)
    assert stored_rows(api.database, Chat.__table__) == before
    async with api.session() as db:  # and the session goes on normally
        chat = await api.cont(db, chat.id, "after the failure")
        await api.commit(db)
    assert chat.context["turns"] == 2


async def test_plain_text_agent_integer_key_renamed_column(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, Note)
    async with api.session() as db:
        note = await api.start(db, "hello")
        note = await api.cont(db, note, "again")
        await api.commit(db)
        assert isinstance(note.id, int)
        assert note.last_output == "plain answer"
        ctx = await api.context(db, note.id)
    assert [m.content for m in ctx.messages] == ["hello", "plain answer", "again", "plain answer"]
    assert "conversation" in Note.__table__.c
    assert "context" not in Note.__table__.c


async def test_round_trip_large_and_unicode(api: Api) -> None:
    big = "x" * 1_000_000
    texts = ["Grüße aus Köln — naïve café", "日本語のテキスト", "emoji 🎉🚀👩‍👩‍👧", big]
    async with api.session() as db:
        chat = await api.start(db, texts[0], instruction_args={"company_name": "Ünï"}, user_id="u")
        for text in texts[1:]:
            chat = await api.cont(db, chat, text)
        await api.commit(db)
        key = chat.id
    async with api.session() as db:
        ctx = await api.context(db, key)
    users = [m.content for m in ctx.messages if m.role == "user"]
    assert users == texts
    assert len(users[-1]) == 1_000_000
    last = ctx.messages[-1].parse_output(structured_agent)
    assert last.nested == Nested(
        label="ünïcødé ✓ 🚀", scores=[1.5, 2.25], extra={"deep": {"list": [1, None]}}
    )
    [row] = stored_rows(api.database, Chat.__table__)
    assert row["context"] == chat.context  # exactly what the library wrote
    assert split_document(ctx.to_document(), inline=False) == (row["context"], [])
    assert ctx.instruction_args == {"company_name": "Ünï"}


@pytest.mark.slow
async def test_five_hundred_turns(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, Note)
    async with api.session() as db:
        note = await api.start(db, "turn 0")
        for i in range(1, 500):
            note = await api.cont(db, note, f"turn {i}")
        await api.commit(db)
        key = note.id
    async with api.session() as db:
        ctx = await api.context(db, key)
    assert ctx.turns == 500
    assert [m.content for m in ctx.messages if m.role == "user"] == [
        f"turn {i}" for i in range(500)
    ]
    [row] = stored_rows(database, Note.__table__)
    assert row["context_revision"] == 500


async def test_sessionmaker_mode_commits(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, Chat, maker=True)
    chat = await api.start(None, "hi", instruction_args={"company_name": "A"}, user_id="u")
    chat = await api.cont(None, chat, "two")
    chat = await api.cont(None, chat.id, "three")
    assert chat.last_output.answer.startswith("echo 3")
    [row] = stored_rows(database, Chat.__table__)
    assert row["context_revision"] == 3
    assert (await api.context(None, chat.id)).turns == 3


async def test_template_error_at_start_adds_nothing(database: Database) -> None:
    agent = Agent(TestModel(), instruction="Hi {{ name.upper() }} {{ missing }}")

    class LocalBase(DeclarativeBase):
        pass

    class Templated(AgentSessionMixin, LocalBase):
        __tablename__ = "mixin_templated"
        __agent__ = agent
        id: Mapped[int] = mapped_column(primary_key=True)

    database.create_all(LocalBase.metadata)
    api = Api(database, Templated)
    async with api.session() as db:
        with pytest.raises(TemplateError):
            await api.start(db, "hi", instruction_args={"name": "x"})
        await api.commit(db)
    assert stored_rows(database, Templated.__table__) == []
