"""Bad input, one test per row of the table in docs/errors.md.

Each bad input gets its documented error, the model is not called (unless the bad
part is the model's own output), and the database is unchanged: the same rows,
with the same stored context and revision, before and after.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from agent_session import (
    Agent,
    AgentSessionError,
    AgentSessionMixin,
    ConfigurationError,
    ContextError,
    InputValidationError,
    OutputValidationError,
    SessionNotFoundError,
    TemplateError,
)
from agent_session.testing import FunctionModel
from support.databases import Database
from support.stress_worker import INSTRUCTION, Echo, Harness, echo, history_tokens, make_chat


class Question(BaseModel):
    message: str = Field(min_length=1)
    priority: int = 0


class Company(BaseModel):
    company: str


COMPANY_INSTRUCTION = "You answer for {{ company }}. " + INSTRUCTION


def calls(h: Harness) -> int:
    return len(h.model.requests)


async def stored_session(database: Database, **chat_kw: Any) -> tuple[Harness, Any, list[Any]]:
    """A harness with one stored session, and the table's rows as stored."""
    h = Harness(database, make_chat(**chat_kw))
    args = {"company": "Acme"} if "instruction_schema" in chat_kw else None
    first: Any = {"message": "hello [t0]"} if "input_schema" in chat_kw else "hello [t0]"
    chat = await h.start(first, instruction_args=args)
    return h, chat, h.rows()


# -- the input ------------------------------------------------------------------------


BAD_INPUTS = [
    pytest.param({"message": ""}, id="too-short"),
    pytest.param({"message": 5}, id="wrong-type"),
    pytest.param({"priority": 1}, id="missing-field"),
    pytest.param({"message": "hi", "priority": "urgent"}, id="bad-second-field"),
    pytest.param("a plain string for a two-field schema", id="string-for-two-fields"),
    pytest.param(["not", "a", "mapping"], id="not-a-mapping"),
    pytest.param(Company(company="Acme"), id="other-pydantic-model"),
]


@pytest.mark.parametrize("bad", BAD_INPUTS)
async def test_invalid_input(database: Database, bad: Any) -> None:
    h, chat, before = await stored_session(database, input_schema=Question)
    model_calls = calls(h)
    for attempt in ("start", "continue"):
        with pytest.raises(InputValidationError) as info:
            if attempt == "start":
                await h.start(bad)
            else:
                await h.cont(chat.id, bad)
        assert info.value.source == "input"
        assert isinstance(info.value, ValueError)
    assert calls(h) == model_calls
    assert h.rows() == before


# -- the instruction ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [None, {}, {"company": None}, {"comp": "Acme"}], ids=["none", "empty", "null", "typo"]
)
async def test_missing_instruction_argument_with_schema(database: Database, args: Any) -> None:
    h, _, before = await stored_session(
        database, instruction=COMPANY_INSTRUCTION, instruction_schema=Company
    )
    with pytest.raises(InputValidationError) as info:
        await h.start("hello [t1]", instruction_args=args)
    assert info.value.source == "instruction_args"
    assert info.value.errors
    assert calls(h) == 1
    assert h.rows() == before


async def test_missing_instruction_argument_without_schema(database: Database) -> None:
    h = Harness(database, make_chat(instruction=COMPANY_INSTRUCTION))
    with pytest.raises(TemplateError, match="'company' is undefined"):
        await h.start("hello [t0]", instruction_args={"compnay": "Acme"})
    with pytest.raises(TemplateError):
        await h.start("hello [t0]")
    assert calls(h) == 0
    assert h.rows() == []


@pytest.mark.parametrize("args", [["Acme"], "Acme", 42], ids=["list", "string", "int"])
async def test_instruction_arguments_of_the_wrong_type(database: Database, args: Any) -> None:
    h = Harness(database, make_chat(instruction=COMPANY_INSTRUCTION))
    with pytest.raises(InputValidationError) as info:
        await h.start("hello [t0]", instruction_args=args)
    assert info.value.source == "instruction_args"
    assert calls(h) == 0
    assert h.rows() == []


INJECTIONS = [
    "{{ 7*7 }}",
    "{% for i in range(10**9) %}x{% endfor %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{% raw %}{{ company }}{% endraw %}",
]


async def test_template_injection_is_data(database: Database) -> None:
    """Jinja syntax in an instruction argument or in a message is never rendered: it
    is stored and sent literally, and the turn succeeds."""
    payload = " ".join(INJECTIONS)
    h = Harness(database, make_chat(instruction=COMPANY_INSTRUCTION, instruction_schema=Company))
    chat = await h.start(f"{payload} [t0]", instruction_args={"company": payload})
    await h.cont(chat.id, f"{payload} [t1]")
    messages = h.row(chat.id)["context"]["messages"]
    assert messages[0]["content"] == f"You answer for {payload}. {INSTRUCTION}"
    assert [m["content"] for m in messages[1::2]] == [f"{payload} [t0]", f"{payload} [t1]"]
    assert "49" not in messages[0]["content"]
    sent = h.model.requests[-1].messages
    assert sent[0]["content"] == messages[0]["content"]
    assert sent[-1]["content"] == f"{payload} [t1]"


@pytest.mark.parametrize(
    "instruction",
    [
        "{{ company.__class__.__mro__[1].__subclasses__() }}",
        "{{ company.__init__.__globals__ }}",
        "{% for i in range(10**9) %}x{% endfor %}",
        "{{ company|attr('__class__') }}",
    ],
    ids=["dunder-attributes", "globals", "huge-range", "attr-filter"],
)
async def test_unsafe_instruction_template(database: Database, instruction: str) -> None:
    """An instruction that tries to leave the sandbox fails at render time."""
    h = Harness(database, make_chat(instruction=instruction))
    with pytest.raises(TemplateError):
        await h.start("hello [t0]", instruction_args={"company": "Acme"})
    assert calls(h) == 0
    assert h.rows() == []


def test_instruction_with_a_syntax_error() -> None:
    with pytest.raises(ConfigurationError, match="syntax error on line 1"):
        Agent(FunctionModel(echo), instruction="Hello {{ company ")


# -- the key ------------------------------------------------------------------------


async def test_unknown_key(database: Database) -> None:
    h, chat, before = await stored_session(database)
    missing = chat.id + 1000
    with pytest.raises(SessionNotFoundError) as info:
        await h.cont(missing, "turn [t1]")
    assert isinstance(info.value, LookupError)
    assert info.value.key == missing
    with pytest.raises(SessionNotFoundError):
        await h.context(missing)
    assert calls(h) == 1
    assert h.rows() == before


BAD_KEYS = [
    pytest.param("abc", id="not-an-int"),
    pytest.param(1.5, id="float"),
    pytest.param(True, id="bool"),
    pytest.param(10**30, id="huge-int"),
    pytest.param(None, id="none"),
    pytest.param((1, 2), id="too-many-values"),
    pytest.param({"pk": 1}, id="wrong-name"),
    pytest.param(object(), id="object"),
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_malformed_key(database: Database, key: Any) -> None:
    """A key the primary key column cannot hold fails the same way on every backend,
    before the model is called."""
    h, _, before = await stored_session(database)
    with pytest.raises(InputValidationError) as info:
        await h.cont(key, "turn [t1]")
    assert info.value.source == "key"
    with pytest.raises(InputValidationError):
        await h.context(key)
    assert calls(h) == 1
    assert h.rows() == before


async def test_key_as_text_or_mapping_is_accepted(database: Database) -> None:
    h, chat, _ = await stored_session(database)
    await h.cont(str(chat.id), "turn [t1]")
    await h.cont({"id": chat.id}, "turn [t2]")
    assert h.tokens(chat.id) == ["t0", "t1", "t2"]


class _UuidBase(DeclarativeBase):
    pass


class UuidChat(AgentSessionMixin, _UuidBase):
    __tablename__ = "uuid_chats"
    __agent__ = Agent(FunctionModel(echo), instruction=INSTRUCTION, output_schema=Echo)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


async def test_uuid_key_as_text(database: Database) -> None:
    """A UUID key given as text (from a URL, say) works on every backend; text that
    is not a UUID is a bad key, not a driver error."""
    h = Harness(database, UuidChat)
    chat = await h.start("hello [t0]")
    await h.cont(str(chat.id), "turn [t1]")
    await h.cont(chat.id.hex, "turn [t2]")
    with pytest.raises(InputValidationError) as info:
        await h.cont("not-a-uuid", "turn [t3]")
    assert info.value.source == "key"
    with pytest.raises(SessionNotFoundError):
        await h.cont(str(uuid.uuid4()), "turn [t3]")
    [row] = h.rows()
    assert history_tokens(row["context"]) == ["t0", "t1", "t2"]


async def test_instance_of_another_model(database: Database) -> None:
    h, chat, before = await stored_session(database)
    other = make_chat(table="other_chats")
    with pytest.raises(InputValidationError) as info:
        await h.cont(other(id=chat.id), "turn [t1]")
    assert info.value.source == "key"
    assert calls(h) == 1
    assert h.rows() == before


# -- the stored context ------------------------------------------------------------------


def _corrupt(document: dict[str, Any], variant: str) -> Any:
    doc = dict(document)
    if variant == "messages-not-a-list":
        doc["messages"] = "hello"
    elif variant == "unknown-role":
        doc["messages"] = [*doc["messages"], {"role": "wizard", "content": "x", "meta": {}}]
    elif variant == "meta-not-an-object":
        doc["messages"] = [{**m, "meta": "yesterday"} for m in doc["messages"]]
    elif variant == "unknown-field":
        doc["favourite_colour"] = "blue"
    elif variant == "newer-version":
        doc["version"] = 99
    elif variant == "no-version":
        del doc["version"]
    elif variant == "turns-not-a-number":
        doc["turns"] = "many"
    elif variant == "json-string":
        return "a conversation"
    elif variant == "json-array":
        return doc["messages"]
    else:  # pragma: no cover
        raise AssertionError(variant)
    return doc


CORRUPTIONS = [
    "messages-not-a-list",
    "unknown-role",
    "meta-not-an-object",
    "unknown-field",
    "newer-version",
    "no-version",
    "turns-not-a-number",
    "json-string",
    "json-array",
]


@pytest.mark.parametrize("variant", CORRUPTIONS)
async def test_corrupted_stored_context(database: Database, variant: str) -> None:
    h, chat, _ = await stored_session(database)
    h.update(chat.id, context=_corrupt(h.row(chat.id)["context"], variant))
    before = h.rows()
    with pytest.raises(ContextError) as info:
        await h.cont(chat.id, "turn [t1]")
    assert info.value.key == chat.id
    with pytest.raises(ContextError):
        await h.context(chat.id)
    assert calls(h) == 1
    assert h.rows() == before


async def test_stored_context_that_is_not_json(database: Database) -> None:
    """Hand-written text that is not JSON: PostgreSQL and MariaDB refuse to store
    it; SQLite stores it, and reading it is a ``ContextError``."""
    h, chat, _ = await stored_session(database)
    table = h.table.name
    garbage = sa.text(f"UPDATE {table} SET context = '{{\"version\": 1, oops' WHERE id = :id")
    raw = sa.text(f"SELECT id, CAST(context AS TEXT), context_revision FROM {table}")
    try:
        with database.sync_engine().begin() as conn:
            conn.execute(garbage, {"id": chat.id})
    except sa.exc.DBAPIError:
        assert database.dialect in {"postgresql", "mysql"}
        return
    assert database.dialect == "sqlite"
    with database.sync_engine().connect() as conn:
        before = conn.execute(raw).all()  # read as text: the JSON type cannot decode it
    with pytest.raises(ContextError, match="cannot be read"):
        await h.cont(chat.id, "turn [t1]")
    with pytest.raises(ContextError):
        await h.context(chat.id)
    with database.sync_engine().connect() as conn:
        assert conn.execute(raw).all() == before
    assert calls(h) == 1


async def test_context_set_to_null(database: Database) -> None:
    h, chat, _ = await stored_session(database)
    h.update(chat.id, context=sa.null())
    before = h.rows()
    assert before[0]["context"] is None
    with pytest.raises(ContextError, match="got NULL"):
        await h.cont(chat.id, "turn [t1]")
    with pytest.raises(ContextError):
        await h.context(chat.id)
    assert calls(h) == 1
    assert h.rows() == before


# -- sizes ---------------------------------------------------------------------------


async def test_message_over_the_size_limit(database: Database) -> None:
    """``Agent(max_input_bytes=1024)``: the limit counts UTF-8 bytes."""
    h, chat, before = await stored_session(database, max_input_bytes=1024)
    at_limit = "[t1]" + "é" * 510  # 4 + 1020 bytes
    over_limit = at_limit + "é"
    with pytest.raises(InputValidationError, match="1026 bytes; the limit is 1024") as info:
        await h.cont(chat.id, over_limit)
    assert info.value.source == "size"
    with pytest.raises(InputValidationError):
        await h.start(over_limit)
    assert calls(h) == 1
    assert h.rows() == before
    await h.cont(chat.id, at_limit)
    assert h.tokens(chat.id) == ["t0", "t1"]


async def test_one_megabyte_message_round_trips_by_default(database: Database) -> None:
    h, chat, _ = await stored_session(database)
    big = "[big] " + "x" * (1024 * 1024) + " 🙂"
    await h.cont(chat.id, big)
    assert h.row(chat.id)["context"]["messages"][3]["content"] == big
    context = await h.context(chat.id)
    assert context.messages[3].content == big
    assert h.model.requests[-1].messages[-1]["content"] == big


# -- the output ------------------------------------------------------------------------


async def test_output_that_never_validates(database: Database) -> None:
    replies = iter([{"answer": "echo:t0"}, "not json", {"answer": 5}, "{}"])
    h, chat, before = await stored_session(database, fn=lambda m: next(replies), output_retries=2)
    with pytest.raises(OutputValidationError) as info:
        await h.cont(chat.id, "turn [t1]")
    assert info.value.attempts == 3
    assert info.value.raw_text == "{}"
    assert info.value.errors
    assert calls(h) == 4
    assert h.rows() == before


# -- the call itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [{"context": {}}, {"context_revision": 7}, {"colour": "blue"}, {"id": "not-a-number"}],
    ids=["managed-context", "managed-revision", "unknown-column", "bad-value"],
)
async def test_bad_column_values_for_start(database: Database, values: dict[str, Any]) -> None:
    h, _, before = await stored_session(database)
    with pytest.raises(AgentSessionError) as info:
        await h.start("hello [t1]", **values)
    if "id" in values:  # not checked by the library: the database refuses it
        assert info.value.__class__.__name__ == "StorageError"
    else:
        assert isinstance(info.value, InputValidationError)
        assert info.value.source == "values"
    assert h.rows() == before


@pytest.mark.parametrize("retries", [-1, "3", 1.5, None], ids=["negative", "str", "float", "none"])
async def test_bad_conflict_retries(database: Database, retries: Any) -> None:
    h, chat, before = await stored_session(database)
    with pytest.raises(InputValidationError) as info:
        await h.cont(chat.id, "turn [t1]", conflict_retries=retries)
    assert info.value.source == "conflict_retries"
    assert calls(h) == 1
    assert h.rows() == before


@pytest.mark.parametrize(
    "busy_timeout", [-1, "5", True, float("nan")], ids=["negative", "str", "bool", "nan"]
)
async def test_bad_busy_timeout(database: Database, busy_timeout: Any) -> None:
    h, chat, before = await stored_session(database, status=True)
    with pytest.raises(InputValidationError) as info:
        await h.cont(chat.id, "turn [t1]", busy_timeout=busy_timeout)
    assert info.value.source == "busy_timeout"
    assert calls(h) == 1
    assert h.rows() == before


@pytest.mark.parametrize(
    ("stream", "on_cancel"),
    [(True, "kept"), (True, None), (False, "keep")],
    ids=["unknown", "none", "keep-without-stream"],
)
async def test_bad_on_cancel(database: Database, stream: bool, on_cancel: Any) -> None:
    h, chat, before = await stored_session(database, status=True)
    with pytest.raises(InputValidationError, match="on_cancel") as info:
        await h.cont(chat.id, "turn [t1]", stream=stream, on_cancel=on_cancel)
    assert info.value.source == "on_cancel"
    assert calls(h) == 1
    assert h.rows() == before


async def test_db_that_is_not_a_session(database: Database) -> None:
    h, chat, before = await stored_session(database)
    other_kind = Session() if h.is_async else AsyncSession()  # the twin of the right kind
    for db in (h.engine, database.url, object(), other_kind):
        with pytest.raises(ConfigurationError):
            await h.cont(chat.id, "turn [t1]", db)
    assert calls(h) == 1
    assert h.rows() == before
